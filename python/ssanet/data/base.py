"""What the datasets of ssanet.data share: the sample they return and how transforms apply."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


class FineGrainedDataset(Dataset):
    """Base class: a list of labelled images, optionally with one box and keypoints per image.

    ``dataset[i]`` is a dict (the default collate function stacks it into a batch):

    - ``"image"``: the transformed image; with ``transform=None`` a ``uint8 [3, H, W]`` tensor.
    - ``"label"``: int, the class index in ``0 .. num_classes - 1``.
    - ``"index"``: int, ``i``.
    - ``"box"`` (``with_box=True``): ``float32 [4]``, the object's box ``(x1, y1, x2, y2)`` in the
      pixel coordinates of the returned image, clipped to it.
    - ``"keypoints"`` and ``"keypoints_visible"`` (``with_keypoints=True``, CUB layout only):
      ``float32 [P, 2]`` points ``(x, y)`` and ``bool [P]``; a point is visible when the
      annotation says so and it lies inside the returned image.

    With a box or keypoints requested, ``transform`` gets a dict ``{"image": PIL image, "box":
    tv_tensors.BoundingBoxes, "keypoints": tv_tensors.KeyPoints}`` and must be a
    ``torchvision.transforms.v2`` transform (those of :mod:`ssanet.data.transforms` are), which
    moves the geometry with the image. Otherwise it gets the PIL image alone, and any transform
    works.

    Subclasses set ``classes`` and ``targets`` (the label of every sample) and implement
    :meth:`load` (image, box, keypoints, visible flags of sample ``i``).
    """

    classes: list[str]
    targets: list[int]

    def __init__(
        self,
        transform: Callable | None = None,
        with_box: bool = False,
        with_keypoints: bool = False,
    ) -> None:
        self.transform = transform
        self.with_box = with_box
        self.with_keypoints = with_keypoints

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def load(
        self, index: int
    ) -> tuple[Image.Image, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Image, box ``[4]`` (or None), keypoints ``[P, 2]`` and visible ``[P]`` (or None)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        image, box, keypoints, visible = self.load(index)
        sample = {"label": self.targets[index], "index": index}
        if box is None and keypoints is None:
            image = self.transform(image) if self.transform is not None else image
            sample["image"] = _as_tensor_image(image)
            return sample

        height, width = image.height, image.width
        geometry: dict = {"image": image}
        if box is not None:
            geometry["box"] = tv_tensors.BoundingBoxes(
                box.reshape(1, 4), format="XYXY", canvas_size=(height, width)
            )
        if keypoints is not None:
            geometry["keypoints"] = tv_tensors.KeyPoints(keypoints, canvas_size=(height, width))
        if self.transform is not None:
            geometry = self.transform(geometry)
        sample["image"] = _as_tensor_image(geometry["image"])
        height, width = sample["image"].shape[-2:]
        if box is not None:
            box = geometry["box"].as_subclass(torch.Tensor).reshape(4).float()
            limits = torch.tensor([width, height, width, height], dtype=torch.float32)
            sample["box"] = torch.minimum(box.clamp(min=0), limits)
        if keypoints is not None:
            points = geometry["keypoints"].as_subclass(torch.Tensor).float()
            inside = (
                (points[:, 0] >= 0)
                & (points[:, 0] < width)
                & (points[:, 1] >= 0)
                & (points[:, 1] < height)
            )
            sample["keypoints"] = points
            sample["keypoints_visible"] = visible & inside
        return sample


def _as_tensor_image(image) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image)
    if isinstance(image, torch.Tensor):
        return image.as_subclass(torch.Tensor)
    raise TypeError(f"transform must return a PIL image or a tensor, got {type(image).__name__}")
