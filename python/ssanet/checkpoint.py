"""Model checkpoints: the architecture (``SSANet.config``), the weights and the class names in
one file that loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from .model import SSANet

__all__ = ["LoadedCheckpoint", "load_checkpoint", "save_checkpoint"]


class LoadedCheckpoint(NamedTuple):
    model: SSANet  # in eval mode
    class_names: list[str]  # "class <i>" where the checkpoint names none
    image_size: int  # side of the square images the model expects
    extra: dict[str, Any]  # every other key of the file


def save_checkpoint(
    path: str | os.PathLike,
    model: SSANet,
    class_names: list[str] | None = None,
    image_size: int = 448,
    **extra: Any,
) -> None:
    """Writes ``{"model_config", "model", "class_names", "image_size", **extra}`` to `path`.

    `extra` values must be loadable with ``weights_only=True`` (tensors, numbers, strings,
    lists, dicts), for instance an optimizer's state dict or the epoch.
    """
    if class_names is not None and len(class_names) != model.config["num_classes"]:
        raise ValueError(
            f"class_names has {len(class_names)} names for {model.config['num_classes']} classes"
        )
    torch.save(
        {
            "model_config": model.config,
            "model": model.state_dict(),
            "class_names": class_names,
            "image_size": image_size,
            **extra,
        },
        path,
    )


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Rebuilds the model of a :func:`save_checkpoint` file, with its weights, in eval mode.

    A missing file raises FileNotFoundError; a file that is not such a checkpoint, ValueError.
    """
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
            f"{path} is not an SSANet checkpoint: torch.load(weights_only=True) cannot read it "
            f"({_failure_reason(error)}); expected a file written by ssanet.save_checkpoint or "
            "ssanet train"
        ) from None
    if not isinstance(contents, dict):
        kind = type(contents).__name__
        raise ValueError(f"{path} is not an SSANet checkpoint: it holds a {kind}, not a dict")
    missing = {"model_config", "model"} - set(contents)
    if missing:
        raise ValueError(f"{path} is not an SSANet checkpoint: it lacks {sorted(missing)}")
    contents = dict(contents)
    model = SSANet.from_config(contents.pop("model_config"))
    model.load_state_dict(contents.pop("model"))
    model.to(map_location).eval()
    class_names = contents.pop("class_names", None)
    if class_names is None:
        class_names = [f"class {index}" for index in range(model.config["num_classes"])]
    image_size = contents.pop("image_size", 448)
    return LoadedCheckpoint(model, list(class_names), int(image_size), contents)


def _failure_reason(error: Exception) -> str:
    """What torch.load reported, in a line and without its advice."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # a pickle, with something else than tensors
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif not isinstance(error, RuntimeError):  # e.g. KeyError on a text file: says nothing
        return "not a file of torch.save"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(error).__name__
