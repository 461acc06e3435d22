"""Fake (meta) kernels: output shapes and dtypes without computing, for torch.compile,
torch.export and opcheck."""

from __future__ import annotations

import torch

from ._validation import oriented_pool_geometry


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
    deterministic,
):
    torch._check(
        grad_output.dim() == 5,
        lambda: f"grad_output must be [K, S, C, oh, ow], got {grad_output.dim()} dims",
    )
    return grad_output.new_empty((batch, channels, height, width))


def _check_scale_align_fake(phi, weight):
    torch._check(
        phi.dim() in (3, 4) and weight.dim() == phi.dim(),
        lambda: (
            f"phi and weight must be [G?, N, S, D] and [G?, C, S, D], got shapes "
            f"{tuple(phi.shape)} and {tuple(weight.shape)}"
        ),
    )
    torch._check(
        phi.shape[:-3] == weight.shape[:-3] and phi.shape[-2:] == weight.shape[-2:],
        lambda: (
            f"phi and weight must agree in G, S and D, got shapes {tuple(phi.shape)} and "
            f"{tuple(weight.shape)}"
        ),
    )
    torch._check(phi.dtype == weight.dtype, lambda: "phi and weight must have one dtype")


@torch.library.register_fake("ssanet_ops::scale_correlation")
def _scale_correlation_fake(phi, weight):
    _check_scale_align_fake(phi, weight)
    return phi.new_empty((*phi.shape[:-2], weight.shape[-3], phi.shape[-2]))


@torch.library.register_fake("ssanet_ops::scale_align")
def _scale_align_fake(phi, weight, bias=None):
    _check_scale_align_fake(phi, weight)
    shape = (*phi.shape[:-2], weight.shape[-3])
    return phi.new_empty(shape), phi.new_empty(shape, dtype=torch.int64)


def _scale_align_grad_fake(grad, other, rows):
    # d phi / d weight: [G?, rows, S, D] with S and D of the other saved input.
    return grad.new_empty((*other.shape[:-3], rows, *other.shape[-2:]))


@torch.library.register_fake("ssanet_ops::_scale_correlation_backward_phi")
def _scale_correlation_backward_phi_fake(grad, weight):
    return _scale_align_grad_fake(grad, weight, grad.shape[-3])


@torch.library.register_fake("ssanet_ops::_scale_correlation_backward_weight")
def _scale_correlation_backward_weight_fake(grad, phi):
    return _scale_align_grad_fake(grad, phi, grad.shape[-2])


@torch.library.register_fake("ssanet_ops::_scale_align_backward")
def _scale_align_backward_fake(grad, shift, phi, weight, phi_grad, weight_grad, bias_grad):
    # (d phi, d weight, d bias [G?, C]), an empty [0] tensor for each not asked for.
    return (
        _scale_align_grad_fake(grad, weight, grad.shape[-2]) if phi_grad else grad.new_empty(0),
        _scale_align_grad_fake(grad, phi, grad.shape[-1]) if weight_grad else grad.new_empty(0),
        grad.new_empty(weight.shape[:-2]) if bias_grad else grad.new_empty(0),
    )
