"""Stanford Cars and FGVC-Aircraft: torchvision's dataset classes, with boxes and checked files.

torchvision reads the images and labels; these wrappers add the boxes of the datasets'
annotation files, the aircraft banner crop, and errors that name a missing or corrupt file.
Nothing downloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from ._files import CorruptFileError, load_rgb, read_table, require_dir, require_file
from .base import FineGrainedDataset

AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")
AIRCRAFT_LEVELS = {
    "variant": "variants.txt",
    "family": "families.txt",
    "manufacturer": "manufacturers.txt",
}
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _one_based_box(x1: float, y1: float, x2: float, y2: float) -> torch.Tensor:
    """Both annotation files give the first and last pixel of the box, counting from 1; as a
    box of pixel coordinates counted from 0 that is ``(x1 - 1, y1 - 1, x2, y2)``."""
    return torch.tensor([x1 - 1.0, y1 - 1.0, float(x2), float(y2)])


def _load_mat(path: Path, variable: str):
    """``variable`` of the MATLAB file ``path`` (squeezed, as torchvision reads it)."""
    import scipy.io

    require_file(path)
    try:
        content = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as error:  # scipy raises several types for a damaged file
        raise CorruptFileError(path, f"cannot read the MATLAB file ({error})") from error
    if variable not in content:
        raise CorruptFileError(path, f"no variable {variable!r}")
    return content[variable]


class CarsDataset(FineGrainedDataset):
    """Stanford Cars through ``torchvision.datasets.StanfordCars``, in its folder layout.

    ``root/stanford_cars/`` holds ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat`` and
    ``cars_train/`` for ``split="train"``, ``cars_test_annos_withlabels.mat`` and ``cars_test/``
    for ``split="test"``. With ``with_box``, the box is the annotation's ``bbox_x1 .. bbox_y2``
    (1-based pixels in the file, 0-based ``(x1, y1, x2, y2)`` here). Samples are described in
    :class:`~ssanet.data.base.FineGrainedDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        with_box: bool = False,
    ) -> None:
        super().__init__(transform, with_box, with_keypoints=False)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        base = require_dir(Path(require_dir(root, "root folder")) / "stanford_cars")
        devkit = require_dir(base / "devkit")
        if split == "train":
            annotations_path, images_dir = devkit / "cars_train_annos.mat", base / "cars_train"
        else:
            annotations_path = base / "cars_test_annos_withlabels.mat"
            images_dir = base / "cars_test"
        require_dir(images_dir, "image folder")
        # Read both files first, so that a damaged one is reported by name, not by scipy.
        annotations = _load_mat(annotations_path, "annotations")
        _load_mat(devkit / "cars_meta.mat", "class_names")
        self.annotations_path = annotations_path

        self.dataset = torchvision.datasets.StanfordCars(root, split=split, loader=load_rgb)
        self.classes = list(self.dataset.classes)
        fields = annotations.dtype.names or ()
        if "class" not in fields:
            raise CorruptFileError(annotations_path, "annotations have no 'class' field")
        self.targets = [int(annotation["class"]) - 1 for annotation in annotations.flat]
        if not all(0 <= label < len(self.classes) for label in self.targets):
            raise CorruptFileError(
                annotations_path, f"a class is outside 1..{len(self.classes)} (cars_meta.mat)"
            )
        self.boxes = None
        if with_box:
            missing = [field for field in BOX_FIELDS if field not in fields]
            if missing:
                raise CorruptFileError(annotations_path, f"annotations have no {missing} field")
            self.boxes = torch.stack(
                [
                    _one_based_box(*(float(annotation[field]) for field in BOX_FIELDS))
                    for annotation in annotations.flat
                ]
            )

    def load(self, index: int):
        image, _ = self.dataset[index]
        box = self.boxes[index] if self.boxes is not None else None
        return image, box, None, None


class AircraftDataset(FineGrainedDataset):
    """FGVC-Aircraft through ``torchvision.datasets.FGVCAircraft``, in its folder layout.

    ``root/fgvc-aircraft-2013b/data/`` holds ``images/``, ``variants.txt`` (or ``families.txt``,
    ``manufacturers.txt`` for ``annotation_level``), ``images_<level>_<split>.txt`` and, for
    ``with_box``, ``images_box.txt`` (``<image> <xmin> <ymin> <xmax> <ymax>``, 1-based pixels;
    0-based ``(x1, y1, x2, y2)`` here). ``split``: train, val, trainval (the paper's training
    set) or test. The images carry a ``banner_height``-pixel copyright banner at the bottom;
    ``crop_banner=True`` removes it (boxes are clipped to what remains). Samples are described
    in :class:`~ssanet.data.base.FineGrainedDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "trainval",
        annotation_level: str = "variant",
        transform: Callable | None = None,
        with_box: bool = False,
        crop_banner: bool = True,
        banner_height: int = 20,
    ) -> None:
        super().__init__(transform, with_box, with_keypoints=False)
        if split not in AIRCRAFT_SPLITS:
            raise ValueError(f"split must be one of {AIRCRAFT_SPLITS}, got {split!r}")
        if annotation_level not in AIRCRAFT_LEVELS:
            raise ValueError(
                f"annotation_level must be one of {tuple(AIRCRAFT_LEVELS)}, "
                f"got {annotation_level!r}"
            )
        self.split = split
        self.crop_banner = crop_banner
        self.banner_height = banner_height
        data = require_dir(Path(require_dir(root, "root folder")) / "fgvc-aircraft-2013b" / "data")
        require_dir(data / "images", "image folder")
        classes_path = require_file(data / AIRCRAFT_LEVELS[annotation_level])
        labels_path = data / f"images_{annotation_level}_{split}.txt"
        rows = read_table(labels_path, (str, str), rest=True)
        self.image_paths = [data / "images" / f"{name}.jpg" for name, _ in rows]

        try:
            self.dataset = torchvision.datasets.FGVCAircraft(
                root, split=split, annotation_level=annotation_level, loader=load_rgb
            )
        except (KeyError, ValueError) as error:
            raise CorruptFileError(
                labels_path, f"a line names no class of {classes_path} ({error})"
            ) from error
        self.classes = list(self.dataset.classes)
        self.targets = [self.dataset.class_to_idx[label] for _, label in rows]
        self.boxes = None
        if with_box:
            box_path = data / "images_box.txt"
            box_of = {
                name: coordinates
                for name, *coordinates in read_table(box_path, (str, int, int, int, int))
            }
            missing = [name for name, _ in rows if name not in box_of]
            if missing:
                raise CorruptFileError(box_path, f"no box for image {missing[0]}")
            self.boxes = torch.stack([_one_based_box(*box_of[name]) for name, _ in rows])

    def load(self, index: int):
        image, _ = self.dataset[index]
        box = self.boxes[index] if self.boxes is not None else None
        if self.crop_banner:
            if image.height <= self.banner_height:
                raise CorruptFileError(
                    self.image_paths[index],
                    f"image height {image.height} leaves nothing above the "
                    f"{self.banner_height}-pixel banner",
                )
            image = image.crop((0, 0, image.width, image.height - self.banner_height))
            if box is not None:
                box = box.clone()
                box[1::2] = box[1::2].clamp(max=image.height)
        return image, box, None, None
