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
    # docs/operators.md section 2: the gradient goes to input only, as in roi_align.
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


# scale_correlation / scale_align (docs/operators.md section 3, eq. 8): d phi and d weight each
# have their own backward op, so an input that needs no gradient costs nothing; d bias is the sum
# of the logits' gradient over the proposals.


def _scale_correlation_setup_context(ctx, inputs, output):
    phi, weight = inputs
    ctx.save_for_backward(phi, weight)


def _scale_correlation_backward(ctx, grad_corr):
    phi, weight = ctx.saved_tensors
    grad_phi = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_phi = torch.ops.ssanet_ops._scale_correlation_backward_phi(grad_corr, weight)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.ops.ssanet_ops._scale_correlation_backward_weight(grad_corr, phi)
    return grad_phi, grad_weight


torch.library.register_autograd(
    "ssanet_ops::scale_correlation",
    _scale_correlation_backward,
    setup_context=_scale_correlation_setup_context,
)


def _scale_align_setup_context(ctx, inputs, output):
    phi, weight, _bias = inputs
    _, shift = output
    ctx.save_for_backward(phi, weight, shift)


def _scale_align_backward(ctx, grad_logits, _grad_shift):
    phi, weight, shift = ctx.saved_tensors
    grad_phi = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_phi = torch.ops.ssanet_ops._scale_align_backward_phi(grad_logits, shift, weight)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.ops.ssanet_ops._scale_align_backward_weight(grad_logits, shift, phi)
    # needs_input_grad has no entry for a bias of None.
    if len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2]:
        grad_bias = grad_logits.sum(dim=-2)
    return grad_phi, grad_weight, grad_bias


torch.library.register_autograd(
    "ssanet_ops::scale_align",
    _scale_align_backward,
    setup_context=_scale_align_setup_context,
)
