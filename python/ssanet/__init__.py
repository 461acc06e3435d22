"""SSANet: the model layer, data and evaluation built on the ssanet_ops operators.

``ssanet.SSANet`` assembles the paper's network (proposals with MAC, discriminative scale
mining, oriented pooling) from ``ssanet_ops`` and torchvision; ``ssanet.predict`` and the
``ssanet`` command line run it.
"""

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
from .predict import Prediction, draw_parts, load_images, predict

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
    "predict",
    "save_checkpoint",
    "use_reference_ops",
]
