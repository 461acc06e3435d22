"""The SSANet network assembled from ssanet_ops and torchvision (paper section 3)."""

from .. import _vision  # noqa: F401  (torchvision, or one line saying why it cannot be used)
from .backbone import RESNET_NAMES, Backbone, load_backbone_weights
from .dsm import DSM_MODES, DiscriminativeScaleMining
from .losses import MACLoss, RankingLoss, SSANetLoss, morphological_alignment_loss
from .operators import operators, use_reference_ops
from .oriented_pooling import GroupedLinear, OrientedPoolClassifier, PartPoolingHead
from .proposals import (
    NTS_ANCHOR_LEVELS,
    AnchorLevel,
    ProposalHead,
    make_anchors,
    select_proposals,
)
from .ssanet import SSANet, SSANetOutput

__all__ = [
    "DSM_MODES",
    "NTS_ANCHOR_LEVELS",
    "RESNET_NAMES",
    "AnchorLevel",
    "Backbone",
    "DiscriminativeScaleMining",
    "GroupedLinear",
    "MACLoss",
    "OrientedPoolClassifier",
    "PartPoolingHead",
    "ProposalHead",
    "RankingLoss",
    "SSANet",
    "SSANetLoss",
    "SSANetOutput",
    "load_backbone_weights",
    "make_anchors",
    "morphological_alignment_loss",
    "operators",
    "select_proposals",
    "use_reference_ops",
]
