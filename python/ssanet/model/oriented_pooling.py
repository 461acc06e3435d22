"""Oriented pooling head (paper section 3.3, eqs. 9-13; docs/operators.md section 1).

The 7x7 map of each part's aligned candidate is pooled in four orientations
(``ssanet_ops.oriented_pool``) and classified by eq. 13, the maximum over the orientations of
one linear classifier's responses. One classifier per part index. The GAP and GMP heads of the
paper's Table 4 replace the oriented pooling for the ablation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssanet_ops.utils import pair

from .operators import operators

__all__ = ["GroupedLinear", "OrientedPoolClassifier", "PartPoolingHead", "POOLING_MODES"]

#: The OP head's pooling: the paper's oriented pooling, or global average or max pooling (Table 4).
POOLING_MODES = ("oriented", "gap", "gmp")


class GroupedLinear(nn.Module):
    """G independent linear layers: ``x [G, N, in_features] -> [G, N, out_features]``.

    Initialised like ``nn.Linear``: weights and biases uniform in ``+-1/sqrt(in_features)``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != self.groups or x.shape[2] != self.in_features:
            raise ValueError(
                f"x must be [G={self.groups}, N, {self.in_features}], got {tuple(x.shape)}"
            )
        return torch.baddbmm(self.bias[:, None, :], x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"groups={self.groups}"
        )


class OrientedPoolClassifier(GroupedLinear):
    """Eq. 13: ``y = max over o of (W @ x[o] + b)`` for the four oriented poolings of a map.

    ``x``: ``[G, N, 4, in_features]`` (one group per part index; ``[N, 4, in_features]`` when
    ``groups == 1``), the output of ``ssanet_ops.oriented_pool``. Returns ``[G, N, C]``
    (``[N, C]`` for an ungrouped input). The gradient of the max goes to the winning
    orientation (the first on ties).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ungrouped = x.dim() == 3 and self.groups == 1
        if ungrouped:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != self.groups or x.shape[2] != 4:
            raise ValueError(
                f"x must be [G={self.groups}, N, 4, {self.in_features}] (four orientations), "
                f"got {tuple(x.shape)}"
            )
        groups, count = x.shape[:2]
        responses = super().forward(x.reshape(groups, count * 4, -1)).view(groups, count, 4, -1)
        logits = responses.max(dim=2).values
        return logits.squeeze(0) if ungrouped else logits


class PartPoolingHead(nn.Module):
    """The OP module per part: ``maps [B, K, C, h, w] -> logits [B, K, num_classes]``.

    Image-major in and out, like the rest of the model; the grouped classifiers take the parts
    first (``[K, B, ...]``), one classifier per part index.

    Args:
        channels: C of the maps.
        num_classes: classes.
        num_parts: K, one classifier per part index.
        pooling: "oriented" (the paper, eqs. 9-13), "gap" or "gmp" (global average / max
            pooling and a linear classifier, Table 4).
        patch_size, grid_size: of the oriented pooling (the paper: 3 and 3 on a 7x7 map).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_parts: int,
        pooling: str = "oriented",
        patch_size: int | tuple[int, int] = 3,
        grid_size: int = 3,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"op pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.pooling = pooling
        self.patch_size = pair(patch_size, "patch_size")
        self.grid_size = grid_size
        if pooling == "oriented":
            # Each orientation concatenates G pooled patches of C*h*w values
            # (docs/operators.md section 1).
            in_features = grid_size * channels * self.patch_size[0] * self.patch_size[1]
            self.classifier = OrientedPoolClassifier(in_features, num_classes, num_parts)
        else:
            self.classifier = GroupedLinear(channels, num_classes, num_parts)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, num_classes]`` of the parts' maps ``[B, K, C, h, w]``."""
        batch, parts = maps.shape[:2]
        if self.pooling == "oriented":
            pooled = operators().oriented_pool(maps.flatten(0, 1), self.patch_size, self.grid_size)
            pooled = pooled.view(batch, parts, 4, -1)
        elif self.pooling == "gap":
            pooled = maps.mean(dim=(-2, -1))
        else:
            pooled = maps.amax(dim=(-2, -1))
        return self.classifier(pooled.transpose(0, 1)).transpose(0, 1)
