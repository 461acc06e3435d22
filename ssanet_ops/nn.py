"""torch.nn modules around the ssanet_ops operators."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import ops
from ._validation import crop_settings, oriented_pool_settings, scale_list

__all__ = ["MultiScaleRoICrop", "OrientedPool", "ScaleAlign"]


class OrientedPool(nn.Module):
    """Oriented pooling (docs/operators.md section 1): ``[B, C, H, W] -> [B, 4, G*C*h*w]``.

    See :func:`ssanet_ops.oriented_pool` for the arguments; they are checked here, except
    that the grid fits the input, which needs its size.

    >>> pool = ssanet_ops.nn.OrientedPool(patch_size=3, grid_size=3)
    >>> pool(torch.randn(8, 512, 7, 7)).shape
    torch.Size([8, 4, 13824])
    """

    def __init__(
        self,
        patch_size: int | Sequence[int] = 3,
        grid_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size, self.grid_size, self.stride = oriented_pool_settings(
            patch_size, grid_size, stride
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.oriented_pool(x, self.patch_size, self.grid_size, self.stride)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, grid_size={self.grid_size}, stride={self.stride}"


class MultiScaleRoICrop(nn.Module):
    """Multi-scale ROI cropping (docs/operators.md section 2): ``input [B, C, H, W]`` and ``K``
    boxes to ``[K, S, C, oh, ow]``, the S scale candidates of every box sampled as roi_align
    does.

    See :func:`ssanet_ops.multiscale_roi_crop` for the arguments, checked here;
    ``forward(input, boxes, centers=None)`` takes the per-call ones.

    Example: the crops of five scale candidates from a shared stride-32 feature map.

    >>> crop = ssanet_ops.nn.MultiScaleRoICrop(7, ssanet_ops.scale_factors(1.25, 5),
    ...                                        spatial_scale=1 / 32, sampling_ratio=2)
    >>> features = torch.randn(2, 1024, 14, 14)
    >>> boxes = torch.tensor([[0, 40.0, 60.0, 200.0, 220.0], [1, 10.0, 10.0, 150.0, 300.0]])
    >>> crop(features, boxes).shape
    torch.Size([2, 5, 1024, 7, 7])
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
        self.output_size, self.spatial_scale, self.sampling_ratio = crop_settings(
            output_size, spatial_scale, sampling_ratio
        )
        self.scales = tuple(scale_list(scales))
        self.aligned = bool(aligned)
        self.clip = bool(clip)

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


def max_of_normals_variance(count: int) -> float:
    """Variance of the maximum of `count` independent standard normal variables, by numerical
    integration of its density ``count * pdf(x) * cdf(x)**(count - 1)``."""
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + torch.special.erf(x / math.sqrt(2.0)))
    density = count * pdf * cdf ** (count - 1)
    mean = torch.trapezoid(x * density, x)
    return float(torch.trapezoid((x - mean) ** 2 * density, x))


class ScaleAlign(nn.Module):
    """Circulant scale alignment (docs/operators.md section 3; paper eqs. 6-8), a linear
    classifier over S scale candidates that picks, per class, the best circulant alignment of
    scales.

    ``forward(phi)`` returns ``(logits, shift)`` of :func:`ssanet_ops.scale_align`:

    - ``groups=None`` (the default): phi ``[N, S, D]`` -> ``[N, C]``; weight ``[C, S, D]``,
      bias ``[C]``.
    - ``groups=G`` (any G >= 1, 1 included): phi ``[G, N, S, D]`` -> ``[G, N, C]``, one filter
      bank per group (part index); weight ``[G, C, S, D]``, bias ``[G, C]``.

    Initialisation: for phi with independent zero-mean unit-variance entries, every shift's
    response is a sum of S*D products and the S shifts' responses are uncorrelated, so the
    weight is drawn from N(0, sigma^2) with ``sigma^2 = 1 / (S * D * v_S)``, where ``v_S`` is
    the variance of the maximum of S independent standard normals: the logits then have unit
    variance at the start. The bias starts at zero.

    Example: one filter bank per part index (K = 4 parts), 5 scales, 200 classes.

    >>> head = ssanet_ops.nn.ScaleAlign(in_features=512, num_classes=200, num_scales=5, groups=4)
    >>> logits, shift = head(torch.randn(4, 96, 5, 512))
    >>> logits.shape, shift.shape
    (torch.Size([4, 96, 200]), torch.Size([4, 96, 200]))
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_scales: int,
        groups: int | None = None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("num_scales", num_scales),
            ("groups", 1 if groups is None else groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.num_scales = num_scales
        self.groups = groups
        bank = (num_classes,) if groups is None else (groups, num_classes)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(*bank, num_scales, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(*bank, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        variance = 1.0 / (
            self.num_scales * self.in_features * max_of_normals_variance(self.num_scales)
        )
        nn.init.normal_(self.weight, mean=0.0, std=math.sqrt(variance))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.scale_align(phi, self.weight, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Before groups=None meant "ungrouped", groups=1 was stored without its group
        # dimension; such state dicts still load.
        if self.groups == 1:
            for name in ("weight", "bias"):
                value, parameter = state_dict.get(prefix + name), getattr(self, name)
                if value is not None and parameter is not None and value.dim() < parameter.dim():
                    state_dict[prefix + name] = value.unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"num_scales={self.num_scales}, groups={self.groups}, bias={self.bias is not None}"
        )
