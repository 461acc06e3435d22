"""Autograd for the operators: each backward calls the op's own backward kernel."""

from __future__ import annotations

import torch


def _oriented_pool_setup_context(ctx, inputs, output):
    x, patch_size, grid_size, stride = inputs
    _, argmax = output
    ctx.save_for_backward(argmax)
    ctx.geometry = (patch_size, grid_size, stride)
    ctx.input_shape = x.shape


def _oriented_pool_backward(ctx, grad_output, _grad_argmax):
    (argmax,) = ctx.saved_tensors
    patch_size, grid_size, stride = ctx.geometry
    grad_x = torch.ops.ssanet_ops._oriented_pool_backward(
        grad_output, argmax, patch_size, grid_size, stride, *ctx.input_shape
    )
    return grad_x, None, None, None


torch.library.register_autograd(
    "ssanet_ops::oriented_pool",
    _oriented_pool_backward,
    setup_context=_oriented_pool_setup_context,
)


def _multiscale_roi_crop_setup_context(ctx, inputs, output):
    input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio, aligned, clip = (
        inputs
    )
    ctx.save_for_backward(boxes, centers)
    ctx.scales = scales
    ctx.sampling = (output_size, spatial_scale, sampling_ratio, aligned, clip)
    ctx.input_shape = input.shape


def _multiscale_roi_crop_backward(ctx, grad_output):
    # SPEC.md section 2: the gradient goes to input only, as in roi_align.
    boxes, centers = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.ssanet_ops._multiscale_roi_crop_backward(
            grad_output, boxes, ctx.scales, centers, *ctx.sampling, *ctx.input_shape
        )
    return grad_input, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "ssanet_ops::multiscale_roi_crop",
    _multiscale_roi_crop_backward,
    setup_context=_multiscale_roi_crop_setup_context,
)
