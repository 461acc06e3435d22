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
    """Rebuilds the model of a :func:`save_checkpoint` file, with its weights, in eval mode."""
    contents = torch.load(path, map_location=map_location, weights_only=True)
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
