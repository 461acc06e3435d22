"""SSANet: the model layer, data and evaluation built on the ssanet_ops operators.

``ssanet.SSANet`` assembles the paper's network (proposals with MAC, discriminative scale
mining, oriented pooling) from ``ssanet_ops`` and torchvision; ``ssanet.predict`` and the
``ssanet`` command line run it.

The names below load on first use (PEP 562), so that ``import ssanet`` does not import torch
or torchvision: the ``ssanet`` command answers ``--help``, ``--version`` and argument mistakes
at once, with or without torchvision (an optional dependency, the ``train`` extra). The model
layer and its data, which need torchvision, say in one line when it is missing or not the build
made for the installed torch (``ssanet._vision``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

# Bound eagerly: the function ``predict`` shares its name with its module, which the import
# system would otherwise bind here (``ssanet.predict`` must be the function). The module
# imports torch only inside its functions.
from .predict import Prediction, draw_parts, load_images, picture_grid, predict, write_picture

if TYPE_CHECKING:
    from .checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
    from .model import (
        NTS_ANCHOR_LEVELS,
        AnchorLevel,
        MACLoss,
        OrientedPoolClassifier,
        RankingLoss,
        SSANet,
        SSANetLoss,
        SSANetOutput,
        use_reference_ops,
    )

# name -> the submodule that defines it
_LAZY = {
    "LoadedCheckpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "NTS_ANCHOR_LEVELS": "model",
    "AnchorLevel": "model",
    "MACLoss": "model",
    "OrientedPoolClassifier": "model",
    "RankingLoss": "model",
    "SSANet": "model",
    "SSANetLoss": "model",
    "SSANetOutput": "model",
    "use_reference_ops": "model",
}

__all__ = [
    "NTS_ANCHOR_LEVELS",
    "AnchorLevel",
    "LoadedCheckpoint",
    "MACLoss",
    "OrientedPoolClassifier",
    "Prediction",
    "RankingLoss",
    "SSANet",
    "SSANetLoss",
    "SSANetOutput",
    "draw_parts",
    "load_checkpoint",
    "load_images",
    "picture_grid",
    "predict",
    "save_checkpoint",
    "use_reference_ops",
    "write_picture",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    # Submodules (ssanet.model, ssanet.data, ...), as an eager package would have bound them.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
