"""Checkpoints, in one place.

- The model file: the architecture (``SSANet.config``), the weights and the class names in one
  file that loads with ``torch.load(weights_only=True)`` (:func:`save_checkpoint`,
  :func:`load_checkpoint`). Every save is atomic: a temporary file beside the target, synced to
  disk, then renamed over it, so a crash leaves the previous file whole (and at worst the
  temporary file, which :func:`remove_leftover_temporaries` deletes). Every file records the
  SHA-256 of its contents (``"checksum"``, :func:`contents_checksum`), which loading checks:
  a file damaged after it was written is refused by name instead of training on. Files written
  before the checksum existed load unchecked.
- A training run's checkpoints: ``last.pt`` (every epoch) and ``best.pt`` (best validation
  score) in the run folder; ``last.pt`` also holds the :class:`TrainingState` (stage, epoch,
  optimizer, scheduler, gradient scaler and every random state) that resuming needs
  (:func:`save_training_state`, :func:`load_training_state`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .model import SSANet

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "CHECKSUM_KEY",
    "LoadedCheckpoint",
    "TrainingState",
    "atomic_save",
    "contents_checksum",
    "load_checkpoint",
    "load_training_state",
    "remove_leftover_temporaries",
    "save_checkpoint",
    "save_training_state",
    "verify_checksum",
]

#: A run folder's checkpoint of its last epoch (with the training state ``--resume`` restores).
LAST_CHECKPOINT = "last.pt"
#: A run folder's checkpoint of the epoch its validation selected.
BEST_CHECKPOINT = "best.pt"
#: The entry holding ``"sha256:<hex digest>"`` of every other entry of a checkpoint file.
CHECKSUM_KEY = "checksum"


class LoadedCheckpoint(NamedTuple):
    model: SSANet  # in eval mode
    class_names: list[str]  # "class <i>" where the checkpoint names none
    image_size: int  # side of the square images the model expects
    extra: dict[str, Any]  # every other key of the file


def atomic_save(contents: Any, path: str | os.PathLike) -> None:
    """``torch.save(contents, path)`` into a temporary file beside ``path``, synced to disk,
    then renamed over ``path``: a crash leaves the previous file whole."""
    path = Path(path)
    temporary = _temporary_path(path, str(os.getpid()))
    try:
        torch.save(contents, temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _temporary_path(path: Path, pid: str) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def remove_leftover_temporaries(path: str | os.PathLike) -> None:
    """Deletes the temporary files that :func:`atomic_save` of `path` left behind when its
    process was killed mid-save (the rename never happened, so they hold nothing that counts)."""
    path = Path(path)
    for leftover in path.parent.glob(_temporary_path(path, "*").name):
        leftover.unlink(missing_ok=True)


def contents_checksum(contents: dict) -> str:
    """``"sha256:<hex>"`` of a checkpoint's contents, every entry but :data:`CHECKSUM_KEY`:
    each tensor's dtype, shape and bytes, every other value's type and ``repr``, walked in
    order. The value is the same before ``torch.save`` and after ``torch.load``, on any device."""
    digest = hashlib.sha256()
    _hash_value(digest, {key: value for key, value in contents.items() if key != CHECKSUM_KEY})
    return f"sha256:{digest.hexdigest()}"


def _hash_value(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):  # dict and OrderedDict alike: pickling keeps their order
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _hash_value(digest, key)
            _hash_value(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"sequence {len(value)};".encode())
        for item in value:
            _hash_value(digest, item)
    else:  # numbers, strings, None, torch.dtype: the types weights_only loads
        digest.update(f"{type(value).__name__} {value!r};".encode())


def verify_checksum(path: str | os.PathLike, contents: dict) -> None:
    """Raises ValueError naming `path` when `contents` (as loaded from it) do not match the
    checksum recorded in them; contents without one (older files) pass."""
    recorded = contents.get(CHECKSUM_KEY)
    if recorded is not None and recorded != contents_checksum(contents):
        raise ValueError(
            f"{path} is damaged: its contents do not match the checksum recorded when it was saved"
        )


def save_checkpoint(
    path: str | os.PathLike,
    model: SSANet,
    class_names: list[str] | None = None,
    image_size: int = 448,
    **extra: Any,
) -> None:
    """Writes ``{"model_config", "model", "class_names", "image_size", **extra}`` to `path`,
    atomically (:func:`atomic_save`).

    `extra` values must be loadable with ``weights_only=True`` (tensors, numbers, strings,
    lists, dicts), for instance an optimizer's state dict or the epoch.
    """
    if class_names is not None and len(class_names) != model.config["num_classes"]:
        raise ValueError(
            f"class_names has {len(class_names)} names for {model.config['num_classes']} classes"
        )
    contents = {
        "model_config": model.config,
        "model": model.state_dict(),
        "class_names": class_names,
        "image_size": image_size,
        **extra,
    }
    contents[CHECKSUM_KEY] = contents_checksum(contents)
    atomic_save(contents, path)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Rebuilds the model of a :func:`save_checkpoint` file, with its weights, in eval mode.

    A missing file raises FileNotFoundError; a file that is not such a checkpoint, or whose
    contents do not match their checksum, ValueError.
    """
    contents = _read_checkpoint(path)
    model = SSANet.from_config(contents.pop("model_config"))
    model.load_state_dict(contents.pop("model"))
    model.to(map_location).eval()
    class_names = contents.pop("class_names", None)
    if class_names is None:
        class_names = [f"class {index}" for index in range(model.config["num_classes"])]
    image_size = contents.pop("image_size", 448)
    return LoadedCheckpoint(model, list(class_names), int(image_size), contents)


