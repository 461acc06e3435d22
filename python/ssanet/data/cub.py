"""CUB-200-2011, read from the files as the dataset ships them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ._files import CorruptFileError, load_rgb, read_table, require_dir
from .base import FineGrainedDataset

SPLITS = ("train", "test", "all")


def find_cub_root(root: str | os.PathLike) -> Path:
    """The folder holding ``images.txt``: ``root`` itself or ``root/CUB_200_2011``."""
    root = Path(root)
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    return root


class CUBDataset(FineGrainedDataset):
    """CUB-200-2011 (or any dataset in its layout, such as :func:`ssanet.data.make_synthetic`'s).

    ``root`` is the folder with ``images.txt`` (the archive's ``CUB_200_2011/``) or its parent.
    Files read: ``images.txt`` (``<image_id> <path under images/>``), ``image_class_labels.txt``
    (``<image_id> <class_id>``), ``train_test_split.txt`` (``<image_id> <is_training_image>``),
    ``classes.txt`` (``<class_id> <name>``); with ``with_box``, ``bounding_boxes.txt``
    (``<image_id> <x> <y> <width> <height>``); with ``with_keypoints``, ``parts/part_locs.txt``
    (``<image_id> <part_id> <x> <y> <visible>``) and, when present, ``parts/parts.txt`` for the
    part names. Ids in the files start at 1; labels start at 0, in the order of the class ids.
    Coordinates are taken as pixel coordinates of the image, as they are written; a box
    ``(x, y, width, height)`` becomes ``(x, y, x + width, y + height)``. Parts with no line in
    ``part_locs.txt`` count as not visible.

    ``split``: ``"train"``, ``"test"`` (from ``train_test_split.txt``) or ``"all"``.
    Samples are described in :class:`~ssanet.data.base.FineGrainedDataset`. A missing file raises
    FileNotFoundError, a malformed one :class:`~ssanet.data.CorruptFileError`; both name the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        with_box: bool = False,
        with_keypoints: bool = False,
    ) -> None:
        super().__init__(transform, with_box, with_keypoints)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.root = find_cub_root(require_dir(root, "root folder"))

        images_file = self.root / "images.txt"
        image_paths = _unique_ids(read_table(images_file, (int, str), rest=True), images_file)
        labels_file = self.root / "image_class_labels.txt"
        class_of = _unique_ids(read_table(labels_file, (int, int)), labels_file)
        split_file = self.root / "train_test_split.txt"
        is_train = _unique_ids(read_table(split_file, (int, int)), split_file)
        classes_file = self.root / "classes.txt"
        class_names = _unique_ids(read_table(classes_file, (int, str), rest=True), classes_file)

        label_of_class = {class_id: label for label, class_id in enumerate(sorted(class_names))}
        self.classes = [_display_name(class_names[class_id]) for class_id in sorted(class_names)]
        self.image_ids: list[int] = []
        self.image_paths: list[Path] = []
        self.targets = []
        for image_id, relative_path in image_paths.items():
            _check_split_line(image_id, is_train, split_file)
            if split != "all" and is_train[image_id] != (split == "train"):
                continue
            _check_label_line(image_id, class_of, label_of_class, labels_file, classes_file)
            self.image_ids.append(image_id)
            self.image_paths.append(self.root / "images" / relative_path)
            self.targets.append(label_of_class[class_of[image_id]])

        self.boxes = self._read_boxes() if with_box else None
        self.part_names: list[str] | None = None
        self.keypoints, self.keypoints_visible = (
            self._read_keypoints() if with_keypoints else (None, None)
        )

    def _read_boxes(self) -> torch.Tensor:
        """``[N, 4]`` boxes ``(x1, y1, x2, y2)`` of the selected images."""
        path = self.root / "bounding_boxes.txt"
        rows = _unique_ids(read_table(path, (int, float, float, float, float)), path)
        boxes = torch.empty(len(self.image_ids), 4)
        for row, image_id in enumerate(self.image_ids):
            if image_id not in rows:
                raise CorruptFileError(path, f"no box for image id {image_id}")
            x, y, width, height = rows[image_id]
            if not width >= 0 or not height >= 0:
                raise CorruptFileError(path, f"negative box size for image id {image_id}")
            boxes[row] = torch.tensor([x, y, x + width, y + height])
        return boxes

    def _read_keypoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, P, 2]`` part locations and ``[N, P]`` visible flags of the selected images."""
        path = self.root / "parts" / "part_locs.txt"
        rows = read_table(path, (int, int, float, float, int))
        names_path = self.root / "parts" / "parts.txt"
        if names_path.is_file():
            names = _unique_ids(read_table(names_path, (int, str), rest=True), names_path)
            self.part_names = [names[part_id] for part_id in sorted(names)]
            num_parts = len(names)
        else:
            num_parts = max((row[1] for row in rows), default=0)
        row_of_image = {image_id: row for row, image_id in enumerate(self.image_ids)}
        points = torch.zeros(len(self.image_ids), num_parts, 2)
        visible = torch.zeros(len(self.image_ids), num_parts, dtype=torch.bool)
        for line, (image_id, part_id, x, y, is_visible) in enumerate(rows, start=1):
            if not 1 <= part_id <= num_parts:
                raise CorruptFileError(path, f"part id {part_id} not in 1..{num_parts}", line)
            if is_visible not in (0, 1):
                raise CorruptFileError(path, f"visible must be 0 or 1, got {is_visible}", line)
            row = row_of_image.get(image_id)
            if row is not None:
                points[row, part_id - 1] = torch.tensor([x, y])
                visible[row, part_id - 1] = bool(is_visible)
        return points, visible

    def load(self, index: int):
        image = load_rgb(self.image_paths[index])
        box = self.boxes[index] if self.boxes is not None else None
        if self.keypoints is None:
            return image, box, None, None
        return image, box, self.keypoints[index], self.keypoints_visible[index]


def _unique_ids(rows: list[tuple], path: Path) -> dict:
    """``{first field: the other field(s)}``; a repeated id is an error naming ``path``."""
    table: dict = {}
    for row in rows:
        if row[0] in table:
            raise CorruptFileError(path, f"id {row[0]} appears twice")
        table[row[0]] = row[1] if len(row) == 2 else row[1:]
    return table


def _display_name(name: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black_footed_Albatross"``."""
    prefix, dot, rest = name.partition(".")
    return rest if dot and prefix.isdigit() else name


def _check_split_line(image_id: int, is_train: dict[int, int], split_file: Path) -> None:
    if image_id not in is_train:
        raise CorruptFileError(split_file, f"no line for image id {image_id}")
    if is_train[image_id] not in (0, 1):
        raise CorruptFileError(split_file, f"is_training_image of image {image_id} must be 0 or 1")


def _check_label_line(
    image_id: int,
    class_of: dict[int, int],
    label_of_class: dict[int, int],
    labels_file: Path,
    classes_file: Path,
) -> None:
    if image_id not in class_of:
        raise CorruptFileError(labels_file, f"no label for image id {image_id}")
    if class_of[image_id] not in label_of_class:
        raise CorruptFileError(
            labels_file,
            f"class id {class_of[image_id]} of image {image_id} is not in {classes_file}",
        )
