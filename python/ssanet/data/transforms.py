"""Image transforms of the paper's protocol (section 4.1), and those of its robustness tests.

Every transform here is a ``torchvision.transforms.v2`` transform, so it moves boxes
(``tv_tensors.BoundingBoxes``) and keypoints (``tv_tensors.KeyPoints``) together with the image
when they are passed along (the datasets of :mod:`ssanet.data` do this), and it works on a single
image ``[3, H, W]`` or a batch ``[B, 3, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]

#: Section 4.1. Cars: "the scale size is set to 512 and the crop size is set to 448"; Aircraft:
#: "we resize the input images into 448 straightly"; CUB: "resize then crop 448", the scale not
#: given, so Cars' 512 is used. Resizes are to a square, as in NTS-Net (which SSANet builds on):
#: the whole object stays inside the crop. The synthetic data is drawn at 128x128.
PRESETS: dict[str, dict[str, Size | None]] = {
    "cub": {"resize": (512, 512), "crop": 448},
    "cars": {"resize": (512, 512), "crop": 448},
    "aircraft": {"resize": (448, 448), "crop": None},
    "synthetic": {"resize": (128, 128), "crop": 112},
}


def _finish(steps: list, normalize: bool, mean: Sequence[float], std: Sequence[float]):
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def train_transform(
    resize: Size = (512, 512),
    crop: Size | None = 448,
    flip: bool = True,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Training transform: resize, random crop, random horizontal flip, float, normalize.

    ``resize``: an int resizes the shorter side to it (aspect kept), a pair ``(H, W)`` resizes to
    exactly that size. ``crop``: the random crop's size (int: square), or None for no crop.
    Output: ``float32 [3, crop, crop]`` (ImageNet-normalized unless ``normalize=False``).
    """
    steps: list = [v2.ToImage(), v2.Resize(resize, antialias=True)]
    if crop is not None:
        steps.append(v2.RandomCrop(crop))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return _finish(steps, normalize, mean, std)


def eval_transform(
    resize: Size = (512, 512),
    crop: Size | None = 448,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Test transform: resize, center crop, float, normalize (sizes: :func:`train_transform`)."""
    steps: list = [v2.ToImage(), v2.Resize(resize, antialias=True)]
    if crop is not None:
        steps.append(v2.CenterCrop(crop))
    return _finish(steps, normalize, mean, std)


def paper_transform(dataset: str, train: bool, **overrides) -> v2.Compose:
    """The transform of :data:`PRESETS` for ``dataset`` (cub, cars, aircraft, synthetic).

    ``overrides`` replace preset keys or pass the other arguments of :func:`train_transform` /
    :func:`eval_transform` (``normalize``, ``flip``, ...).
    """
    if dataset not in PRESETS:
        raise ValueError(f"dataset must be one of {sorted(PRESETS)}, got {dataset!r}")
    arguments = {**PRESETS[dataset], **overrides}
    return train_transform(**arguments) if train else eval_transform(**arguments)


def config_transform(transform: dict, train: bool) -> v2.Compose:
    """The transform of a training config's ``transform`` section (``{"resize": int | [H, W],
    "crop": int | [H, W] | null}``, as :func:`ssanet.config.check_config` fills it):
    :func:`train_transform` for ``train``, else :func:`eval_transform`."""
    resize, crop = _as_size(transform["resize"]), _as_size(transform["crop"])
    return train_transform(resize, crop) if train else eval_transform(resize, crop)


def config_image_size(transform: dict) -> int:
    """The side of the images a config's ``transform`` section produces (the crop, else the
    resize; the first of a pair)."""
    size = transform["crop"] if transform["crop"] is not None else transform["resize"]
    return int(size if isinstance(size, int) else size[0])


def _as_size(value):
    # JSON has no tuples: a [H, W] list is a size pair.
    return tuple(value) if isinstance(value, list) else value


class Rotate(v2.RandomRotation):
    """Rotate by a fixed ``angle`` in degrees, counter-clockwise, about the centre (Table 1).

    The output keeps the input's size (corners cut off, the uncovered area set to ``fill``).
    On a normalized tensor ``fill=0`` is the dataset's mean colour.
    """

    def __init__(
        self,
        angle: float,
        fill: float | Sequence[float] = 0.0,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
    ) -> None:
        super().__init__(degrees=(angle, angle), interpolation=interpolation, fill=fill)
        self.angle = float(angle)

    def make_params(self, flat_inputs: list) -> dict:
        return {"angle": self.angle}


def reduced_input(size: Size = 300, canvas: Size = 448, fill: float = 0.0) -> v2.Compose:
    """The reduced-input protocol of Table 2: resize to ``size`` x ``size``, pad to ``canvas``.

    The resized image sits in the centre of the canvas (odd margins put the extra pixel on the
    right / bottom); the margin is ``fill`` (on a normalized tensor 0 is the mean colour).
    """
    size_h, size_w = (size, size) if isinstance(size, int) else size
    canvas_h, canvas_w = (canvas, canvas) if isinstance(canvas, int) else canvas
    if size_h > canvas_h or size_w > canvas_w:
        raise ValueError(f"size {size!r} must fit inside canvas {canvas!r}")
    left, top = (canvas_w - size_w) // 2, (canvas_h - size_h) // 2
    padding = [left, top, canvas_w - size_w - left, canvas_h - size_h - top]
    return v2.Compose([v2.Resize((size_h, size_w), antialias=True), v2.Pad(padding, fill=fill)])
