"""Datasets, transforms and the synthetic data generator of SSANet's training and evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import _vision  # noqa: F401  (torchvision, or one line saying why it cannot be used)
from ._files import CorruptFileError
from .base import FineGrainedDataset
from .cars_aircraft import AircraftDataset, CarsDataset
from .cub import CUBDataset
from .synthetic import SYNTHETIC_PRESETS, make_synthetic, synthetic_preset
from .transforms import (
    PRESETS,
    Rotate,
    config_transform,
    eval_transform,
    paper_transform,
    reduced_input,
    train_transform,
)

#: The dataset names :func:`build_dataset` takes.
DATASETS = ("cub", "cars", "aircraft", "synthetic")

__all__ = [
    "DATASETS",
    "PRESETS",
    "SYNTHETIC_PRESETS",
    "AircraftDataset",
    "CarsDataset",
    "CorruptFileError",
    "CUBDataset",
    "FineGrainedDataset",
    "Rotate",
    "build_dataset",
    "config_test_split",
    "eval_transform",
    "make_synthetic",
    "paper_transform",
    "reduced_input",
    "synthetic_preset",
    "train_transform",
]


def build_dataset(
    name: str,
    root: str | os.PathLike,
    train: bool,
    transform: Callable | None = None,
    with_box: bool = False,
    with_keypoints: bool = False,
) -> FineGrainedDataset:
    """The training (``train=True``) or test split of dataset ``name`` (one of :data:`DATASETS`).

    The paper's splits: CUB and synthetic train / test (``train_test_split.txt``), Cars train /
    test, Aircraft trainval / test. Keypoints exist in the CUB layout (cub, synthetic) only.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if with_keypoints and name not in ("cub", "synthetic"):
        raise ValueError(f"with_keypoints needs the CUB layout (cub, synthetic), not {name!r}")
    if name in ("cub", "synthetic"):
        split = "train" if train else "test"
        return CUBDataset(root, split, transform, with_box, with_keypoints)
    if name == "cars":
        return CarsDataset(root, "train" if train else "test", transform, with_box)
    return AircraftDataset(
        root, "trainval" if train else "test", transform=transform, with_box=with_box
    )


def config_test_split(
    settings: dict, root: str | os.PathLike, with_keypoints: bool = False
) -> FineGrainedDataset:
    """The test split of ``settings["dataset"]`` under ``root``, in the evaluation transform of
    ``settings["transform"]`` (a training config, or a checkpoint's ``extra``)."""
    transform = config_transform(settings["transform"], train=False)
    return build_dataset(settings["dataset"], root, False, transform, with_keypoints=with_keypoints)
