"""scale_candidates and multiscale_roi_crop with the scale factors in a tensor.

The C++ schemas take the factors as ``float[]``. Reading a tensor into a list while
torch.compile traces is a graph break, so a tensor of scales goes, unread, to these Python
custom ops, which torch.compile and torch.export keep whole in the graph (their fake kernels
need only the tensor's length); the values are read and checked when the op runs, then the C++
op is called. The crop's backward and double backward are the same pair of ops again
(``_autograd.py``: the backward of the crop is its transpose, whose backward is the crop).

The tensor lives on the CPU (``_validation.scale_tensor``): the factors reach the kernels by
value, so a CUDA op reads them without waiting for the device.
"""

from __future__ import annotations

import torch

from ._validation import scale_list

# The ops of this module: they only read the scales and call the C++ ops, so
# ssanet_ops.testing.simulate_cuda() keeps them and routes the C++ ops they call.
OPS = (
    "_scale_candidates_tensor_scales",
    "_multiscale_roi_crop_tensor_scales",
    "_multiscale_roi_crop_backward_tensor_scales",
)


@torch.library.custom_op("ssanet_ops::_scale_candidates_tensor_scales", mutates_args=())
def scale_candidates_tensor_scales(
    boxes: torch.Tensor,
    scales: torch.Tensor,
    centers: torch.Tensor | None,
    image_height: float,
    image_width: float,
    clip: bool,
) -> torch.Tensor:
    return torch.ops.ssanet_ops.scale_candidates(
        boxes, scale_list(scales), centers, image_height, image_width, clip
    )


@scale_candidates_tensor_scales.register_fake
def _(boxes, scales, centers, image_height, image_width, clip):
    return boxes.new_empty((boxes.shape[0], scales.shape[0], 4))


@torch.library.custom_op("ssanet_ops::_multiscale_roi_crop_tensor_scales", mutates_args=())
def multiscale_roi_crop_tensor_scales(
    input: torch.Tensor,
    boxes: torch.Tensor,
    scales: torch.Tensor,
    centers: torch.Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clip: bool,
) -> torch.Tensor:
    return torch.ops.ssanet_ops.multiscale_roi_crop(
        input,
        boxes,
        scale_list(scales),
        centers,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        clip,
    )


@multiscale_roi_crop_tensor_scales.register_fake
def _(input, boxes, scales, centers, output_size, spatial_scale, sampling_ratio, aligned, clip):
    out_h, out_w = output_size
    return input.new_empty((boxes.shape[0], scales.shape[0], input.shape[1], out_h, out_w))


@torch.library.custom_op("ssanet_ops::_multiscale_roi_crop_backward_tensor_scales", mutates_args=())
def multiscale_roi_crop_backward_tensor_scales(
    grad_output: torch.Tensor,
    boxes: torch.Tensor,
    scales: torch.Tensor,
    centers: torch.Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clip: bool,
    batch: int,
    channels: int,
    height: int,
    width: int,
    deterministic: bool,
) -> torch.Tensor:
    return torch.ops.ssanet_ops._multiscale_roi_crop_backward(
        grad_output,
        boxes,
        scale_list(scales),
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
    )


@multiscale_roi_crop_backward_tensor_scales.register_fake
def _(grad_output, boxes, scales, centers, output_size, spatial_scale, sampling_ratio, aligned,
      clip, batch, channels, height, width, deterministic):  # fmt: skip
    return grad_output.new_empty((batch, channels, height, width))


def _crop_setup_context(ctx, inputs, output):
    input, boxes, scales, centers, *sampling = inputs
    ctx.save_for_backward(boxes, scales, centers)
    ctx.sampling = sampling  # output_size, spatial_scale, sampling_ratio, aligned, clip
    ctx.input_shape = input.shape


def _crop_backward(ctx, grad_output):
    boxes, scales, centers = ctx.saved_tensors
    grad_input = multiscale_roi_crop_backward_tensor_scales(
        grad_output,
        boxes,
        scales,
        centers,
        *ctx.sampling,
        *ctx.input_shape,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_input, None, None, None, None, None, None, None, None


def _crop_backward_setup_context(ctx, inputs, output):
    _grad_output, boxes, scales, centers, *sampling_and_shape = inputs
    ctx.save_for_backward(boxes, scales, centers)
    ctx.sampling = sampling_and_shape[:5]


def _crop_double_backward(ctx, grad_grad_input):
    boxes, scales, centers = ctx.saved_tensors
    grad_grad_output = multiscale_roi_crop_tensor_scales(
        grad_grad_input, boxes, scales, centers, *ctx.sampling
    )
    return (grad_grad_output, *[None] * 13)


multiscale_roi_crop_tensor_scales.register_autograd(
    _crop_backward, setup_context=_crop_setup_context
)
multiscale_roi_crop_backward_tensor_scales.register_autograd(
    _crop_double_backward, setup_context=_crop_backward_setup_context
)
