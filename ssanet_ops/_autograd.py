"""Autograd for the operators: each backward calls the op's own backward kernel.

Every backward op is linear in the incoming gradient, so it has its own autograd too (double
backward: gradient penalties, Hessian-vector products): the adjoint of a backward op is the
forward op or a gather, listed with each op below. Without these registrations torch would
only warn once and return zero second-order gradients.
"""

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


def oriented_pool_gather(
    x: torch.Tensor,
    argmax: torch.Tensor,
    patch_size: list[int],
    grid_size: int,
    stride: list[int],
) -> torch.Tensor:
    """The elements of ``x [B, C, H, W]`` that won each maximum of oriented_pool (the forward's
    argmax), laid out as its output ``[B, 4, G*L]``: the adjoint of the backward op, which
    scatters ``[B, 4, G*L]`` back to those elements (docs/operators.md section 1)."""
    batch, channels, height, width = x.shape
    patch_h, patch_w = patch_size
    stride_h, stride_w = stride
    grid = grid_size
    device = x.device
    # Position l = (c*h + dy)*w + dx inside a patch, as (c, dy, dx) per l: [L] each.
    c = torch.arange(channels, device=device).view(-1, 1, 1)
    dy = torch.arange(patch_h, device=device).view(1, -1, 1)
    dx = torch.arange(patch_w, device=device).view(1, 1, -1)
    c, dy, dx = (t.expand(channels, patch_h, patch_w).reshape(-1) for t in (c, dy, dx))
    k = torch.arange(grid, device=device).view(-1, 1)  # grid line k: [G, 1]
    winner = argmax.long()  # [B, 2, G, L]
    # p_k[l] was won by patch (k, j = winner[:, 0]), q_k[l] by patch (i = winner[:, 1], k).
    row_y, row_x = k * stride_h + dy, winner[:, 0] * stride_w + dx
    column_y, column_x = winner[:, 1] * stride_h + dy, k * stride_w + dx
    rows = (c * height + row_y) * width + row_x  # [B, G, L]
    columns = (c * height + column_y) * width + column_x
    index = torch.stack([rows, columns], dim=1).reshape(batch, -1)
    won = x.reshape(batch, -1).gather(1, index).view(argmax.shape)  # [B, 2, G, L]
    # Orientations 0, 1 and, with the grid lines reversed, 2, 3.
    return torch.cat([won, won.flip(2)], dim=1).reshape(batch, 4, -1)


def _oriented_pool_backward_setup_context(ctx, inputs, output):
    _grad_output, argmax, patch_size, grid_size, stride, *_input_shape = inputs
    ctx.save_for_backward(argmax)
    ctx.geometry = (patch_size, grid_size, stride)


def _oriented_pool_double_backward(ctx, grad_grad_x):
    (argmax,) = ctx.saved_tensors
    grad_grad_output = oriented_pool_gather(grad_grad_x, argmax, *ctx.geometry)
    return grad_grad_output, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "ssanet_ops::_oriented_pool_backward",
    _oriented_pool_double_backward,
    setup_context=_oriented_pool_backward_setup_context,
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
            grad_output,
            boxes,
            ctx.scales,
            centers,
            *ctx.sampling,
            *ctx.input_shape,
            torch.are_deterministic_algorithms_enabled(),
        )
    return grad_input, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "ssanet_ops::multiscale_roi_crop",
    _multiscale_roi_crop_backward,
    setup_context=_multiscale_roi_crop_setup_context,
)


def _multiscale_roi_crop_backward_setup_context(ctx, inputs, output):
    _grad_output, boxes, scales, centers, *sampling_and_shape = inputs
    ctx.save_for_backward(boxes, centers)
    ctx.scales = scales
    ctx.sampling = sampling_and_shape[:5]  # output_size .. clip; the input shape is not needed


def _multiscale_roi_crop_double_backward(ctx, grad_grad_input):
    # The backward is the transpose of the (linear) crop, so its own backward is the crop.
    boxes, centers = ctx.saved_tensors
    grad_grad_output = None
    if ctx.needs_input_grad[0]:
        grad_grad_output = torch.ops.ssanet_ops.multiscale_roi_crop(
            grad_grad_input, boxes, ctx.scales, centers, *ctx.sampling
        )
    return (grad_grad_output, *[None] * 13)


torch.library.register_autograd(
    "ssanet_ops::_multiscale_roi_crop_backward",
    _multiscale_roi_crop_double_backward,
    setup_context=_multiscale_roi_crop_backward_setup_context,
)


# scale_correlation / scale_align (docs/operators.md section 3, eq. 8): scale_correlation's d phi
# and d weight each have their own backward op, so an input that needs no gradient costs
# nothing; scale_align's one backward op gives d phi, d weight and d bias (the sum of the logits'
# gradient over the proposals) together, each only where its flag asks for it.


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
    # needs_input_grad has no entry for a bias of None.
    needs_bias = len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2]
    needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], needs_bias)
    grads = torch.ops.ssanet_ops._scale_align_backward(grad_logits, shift, phi, weight, *needs)
    return tuple(grad if need else None for grad, need in zip(grads, needs, strict=True))


