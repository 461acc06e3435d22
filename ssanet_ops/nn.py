"""torch.nn modules around the ssanet_ops operators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import ops

__all__ = ["MultiScaleRoICrop", "OrientedPool"]


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


class MultiScaleRoICrop(nn.Module):
    """Multi-scale ROI cropping (SPEC.md section 2): ``input [B, C, H, W]`` and ``K`` boxes to
    ``[K, S, C, oh, ow]``, the S scale candidates of every box sampled as roi_align does.

    See :func:`ssanet_ops.multiscale_roi_crop` for the arguments; ``forward(input, boxes,
    centers=None)`` takes the per-call ones.
    """

    def __init__(
        self,
        output_size: int | Sequence[int],
        scales: Sequence[float],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = True,
        clip: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.scales = tuple(ops.scale_list(scales))
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.clip = clip

    def forward(
        self,
        input: torch.Tensor,
        boxes: torch.Tensor | Sequence[torch.Tensor],
        centers: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return ops.multiscale_roi_crop(
            input,
            boxes,
            self.output_size,
            self.scales,
            centers,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.clip,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, clip={self.clip}"
        )
