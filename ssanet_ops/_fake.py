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


@torch.library.register_fake("ssanet_ops::scale_candidates")
def _scale_candidates_fake(boxes, scales, centers, image_height, image_width, clip):
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 5,
        lambda: f"boxes must be [K, 5], got shape {tuple(boxes.shape)}",
    )
    return boxes.new_empty((boxes.shape[0], len(scales), 4))


@torch.library.register_fake("ssanet_ops::multiscale_roi_crop")
def _multiscale_roi_crop_fake(
    input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio, aligned, clip
):
    torch._check(input.dim() == 4, lambda: f"input must be [B, C, H, W], got {input.dim()} dims")
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 5,
        lambda: f"boxes must be [K, 5], got shape {tuple(boxes.shape)}",
    )
    out_h, out_w = output_size
    return input.new_empty((boxes.shape[0], len(scales), input.shape[1], out_h, out_w))


@torch.library.register_fake("ssanet_ops::_multiscale_roi_crop_backward")
def _multiscale_roi_crop_backward_fake(
    grad_output,
    boxes,
    scales,
    centers,
    output_size,
    spatial_scale,
    sampling_ratio,
    aligned,
    clip,
    batch,
    channels,
    height,
    width,
):
    torch._check(
        grad_output.dim() == 5,
        lambda: f"grad_output must be [K, S, C, oh, ow], got {grad_output.dim()} dims",
    )
    return grad_output.new_empty((batch, channels, height, width))
