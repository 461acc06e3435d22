"""torch.nn modules around the ssanet_ops operators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops

__all__ = ["OrientedPool"]


class OrientedPool(nn.Module):
    """Oriented pooling (SPEC.md section 1): ``[B, C, H, W] -> [B, 4, G*C*h*w]``.

    See :func:`ssanet_ops.oriented_pool` for the arguments.
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 3,
        grid_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.oriented_pool(x, self.patch_size, self.grid_size, self.stride)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, grid_size={self.grid_size}, stride={self.stride}"