torch.library.register_autograd(
    "ssanet_ops::scale_align",
    _scale_align_backward,
    setup_context=_scale_align_setup_context,
)


# The backward ops of scale_correlation / scale_align are bilinear in (grad, other input), and
# their partial derivatives are the same family of ops (docs/operators.md section 3, eqs. 7-8):
#   _scale_correlation_backward_phi(g, W)[n, j, d] = sum_{c, r} g[n, c, r] W[c, (j + r) % S, d]
#     d/d g = scale_correlation(gg, W),  d/d W = _scale_correlation_backward_weight(g, gg);
#   _scale_correlation_backward_weight(g, P)[c, m, d] = sum_{n, r} g[n, c, r] P[n, (m - r) % S, d]
#     d/d g = scale_correlation(P, gg),  d/d P = _scale_correlation_backward_phi(g, gg);
# and for scale_align the same at the saved shift r* only: d/d g is the correlation at r*. Its
# one op gives both (and d bias = sum over n of g, whose adjoint spreads gg over n), so the
# partial derivatives of d phi and d weight to W and P are one call of it too.


def _scale_backward_setup_context(ctx, inputs, output):
    *grad_and_shift, other = inputs
    ctx.save_for_backward(*grad_and_shift, other)


def _at_shift(corr, shift):
    return corr.gather(-1, shift.unsqueeze(-1)).squeeze(-1)


def _scale_correlation_backward_phi_backward(ctx, grad_grad_phi):
    grad, weight = ctx.saved_tensors
    ops = torch.ops.ssanet_ops
    grad_grad = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad = ops.scale_correlation(grad_grad_phi, weight)
    if ctx.needs_input_grad[1]:
        grad_weight = ops._scale_correlation_backward_weight(grad, grad_grad_phi)
    return grad_grad, grad_weight


def _scale_correlation_backward_weight_backward(ctx, grad_grad_weight):
    grad, phi = ctx.saved_tensors
    ops = torch.ops.ssanet_ops
    grad_grad = grad_phi = None
    if ctx.needs_input_grad[0]:
        grad_grad = ops.scale_correlation(phi, grad_grad_weight)
    if ctx.needs_input_grad[1]:
        grad_phi = ops._scale_correlation_backward_phi(grad, grad_grad_weight)
    return grad_grad, grad_phi


def _scale_align_backward_setup_context(ctx, inputs, output):
    grad, shift, phi, weight, *needs = inputs
    ctx.save_for_backward(grad, shift, phi, weight)
    ctx.needs = needs


def _scale_align_backward_backward(ctx, grad_grad_phi, grad_grad_weight, grad_grad_bias):
    # The outputs not asked for are empty: their gradients are ignored.
    grad, shift, phi, weight = ctx.saved_tensors
    gg_phi, gg_weight, gg_bias = (
        gg if need and gg is not None else None
        for gg, need in zip(
            (grad_grad_phi, grad_grad_weight, grad_grad_bias), ctx.needs, strict=True
        )
    )
    ops = torch.ops.ssanet_ops
    grad_grad = grad_phi = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad = torch.zeros_like(grad)
        if gg_phi is not None:
            grad_grad = grad_grad + _at_shift(ops.scale_correlation(gg_phi, weight), shift)
        if gg_weight is not None:
            grad_grad = grad_grad + _at_shift(ops.scale_correlation(phi, gg_weight), shift)
        if gg_bias is not None:
            grad_grad = grad_grad + gg_bias.unsqueeze(-2)
    # d/d phi is the backward's d phi with gg_weight in the place of weight, and d/d weight its
    # d weight with gg_phi in the place of phi: one _scale_align_backward call (the saved input
    # where one is absent, and not read then).
    want_phi = ctx.needs_input_grad[2] and gg_weight is not None
    want_weight = ctx.needs_input_grad[3] and gg_phi is not None
    if want_phi or want_weight:
        grad_phi, grad_weight, _ = ops._scale_align_backward(
            grad,
            shift,
            gg_phi if gg_phi is not None else phi.detach(),
            gg_weight if gg_weight is not None else weight.detach(),
            want_phi,
            want_weight,
            False,
        )
    return (
        grad_grad,
        None,
        grad_phi if want_phi else None,
        grad_weight if want_weight else None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "ssanet_ops::_scale_align_backward",
    _scale_align_backward_backward,
    setup_context=_scale_align_backward_setup_context,
)


for _name, _backward in (
    ("_scale_correlation_backward_phi", _scale_correlation_backward_phi_backward),
    ("_scale_correlation_backward_weight", _scale_correlation_backward_weight_backward),
):
    torch.library.register_autograd(
        f"ssanet_ops::{_name}", _backward, setup_context=_scale_backward_setup_context
    )
