"""Fake (meta) kernels: output shapes and dtypes without computing, for torch.compile,
torch.export and opcheck."""

from __future__ import annotations

import torch

from .ops import oriented_pool_geometry


@torch.library.register_fake("ssanet_ops::oriented_pool")
def _oriented_pool_fake(x, patch_size, grid_size, stride):
    torch._check(x.dim() == 4, lambda: f"x must be [B, C, H, W], got {x.dim()} dimensions")
    (patch_h, patch_w), grid, _ = oriented_pool_geometry(x.shape, patch_size, grid_size, stride)
    batch, channels = x.shape[:2]
    patch_length = channels * patch_h * patch_w
    out = x.new_empty((batch, 4, grid * patch_length))
    argmax = x.new_empty((batch, 2, grid, patch_length), dtype=torch.uint8)
    return out, argmax


@torch.library.register_fake("ssanet_ops::_oriented_pool_backward")
def _oriented_pool_backward_fake(
    grad_output, argmax, patch_size, grid_size, stride, batch, channels, height, width
):
    torch._check(
        grad_output.device == argmax.device,
        lambda: (
            f"grad_output and argmax must be on one device, got {grad_output.device} "
            f"and {argmax.device}"
        ),
    )
    return grad_output.new_empty((batch, channels, height, width))
