"""The tiled deterministic backward of multiscale_roi_crop on CUDA (issue 24): its blocks take
tiles of channels x rows x columns of one image, find that image's boxes themselves (up to 256
boxes; with more, crop_setup_kernel groups them) and stage the candidates' output-gradient rows
in shared memory, reading from global memory the rows too many for the tile. Each case is sized
to reach one of these paths; the result must match the reference (roi_align's composition on
the CPU) and repeat bit for bit."""

from __future__ import annotations

import pytest
import torch

import ssanet_ops
from ssanet_ops import reference

from .conftest import requires_torchvision
from .test_roi_crop import SCALES, deterministic_algorithms, random_boxes, tolerances

backward = torch.ops.ssanet_ops._multiscale_roi_crop_backward


def gather(grad, boxes, output_size, batch, channels, height, width, **settings):
    """The deterministic CUDA backward, called twice: the results must be equal bit for bit."""
    arguments = (
        grad,
        boxes,
        SCALES,
        settings.get("centers"),
        list(output_size),
        settings.get("spatial_scale", 1.0),
        settings.get("sampling_ratio", -1),
        settings.get("aligned", True),
        settings.get("clip", True),
        batch,
        channels,
        height,
        width,
    )
    first = backward(*arguments, True)
    assert torch.equal(first, backward(*arguments, True))
    return first


def expected_gradient(grad, boxes, output_size, batch, channels, height, width, **settings):
    """The gradient of roi_align's composition (ssanet_ops.reference) on the CPU, in float64 for
    float64 boxes, else in float32 (the candidates' type in the kernels)."""
    dtype = boxes.dtype
    x = torch.zeros(batch, channels, height, width, dtype=dtype, requires_grad=True)
    centers = settings.get("centers")
    out = reference.multiscale_roi_crop(
        x,
        boxes.cpu(),
        output_size,
        SCALES,
        centers=None if centers is None else centers.cpu(),
        spatial_scale=settings.get("spatial_scale", 1.0),
        sampling_ratio=settings.get("sampling_ratio", -1),
        aligned=settings.get("aligned", True),
        clip=settings.get("clip", True),
    )
    (result,) = torch.autograd.grad(out, x, grad.cpu().to(dtype))
    return result


def image_boxes(batch: int, height: float, width: float, empty: tuple[int, ...] = ()):
    """random_boxes (six kinds an image, partly outside included), without the images `empty`."""
    boxes = random_boxes(batch, height, width)
    keep = torch.ones(boxes.shape[0], dtype=torch.bool)
    for b in empty:
        keep &= boxes[:, 0] != b
    return boxes[keep]


# (channels, height, width, output size): a whole small map per block, several channel chunks
# (50 channels of 10 x 10: 20 a block); several row bands (80 columns: 25 rows a band); columns
# over a block's 2048 elements (two column chunks); outputs too many for the staging tile (100 x 90
# rows of a point box: read from global memory).
SHAPES = [
    (5, 24, 20, (7, 7)),
    (50, 10, 10, (5, 4)),
    (2, 60, 80, (28, 28)),
    (1, 3, 2100, (2, 9)),
    (1, 24, 20, (100, 90)),
]


@requires_torchvision
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_matches_reference(cuda_device, shape, dtype):
    channels, height, width, output_size = shape
    batch = 3
    boxes_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    boxes = image_boxes(batch, height, width, empty=(1,)).to(cuda_device, boxes_dtype)
    grad = torch.randn(boxes.shape[0], len(SCALES), channels, *output_size).to(cuda_device, dtype)
    result = gather(grad, boxes, output_size, batch, channels, height, width)
    expected = expected_gradient(grad, boxes, output_size, batch, channels, height, width)
    assert result.dtype == dtype
    assert torch.all(result[1] == 0)  # image 1 has no boxes
    if dtype == torch.bfloat16:
        # float32 sums rounded once to bfloat16: within a rounding of the largest magnitude.
        scale = expected.abs().amax().item()
        torch.testing.assert_close(result.float(), expected, rtol=1e-2, atol=1e-2 * scale)
    else:
        torch.testing.assert_close(result.cpu(), expected, **tolerances(result))


@requires_torchvision
@pytest.mark.parametrize("given_centres", [False, True])
def test_gather_settings_match_reference(cuda_device, given_centres):
    batch, channels, height, width = 2, 4, 9, 13
    boxes = image_boxes(batch, height * 32, width * 32).to(cuda_device)
    settings = {"spatial_scale": 1 / 32, "sampling_ratio": 2, "aligned": False, "clip": False}
    if given_centres:
        settings["centers"] = torch.tensor([[40.0, 100.0], [300.0, 20.0]], device=cuda_device)
    grad = torch.randn(boxes.shape[0], len(SCALES), channels, 7, 6, device=cuda_device)
    result = gather(grad, boxes, (7, 6), batch, channels, height, width, **settings)
    expected = expected_gradient(grad, boxes, (7, 6), batch, channels, height, width, **settings)
    torch.testing.assert_close(result.cpu(), expected, **tolerances(result))


@requires_torchvision
def test_gather_is_the_same_above_the_shared_memory_boxes(cuda_device):
    # Up to 256 boxes the gather's blocks group them by image themselves; with more,
    # crop_setup_kernel does. Boxes of image 2 do not change images 0 and 1: adding 300 of them
    # takes the other path, and images 0 and 1 must get the same bits.
    batch, channels, height, width = 3, 3, 16, 18
    boxes = image_boxes(2, height, width).to(cuda_device)
    extra = torch.tensor([[2.0, 1.0, 2.0, 9.0, 12.0]], device=cuda_device).repeat(300, 1)
    extra[:, 3:] += torch.rand(300, 2, device=cuda_device) * 4
    many = torch.cat([extra[:150], boxes, extra[150:]])
    assert many.shape[0] > 256
    grad = torch.randn(many.shape[0], len(SCALES), channels, 5, 5, device=cuda_device)
    own = gather(grad[150 : 150 + boxes.shape[0]], boxes, (5, 5), batch, channels, height, width)
    grouped = gather(grad, many, (5, 5), batch, channels, height, width)
    assert torch.equal(own[:2], grouped[:2])
    assert torch.all(own[2] == 0) and grouped[2].abs().sum() > 0
    expected = expected_gradient(grad, many, (5, 5), batch, channels, height, width)
    torch.testing.assert_close(grouped.cpu(), expected, **tolerances(grouped))


def test_gather_agrees_with_the_atomic_backward_through_autograd(cuda_device):
    x = torch.randn(2, 6, 30, 40, device=cuda_device, requires_grad=True)
    boxes = image_boxes(2, 30, 40).to(cuda_device)
    grad = torch.randn(boxes.shape[0], len(SCALES), 6, 11, 9, device=cuda_device)
    (atomic,) = torch.autograd.grad(
        ssanet_ops.multiscale_roi_crop(x, boxes, (11, 9), SCALES), x, grad
    )
    with deterministic_algorithms():
        (gathered,) = torch.autograd.grad(
            ssanet_ops.multiscale_roi_crop(x, boxes, (11, 9), SCALES), x, grad
        )
    torch.testing.assert_close(gathered, atomic, **tolerances(x))
