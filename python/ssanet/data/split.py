"""The validation split: a share of each class's training images held out from training.

Selecting the model (``best.pt``) on the test split and then reporting its test accuracy
reports the best of several test scores, an optimistic figure; the training configs' default
``validation: "holdout"`` selects on images of the training split that the run does not train
on, and the test split is used once, to evaluate the selected model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from .base import FineGrainedDataset

__all__ = ["VALIDATION_MODES", "Subset", "holdout_indices", "training_splits"]

#: "test": validate on the test split (no held-out images); "holdout": on a held-out share of
#: the training split; "none": no validation (best.pt is the last model).
VALIDATION_MODES = ("holdout", "test", "none")


def holdout_indices(targets: Sequence[int], fraction: float) -> tuple[list[int], list[int]]:
    """``(train, validation)`` positions of ``targets``: of each class's n samples, the last
    ``ceil(fraction * n)`` (in dataset order) are held out, keeping at least one for training.

    Deterministic (no random draw): every run on the same data, whatever its seed, holds out
    the same images, so seeds and ablation rows are selected on the same validation set.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    positions: dict[int, list[int]] = {}
    for position, target in enumerate(targets):
        positions.setdefault(int(target), []).append(position)
    held_out = set()
    for members in positions.values():
        count = min(math.ceil(fraction * len(members)), len(members) - 1)
        held_out.update(members[len(members) - count :])
    train = [position for position in range(len(targets)) if position not in held_out]
    return train, sorted(held_out)


class Subset(Dataset):
    """Samples ``indices`` of a :class:`FineGrainedDataset`, with its ``classes``; ``targets``
    are those of the kept samples. A sample's ``"index"`` is its index in the whole dataset."""

    def __init__(self, dataset: FineGrainedDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.classes = dataset.classes
        self.targets = [dataset.targets[index] for index in self.indices]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]


def training_splits(
    build: Callable[[bool, Callable], FineGrainedDataset],
    validation: str,
    train_transform: Callable,
    test_transform: Callable,
    holdout_fraction: float = 0.2,
) -> tuple[Dataset, Dataset | None]:
    """The training and validation sets of a run: ``build(train, transform)`` makes a split of
    the dataset (:func:`ssanet.data.build_dataset` with the name and root bound).

    ``validation``: one of :data:`VALIDATION_MODES`. With ``"holdout"`` the validation images
    (:func:`holdout_indices` of the training split) are read with ``test_transform``.
    """
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {VALIDATION_MODES}, got {validation!r}")
    train_set = build(True, train_transform)
    if validation == "none":
        return train_set, None
    if validation == "test":
        return train_set, build(False, test_transform)
    train, held_out = holdout_indices(train_set.targets, holdout_fraction)
    return Subset(train_set, train), Subset(build(True, test_transform), held_out)