def _read_checkpoint(path: str | os.PathLike) -> dict:
    """A :func:`save_checkpoint` file's contents, on the CPU, checksum checked, without the
    checksum; the errors of :func:`load_checkpoint`."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a folder: name the file (e.g. best.pt)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # Read onto the CPU, then move the model: a device error is not the file's fault.
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # whatever the unpickler raises on a file it cannot parse
        # Not torch's message (dropped from the chain too): it advises weights_only=False,
        # which would run any code the file holds.
        raise ValueError(
            f"{path} is not an SSANet checkpoint, or is damaged: torch.load(weights_only=True) "
            f"cannot read it ({_failure_reason(error)}); expected a file written by "
            "ssanet.save_checkpoint or ssanet train"
        ) from None
    if not isinstance(contents, dict):
        kind = type(contents).__name__
        raise ValueError(f"{path} is not an SSANet checkpoint: it holds a {kind}, not a dict")
    missing = {"model_config", "model"} - set(contents)
    if missing:
        raise ValueError(f"{path} is not an SSANet checkpoint: it lacks {sorted(missing)}")
    verify_checksum(path, contents)
    contents = dict(contents)
    contents.pop(CHECKSUM_KEY, None)
    return contents


def _failure_reason(error: Exception) -> str:
    """What torch.load reported, in a line and without its advice."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # a pickle, with something else than tensors
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif not isinstance(error, RuntimeError):  # e.g. KeyError on a text file: says nothing
        return "not a file of torch.save"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(error).__name__


# Training state -----------------------------------------------------------------------------


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every random state of this process, as tensors and primitives (weights_only-safe)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }


def set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    """Restores the random states of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    loader_generator.set_state(state["loader"])


def scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR) -> dict:
    """The scheduler's state dict, loadable with ``weights_only=True``."""
    state = scheduler.state_dict()
    state["milestones"] = dict(state["milestones"])  # a Counter does not load with weights_only
    return state


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR, state: dict) -> None:
    state = dict(state)
    state["milestones"] = Counter(state["milestones"])
    scheduler.load_state_dict(state)


@dataclasses.dataclass
class TrainingState:
    """Where a run stands: ``last.pt``'s ``"training"`` entry.

    The counters (``epoch``: epochs done in all; ``stage_position``: the current stage's place
    in the resolved stages; ``stage_epoch``: epochs done in it) and the best validation score
    so far, plus, in a saved or loaded state, the states that resuming restores: the current
    stage's optimizer and scheduler, the gradient scaler and the random states of every
    process (``rng``, one per rank).
    """

    epoch: int = 0
    stage_position: int = 0
    stage_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: list[dict] | None = None


def save_training_state(
    path: str | os.PathLike,
    model: SSANet,
    state: TrainingState,
    stage: dict,
    **extra: Any,
) -> None:
    """:func:`save_checkpoint` with ``training`` = `state` (and the current `stage`'s index and
    name, and the number of processes, for the reader)."""
    training = {
        "epoch": state.epoch,
        "stage_position": state.stage_position,
        "stage_index": stage["index"],
        "stage_name": stage["name"],
        "stage_epoch": state.stage_epoch,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": state.scaler,
        "rng": state.rng,
        "world_size": len(state.rng),
    }
    save_checkpoint(path, model, **extra, training=training)


def load_training_state(path: str | os.PathLike, model: SSANet) -> tuple[TrainingState, dict]:
    """Loads the weights of a :func:`save_training_state` file into `model`; returns its
    :class:`TrainingState` and the file's other entries (e.g. ``"metrics"``, the epoch's log
    row). The errors of :func:`load_checkpoint`, and ValueError for a file without a training
    state."""
    contents = _read_checkpoint(path)
    if "training" not in contents:
        raise ValueError(f"{path} holds no training state: it is not the last.pt of a run")
    model.load_state_dict(contents.pop("model"))
    training = contents.pop("training")
    fields = {field.name for field in dataclasses.fields(TrainingState)}
    state = TrainingState(**{key: value for key, value in training.items() if key in fields})
    return state, contents
