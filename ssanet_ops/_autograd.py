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
