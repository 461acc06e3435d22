"""multiscale_roi_crop's CUDA forward on NCHW input, and on channels-last input with few channels
(fewer than a warp, a pixel under 128 bytes), stages the map region each block samples in
shared memory (issue 24: whole sectors per load request); only where the values are read from
changes, not the arithmetic. Both against a channels-last input of many channels (40 more),
which the same kernel samples from global memory directly, bit for bit (its first channels),
and against the CPU reference to the tolerances of test_roi_crop.py, on the shapes of both
benchmark workloads, every floating dtype, boxes partly outside the map, both kinds of
sampling grid, strided and unaligned input, and regions too large for the stage (read
directly)."""

from __future__ import annotations

import pytest
import torch

import ssanet_ops
from ssanet_ops import reference
from ssanet_ops.testing import simulate_cuda

from .conftest import requires_simulator, requires_torchvision
from .test_roi_crop import SCALES, random_boxes

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (batch, channels, height, width, output size, spatial_scale): the image crops (a few
# channels, large crops, several stages of output rows per candidate) and the feature crops
# (many channels of a small map, the whole plane in the stage).
SHAPES = {
    "image": (2, 3, 40, 52, (24, 20), 1.0),
    "feature": (2, 40, 14, 14, 7, 1 / 32),
}


def cpu_tolerance(dtype: torch.dtype) -> dict:
    """The CUDA kernels against the CPU reference, as test_roi_crop.py allows them: FMAs and
    other summation orders in float32, the output's rounding in float16 and bfloat16."""
    return {
        torch.float64: {"rtol": 1e-10, "atol": 1e-10},
        torch.float32: {"rtol": 1e-4, "atol": 1e-4},
        torch.float16: {"rtol": 2e-2, "atol": 2e-2},
        torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
    }[dtype]


def crop(x, boxes, shape, sampling_ratio, aligned=True):
    _, _, _, _, output_size, spatial_scale = shape
    return ssanet_ops.multiscale_roi_crop(
        x,
        boxes,
        output_size,
        SCALES,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )


def check_against_direct_reads(x: torch.Tensor, boxes, shape, sampling_ratio, aligned=True):
    """x (NCHW, any strides) cropped in the simulator, and x channels-last, dense and with
    pixels 40 values apart, equal bitwise the first channels of the crop of a channels-last
    input of 40 more channels (read directly, a warp along its channels), and equal the CPU
    reference to the tolerance."""
    boxes = boxes.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    channels = x.shape[1]
    wide = torch.randn(x.shape[0], channels + 40, *x.shape[2:]).to(x.dtype)
    wide[:, :channels] = x
    wide = wide.contiguous(memory_format=torch.channels_last)
    with simulate_cuda():
        staged = crop(x, boxes, shape, sampling_ratio, aligned)
        last = crop(x.contiguous(memory_format=torch.channels_last), boxes, shape,
                    sampling_ratio, aligned)  # fmt: skip
        pixels = crop(wide[:, :channels], boxes, shape, sampling_ratio, aligned)
        direct = crop(wide, boxes, shape, sampling_ratio, aligned)[:, :, :channels]
    torch.testing.assert_close(staged, direct, rtol=0, atol=0)
    torch.testing.assert_close(last, direct, rtol=0, atol=0)
    torch.testing.assert_close(pixels, direct, rtol=0, atol=0)
    # The reduced types against float32 (test_roi_crop.test_cuda_reduced_precision).
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    expected = reference.multiscale_roi_crop(
        wide,
        boxes.to(wide.dtype),
        shape[4],
        SCALES,
        spatial_scale=shape[5],
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    torch.testing.assert_close(staged.to(wide.dtype), expected, **cpu_tolerance(x.dtype))


@requires_simulator
@requires_torchvision
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workload", sorted(SHAPES))
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_staged_nchw_forward_matches_direct_reads(dtype, workload, sampling_ratio, aligned):
    shape = SHAPES[workload]
    batch, channels, height, width, _, spatial_scale = shape
    x = torch.randn(batch, channels, height, width).to(dtype)
    # Boxes inside the image, partly outside it, sub-pixel, points, lines and the whole image.
    boxes = random_boxes(batch, height / spatial_scale, width / spatial_scale)
    check_against_direct_reads(x, boxes, shape, sampling_ratio, aligned)


@requires_simulator
@requires_torchvision
@pytest.mark.parametrize("dtype", DTYPES)
def test_staged_forward_on_strided_and_unaligned_rows(dtype):
    shape = SHAPES["image"]
    batch, channels, height, width, _, spatial_scale = shape
    boxes = random_boxes(batch, height / spatial_scale, width / spatial_scale)
    x = torch.randn(batch, channels, height, width).to(dtype)
    # Columns two values apart: no whole-sector rows, each tap's column staged on its own.
    strided = torch.zeros(batch, channels, height, 2 * width, dtype=dtype)[..., ::2]
    strided.copy_(x)
    check_against_direct_reads(strided, boxes, shape, sampling_ratio=-1)
    # Rows of an odd length starting one value into the storage: each row's sectors begin at
    # another column.
    unaligned = torch.zeros(batch, channels, height, width + 1, dtype=dtype)[..., 1:]
    unaligned.copy_(x)
    check_against_direct_reads(unaligned, boxes, shape, sampling_ratio=2)
    # And a map whose planes are not contiguous (channels two planes apart).
    planes = torch.zeros(batch, 2 * channels, height, width, dtype=dtype)[:, ::2]
    planes.copy_(x)
    check_against_direct_reads(planes, boxes, shape, sampling_ratio=-1)


@requires_simulator
@requires_torchvision
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regions_larger_than_the_stage_are_read_directly(dtype):
    # A candidate spanning a 200 x 240 map shrunk to 2 x 2: one channel of its region (every
    # row of the map for a block of both output rows) does not fit the 48 KiB of shared memory.
    shape = (1, 5, 200, 240, 2, 1.0)
    x = torch.randn(1, 5, 200, 240).to(dtype)
    boxes = torch.tensor([[0.0, 0.0, 0.0, 240.0, 200.0], [0.0, 100.0, 50.0, 104.0, 53.0]])
    check_against_direct_reads(x, boxes, shape, sampling_ratio=-1)
    check_against_direct_reads(x, boxes, shape, sampling_ratio=1)


@requires_simulator
@requires_torchvision
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_few_channels_last_forward_matches_direct_reads(dtype, channels):
    # The image crops' shape with 1, 3 and 4 channels: channels-last staged (a 1-channel map's
    # channels-last strides are its NCHW ones, staged as NCHW).
    shape = (2, channels, *SHAPES["image"][2:])
    batch, _, height, width, _, spatial_scale = shape
    x = torch.randn(batch, channels, height, width).to(dtype)
    boxes = random_boxes(batch, height / spatial_scale, width / spatial_scale)
    check_against_direct_reads(x, boxes, shape, sampling_ratio=-1)
    check_against_direct_reads(x, boxes, shape, sampling_ratio=2, aligned=False)
