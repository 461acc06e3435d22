"""Why rotation costs what it costs (Table 1): rotations of feature maps, and how far a
backbone's features are from rotating with the image.

The evaluation's rotation (:class:`ssanet.data.transforms.Rotate`, Table 1) turns an image
counter-clockwise about its centre. :func:`rotate_maps` turns a feature map the same way:
exactly (``torch.rot90``) by multiples of 90 degrees, by bilinear resampling otherwise. With
it, the three questions of the Table-1 analysis in ``benchmarks/results/ablation_synthetic.md``
are measured (``benchmarks/rotation_study.py``):

- how invariant a head is when its input map is rotated (the oriented pooling of
  docs/operators.md section 1 with 1x1 patches is exactly invariant to the map's quarter
  turns and flips: they only permute its four orientations);
- how far the backbone's map of a rotated image is from the rotated map of the upright image
  (:func:`equivariance_cosine`);
- what the heads score when given the rotated maps of the upright image in place of the
  rotated image's own (``SSANet.forward_maps``): the model with an equivariant backbone.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

__all__ = [
    "PADDING_MODES",
    "equivariance_cosine",
    "position_cosine",
    "rotate_maps",
    "turn_boxes",
]

#: How :func:`rotate_maps` fills what lies outside the map: zeros, or the nearest edge value.
PADDING_MODES = ("zeros", "border")


def rotate_maps(x: torch.Tensor, angle: float, padding: str = "zeros") -> torch.Tensor:
    """``x [..., H, W]`` turned counter-clockwise by ``angle`` degrees about its centre.

    Multiples of 90 degrees are exact (``torch.rot90``; a quarter turn swaps H and W); any
    other angle resamples bilinearly at the turned positions of the output's pixel centres
    (``align_corners=False``, as torchvision's ``rotate``, which Table 1's
    :class:`~ssanet.data.transforms.Rotate` uses), the size kept, ``padding`` ("zeros" or
    "border") outside the map.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions [..., H, W], got {tuple(x.shape)}")
    if not math.isfinite(angle):
        raise ValueError(f"angle must be finite, got {angle}")
    quarters = angle / 90
    if quarters == round(quarters):
        return torch.rot90(x, int(round(quarters)) % 4, dims=(-2, -1))
    return _resample(x, angle, padding)


def _resample(x: torch.Tensor, angle: float, padding: str) -> torch.Tensor:
    """:func:`rotate_maps` by bilinear resampling, whatever the angle."""
    height, width = x.shape[-2:]
    flat = x.reshape(-1, 1, height, width) if x.dim() == 2 else x.reshape(-1, *x.shape[-3:])
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # The output pixel at (u, v) from the centre (pixels, y down) reads the input at that
    # offset turned clockwise: a counter-clockwise turn of the content. affine_grid's
    # normalized coordinates scale x by 2/W and y by 2/H, hence the aspect factors.
    matrix = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]],
        dtype=flat.dtype if flat.is_floating_point() else torch.float32,
        device=x.device,
    )
    grid = functional.affine_grid(
        matrix.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False
    )
    out = functional.grid_sample(
        flat, grid, mode="bilinear", padding_mode=padding, align_corners=False
    )
    return out.reshape(x.shape)


def position_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ``a`` and ``b [B, C, H, W]`` over the channels at each position,
    averaged over the positions: ``[B]``. A position where either is all zeros counts 0."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"a and b must be [B, C, H, W] of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    return functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean(dim=(-2, -1))


def equivariance_cosine(
    rotated_features: torch.Tensor,
    upright_features: torch.Tensor,
    angle: float,
    padding: str = "border",
) -> torch.Tensor:
    """How near a map of rotated images is to the rotated map of the upright ones: per image,
    :func:`position_cosine` of ``rotated_features`` and ``rotate_maps(upright_features,
    angle, padding)`` (``[B]``; 1 for a backbone that rotates its maps with the image)."""
    return position_cosine(rotated_features, rotate_maps(upright_features, angle, padding))


def turn_boxes(boxes: torch.Tensor, angle: float, size: int) -> torch.Tensor:
    """Boxes ``[..., 4]`` (x1, y1, x2, y2) in a ``size`` x ``size`` image, where they lie once
    the image is turned counter-clockwise by ``angle``, a multiple of 90 degrees (as
    :func:`rotate_maps` turns it): the point (x, y) goes to (y, size - x) a quarter turn."""
    quarters = angle / 90
    if quarters != round(quarters):
        raise ValueError(f"angle must be a multiple of 90 degrees, got {angle}")
    for _ in range(int(round(quarters)) % 4):
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([y1, size - x2, y2, size - x1], dim=-1)
    return boxes
