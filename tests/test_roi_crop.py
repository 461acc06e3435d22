"""scale_factors, scale_candidates and multiscale_roi_crop (docs/operators.md section 2) against
torchvision.ops.roi_align on the reference candidates, hand-made geometry, gradcheck and
opcheck."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

import ssanet_ops
from ssanet_ops import reference
from ssanet_ops.testing import simulate_cuda, simulating

from .conftest import requires_cuda, requires_simulator, requires_torchvision

SCALES = ssanet_ops.scale_factors(1.3, 5)


def roi_align(*args, **kwargs) -> torch.Tensor:
    """``torchvision.ops.roi_align``, imported by the tests that use it (requires_torchvision):
    torchvision is optional."""
    from torchvision.ops import roi_align

    return roi_align(*args, **kwargs)


def random_boxes(batch: int, image_height: float, image_width: float, dtype=torch.float32):
    """[K, 5] boxes of every kind the op must handle, a few per image: inside the image, partly
    outside it, smaller than a pixel, zero-area (a point and a line), and the whole image."""
    rows = []
    for b in range(batch):
        corner = torch.rand(2) * torch.tensor([image_width, image_height]) * 0.7
        size = (0.1 + torch.rand(2) * 0.4) * torch.tensor([image_width, image_height])
        rows.append([b, *corner.tolist(), *(corner + size).tolist()])  # inside
        outside = torch.tensor([-0.3 * image_width, -0.2 * image_height])
        rows.append([b, *outside.tolist(), 0.4 * image_width, 1.1 * image_height])  # partly out
        tiny = torch.rand(2) * torch.tensor([image_width, image_height]) * 0.9
        rows.append([b, *tiny.tolist(), *(tiny + torch.rand(2) * 0.8).tolist()])  # sub-pixel
        point = (torch.rand(2) * torch.tensor([image_width, image_height])).tolist()
        rows.append([b, *point, *point])  # zero area, a point
        rows.append([b, point[0], 0.1 * image_height, point[0], 0.8 * image_height])  # a line
        rows.append([b, 0.0, 0.0, image_width, image_height])  # the whole image
    return torch.tensor(rows, dtype=dtype)


def as_list(boxes: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [boxes[boxes[:, 0] == b, 1:] for b in range(batch)]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """torch.use_deterministic_algorithms(enabled) for the block: on CUDA it selects the gather
    backward instead of the atomic one."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def runs_cuda_kernels(device: torch.device) -> bool:
    """Whether ops on `device` run the CUDA kernels: on a GPU, or in the simulator."""
    return device.type == "cuda" or simulating()


def tolerances(x: torch.Tensor) -> dict:
    """Against the reference (roi_align on the CPU), for the dtype and device of `x`."""
    if x.dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10}
    if runs_cuda_kernels(x.device):
        # The CUDA kernels contract the weighted sums' a*b + c into FMAs (not the sample
        # positions: common/bilinear.h), and sum in other orders; in float32 that shows in the
        # fifth digit.
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 1e-5, "atol": 1e-5}


# ---- scale_factors ----


def test_scale_factors_are_powers_of_alpha_around_one():
    assert ssanet_ops.scale_factors(2.0, 5) == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert ssanet_ops.scale_factors(1.5, 1) == [1.0]
    factors = ssanet_ops.scale_factors(1.3, 7)
    assert factors[3] == 1.0
    for low, high in zip(factors, factors[1:], strict=False):
        assert math.isclose(high / low, 1.3)


@pytest.mark.parametrize("alpha, S", [(1.2, 4), (1.2, 0), (0.0, 3), (-1.0, 3), (math.inf, 3)])
def test_scale_factors_rejects_bad_arguments(alpha, S):
    with pytest.raises(ValueError, match="alpha|S must"):
        ssanet_ops.scale_factors(alpha, S)


# ---- the anchoring rule of docs/operators.md section 2, on hand-made boxes ----


def candidates_of(box, scales, centre, image_size=(100.0, 100.0), clip=False):
    boxes = torch.tensor([[0.0, *box]], dtype=torch.float64)
    centers = torch.tensor([centre], dtype=torch.float64)
    return ssanet_ops.scale_candidates(boxes, scales, image_size, centers, clip)[0].tolist()


def test_growth_keeps_the_farthest_corner_and_shrinking_the_nearest():
    # Box (10, 20)-(30, 60), centre (50, 70) below-right of it: the farthest corner is
    # (x1, y1) = (10, 20), the nearest (x2, y2) = (30, 60).
    grown, same, shrunk = candidates_of((10, 20, 30, 60), [2.0, 1.0, 0.5], (50, 70))
    assert grown == [10, 20, 10 + 2 * 20, 20 + 2 * 40]  # grows towards the centre
    assert same == [10, 20, 30, 60]
    assert shrunk == [30 - 0.5 * 20, 60 - 0.5 * 40, 30, 60]  # shrinks towards (x2, y2)


def test_anchors_follow_the_centre_to_every_side():
    # Centre above-right of the box: farthest corner (x1, y2), nearest (x2, y1).
    grown, shrunk = candidates_of((10, 20, 30, 60), [1.5, 0.5], (80, 0))
    assert grown == [10, 60 - 1.5 * 40, 10 + 1.5 * 20, 60]
    assert shrunk == [30 - 0.5 * 20, 20, 30, 20 + 0.5 * 40]


def test_ties_take_the_first_corner():
    # Centre at the box's centre: all corners tie, psi = eta = (x1, y1).
    grown, shrunk = candidates_of((10, 20, 30, 60), [2.0, 0.5], (20, 40))
    assert grown == [10, 20, 50, 100]
    assert shrunk == [10, 20, 20, 40]


def numpy_anchor_sides(rois: torch.Tensor, centers: torch.Tensor | None = None) -> dict:
    """docs/operators.md section 2's anchor rule, computed independently in float64 numpy: for
    each box, whether psi and eta sit at x2 (y2). 2c is 2 * the given centre, or the mean over the
    image's boxes of (x1 + x2, y1 + y2), summed one box at a time in box order."""
    rows = rois.cpu().numpy().astype(np.float64)
    sum_x, sum_y = rows[:, 1] + rows[:, 3], rows[:, 2] + rows[:, 4]
    images = rows[:, 0].astype(np.int64)
    twice = np.empty((len(rows), 2))
    for k, image in enumerate(images):
        if centers is not None:
            twice[k] = 2 * centers[image].cpu().numpy().astype(np.float64)
            continue
        total_x = total_y = np.float64(0)
        members = 0
        for j in range(len(rows)):
            if images[j] == image:
                total_x, total_y, members = total_x + sum_x[j], total_y + sum_y[j], members + 1
        twice[k] = (total_x / members, total_y / members)
    return {
        "psi_x2": sum_x > twice[:, 0],
        "psi_y2": sum_y > twice[:, 1],
        "eta_x2": sum_x < twice[:, 0],
        "eta_y2": sum_y < twice[:, 1],
    }


def kept_sides(rois: torch.Tensor, candidates: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For [K, 4] unclipped candidates of a factor other than 1 and boxes of non-zero size:
    whether each kept its box's x2 (else x1) and y2 (else y1), the anchor corner's sides."""
    box = rois[:, 1:].cpu()
    candidates = candidates.cpu()
    at_x2, at_y2 = candidates[:, 2] == box[:, 2], candidates[:, 3] == box[:, 3]
    # Exactly one side of each axis stays where it was.
    assert torch.equal(at_x2, candidates[:, 0] != box[:, 0])
    assert torch.equal(at_y2, candidates[:, 1] != box[:, 1])
    return at_x2.numpy(), at_y2.numpy()


def assert_anchor_rule(rois, centers=None):
    """The grown candidate keeps psi, the shrunk one eta, as numpy_anchor_sides says."""
    expected = numpy_anchor_sides(rois, centers)
    candidates = ssanet_ops.scale_candidates(rois, [2.0, 0.5], (1.0, 1.0), centers, clip=False)
    psi_x2, psi_y2 = kept_sides(rois, candidates[:, 0])
    eta_x2, eta_y2 = kept_sides(rois, candidates[:, 1])
    np.testing.assert_array_equal(psi_x2, expected["psi_x2"])
    np.testing.assert_array_equal(psi_y2, expected["psi_y2"])
    np.testing.assert_array_equal(eta_x2, expected["eta_x2"])
    np.testing.assert_array_equal(eta_y2, expected["eta_y2"])


@requires_torchvision
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_issue_box_grows_from_its_first_corner(device, dtype):
    # Issue 9 defect 1: one box alone in its image ties with its own centre on both axes, so
    # psi = eta = (x1, y1); the CPU and CUDA used to round the tie differently.
    boxes = torch.tensor(
        [[0, 52.9869385, 260.744873, 322.843445, 286.684601]], dtype=dtype, device=device
    )
    candidates = ssanet_ops.scale_candidates(boxes, [0.5, 1.0, 2.0], (448, 448))
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    x1, y1, x2, y2 = (np_dtype(v) for v in boxes[0, 1:].tolist())
    half, two = np_dtype(0.5), np_dtype(2)
    shrunk = [x1, y1, x1 + half * (x2 - x1), y1 + half * (y2 - y1)]
    grown = [x1, y1, min(x1 + two * (x2 - x1), 448), min(y1 + two * (y2 - y1), 448)]
    expected = torch.tensor([shrunk, [x1, y1, x2, y2], grown], dtype=dtype)
    torch.testing.assert_close(candidates[0].cpu(), expected, rtol=0, atol=0)
    # The crop anchors its candidates the same way.
    x = torch.rand(1, 2, 448, 448, dtype=dtype, device=device)
    torch.testing.assert_close(
        ssanet_ops.multiscale_roi_crop(x, boxes, 4, [0.5, 1.0, 2.0]),
        reference.multiscale_roi_crop(x, boxes, 4, [0.5, 1.0, 2.0]),
        **tolerances(x),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_box_per_image_ties_at_the_first_corner(device, dtype):
    # Every image has one box: its default centre ties on both axes, whatever the rounding.
    count = 400
    corner = torch.rand(count, 2, dtype=torch.float64) * 500
    size = torch.rand(count, 2, dtype=torch.float64) * 300 + 1e-3
    boxes = torch.cat([torch.arange(count)[:, None], corner, corner + size], 1).to(dtype)
    rois = boxes.to(device)
    assert_anchor_rule(rois)
    expected = numpy_anchor_sides(rois)
    assert not any(side.any() for side in expected.values())  # psi = eta = (x1, y1) everywhere


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchor_rule_on_near_ties(device, dtype):
    # Images of two to four boxes placed symmetrically about a point, then moved by a few units
    # in the last place: the default 2c and the boxes' sums differ by rounding only.
    generator = torch.Generator().manual_seed(3)
    rows = []
    for image in range(150):
        centre = torch.rand(2, generator=generator, dtype=torch.float64) * 400
        for _ in range(2 + image % 3):
            half = torch.rand(2, generator=generator, dtype=torch.float64) * 80 + 1
            low = (centre - half).to(dtype)
            high = (centre + half).to(dtype)
            ulps = torch.randint(-2, 3, (2,), generator=generator)
            high = torch.where(ulps > 0, torch.nextafter(high, high + 1), high)
            low = torch.where(ulps < 0, torch.nextafter(low, low - 1), low)
            rows.append([image, *low.tolist(), *high.tolist()])
    rois = torch.tensor(rows, dtype=dtype, device=device)
    assert_anchor_rule(rois)
    expected = numpy_anchor_sides(rois)
    assert all(0 < side.sum() < len(rows) for side in expected.values())  # both answers occur


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchor_rule_with_given_centres_on_exact_ties(device, dtype):
    # x1 + x2 == 2*cx exactly: the tie keeps x1 for psi and for eta; a centre one unit in the
    # last place away decides the other way round on that axis.
    generator = torch.Generator().manual_seed(4)
    count = 200
    # Multiples of 1/256 below 256 and powers of two from 1/8 to 32: every corner is exact.
    centre = (torch.randint(0, 2**16, (count, 2), generator=generator) / 256).to(dtype)
    half = torch.ldexp(torch.ones(count, 2), torch.randint(-3, 6, (count, 2), generator=generator))
    boxes = torch.cat([torch.arange(count)[:, None], centre - half, centre + half], 1).to(dtype)
    nudge = torch.randint(-1, 2, (count, 2), generator=generator)
    centers = torch.where(nudge > 0, torch.nextafter(centre, centre + 1), centre)
    centers = torch.where(nudge < 0, torch.nextafter(centre, centre - 1), centers)
    assert_anchor_rule(boxes.to(device), centers.to(device))
    assert all(0 < side.sum() < count for side in numpy_anchor_sides(boxes, centers).values())
    assert_anchor_rule(boxes.to(device), centre.to(device))
    assert not any(side.any() for side in numpy_anchor_sides(boxes, centre).values())


def test_default_centre_is_the_mean_of_the_image_box_centres():
    boxes = torch.tensor(
        [
            [0, 10, 10, 30, 50],  # centre (20, 30)
            [1, 0, 0, 8, 8],  # another image: must not move image 0's centre
            [0, 60, 70, 80, 90],  # centre (70, 80)
        ],
        dtype=torch.float64,
    )
    mean_0 = [(20 + 70) / 2, (30 + 80) / 2]
    mean_1 = [4.0, 4.0]
    default = ssanet_ops.scale_candidates(boxes, SCALES, (100, 100))
    explicit = ssanet_ops.scale_candidates(
        boxes, SCALES, (100, 100), torch.tensor([mean_0, mean_1], dtype=torch.float64)
    )
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    # And the centre matters: another one moves the candidates.
    other = ssanet_ops.scale_candidates(
        boxes, SCALES, (100, 100), torch.tensor([[0.0, 0.0], mean_1], dtype=torch.float64)
    )
    assert not torch.equal(default[[0, 2]], other[[0, 2]])


def test_clip_bounds_candidates_to_the_image():
    boxes = torch.tensor([[0, 50, 40, 90, 70]], dtype=torch.float64)
    centre = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    clipped = ssanet_ops.scale_candidates(boxes, [3.0], (80, 100), centre, clip=True)
    unclipped = ssanet_ops.scale_candidates(boxes, [3.0], (80, 100), centre, clip=False)
    # Anchored at the farthest corner (90, 70): x1 = 90 - 120, y1 = 70 - 90.
    assert unclipped[0, 0].tolist() == [-30, -20, 90, 70]
    assert clipped[0, 0].tolist() == [0, 0, 90, 70]


# ---- scale_candidates against the reference ----


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [True, False])
def test_scale_candidates_matches_reference(device, dtype, clip):
    boxes = random_boxes(3, 40.0, 60.0, dtype).to(device)
    expected = reference.scale_candidates(boxes, SCALES, (40, 60), clip=clip)
    torch.testing.assert_close(
        ssanet_ops.scale_candidates(boxes, SCALES, (40, 60), clip=clip), expected, rtol=0, atol=0
    )
    centers = (torch.rand(3, 2, dtype=dtype) * 50).to(device)
    torch.testing.assert_close(
        ssanet_ops.scale_candidates(as_list(boxes, 3), SCALES, (40, 60), centers, clip),
        reference.scale_candidates(as_list(boxes, 3), SCALES, (40, 60), centers, clip),
        rtol=0,
        atol=0,
    )


# ---- multiscale_roi_crop against roi_align on the reference candidates ----


def crop_and_gradient(fn, x, *args, **kwargs):
    x = x.detach().requires_grad_()
    out = fn(x, *args, **kwargs)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (grad,) = torch.autograd.grad(out, x, grad_output)
    return out, grad


# The CPU kernels take one plane at a time below 16 channels, chunks of 64 channels-last from
# there: 3 channels (images) and 70 (two chunks, the second partial) cover both.
@requires_torchvision
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("spatial_scale", [1.0, 1 / 32])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("channels", [3, 70])
def test_crop_matches_roi_align_composition(
    device, sampling_ratio, aligned, spatial_scale, clip, channels
):
    batch, height, width = 2, 9, 13
    x = torch.randn(batch, channels, height, width, device=device)
    boxes = random_boxes(batch, height / spatial_scale, width / spatial_scale).to(device)
    kwargs = dict(
        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned, clip=clip
    )
    out, grad = crop_and_gradient(
        ssanet_ops.multiscale_roi_crop, x, boxes, (5, 4), SCALES, **kwargs
    )
    expected_out, expected_grad = crop_and_gradient(
        reference.multiscale_roi_crop, x, boxes, (5, 4), SCALES, **kwargs
    )
    assert out.shape == (boxes.shape[0], len(SCALES), channels, 5, 4)
    torch.testing.assert_close(out, expected_out, **tolerances(x))
    torch.testing.assert_close(grad, expected_grad, **tolerances(x))


@requires_torchvision
def test_crop_many_channels_and_large_crops(device):
    # Past the channels-last buffers' bounds the CPU kernels go back to planes.
    x = torch.randn(2, 16, 150, 140, device=device)
    boxes = random_boxes(2, 150, 140)[::3].to(device)
    out, grad = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 66, SCALES[1:4])
    expected_out, expected_grad = crop_and_gradient(
        reference.multiscale_roi_crop, x, boxes, 66, SCALES[1:4]
    )
    torch.testing.assert_close(out, expected_out, **tolerances(x))
    torch.testing.assert_close(grad, expected_grad, **tolerances(x))


@requires_torchvision
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_list_boxes_and_custom_centres(device, dtype):
    batch, height, width = 3, 12, 10
    x = torch.randn(batch, 2, height, width, device=device, dtype=dtype)
    boxes = random_boxes(batch, height, width, dtype).to(device)
    centers = (torch.rand(batch, 2, dtype=dtype) * 12).to(device)
    out, grad = crop_and_gradient(
        ssanet_ops.multiscale_roi_crop, x, as_list(boxes, batch), 3, SCALES, centers
    )
    expected_out, expected_grad = crop_and_gradient(
        reference.multiscale_roi_crop, x, boxes, 3, SCALES, centers
    )
    # The list puts each image's boxes together, as the tensor already does.
    torch.testing.assert_close(out, expected_out, **tolerances(x))
    torch.testing.assert_close(grad, expected_grad, **tolerances(x))


@requires_torchvision
def test_crop_with_one_scale_is_roi_align_on_the_boxes(device):
    x = torch.randn(2, 3, 16, 12, device=device, dtype=torch.float64)
    boxes = random_boxes(2, 16, 12, torch.float64).to(device)
    for aligned in (True, False):
        out, grad = crop_and_gradient(
            ssanet_ops.multiscale_roi_crop, x, boxes, (4, 6), [1.0], aligned=aligned, clip=False
        )
        expected_out, expected_grad = crop_and_gradient(
            roi_align, x, boxes, (4, 6), aligned=aligned
        )
        torch.testing.assert_close(out[:, 0], expected_out, **tolerances(x))
        torch.testing.assert_close(grad, expected_grad, **tolerances(x))


def boxes_sampling_at(
    targets: tuple[float, ...], out_size: int, grid: int, spatial_scale: float, aligned: bool
) -> torch.Tensor:
    """[K, 5] square boxes of image 0 whose sample (p, i) of output p, in exact arithmetic,
    sits on a target map coordinate (on both axes), for every p and i and a few bin lengths.
    In float32 a sample lands within an ulp of its target, on either side as the roundings
    fall."""
    offset = 0.5 if aligned else 0.0
    rows = []
    for target in targets:
        for bin_length in (0.3, 0.7, 1 / 3, 1.1):
            for p in range(out_size):
                for i in range(grid):
                    start = target - (p + (i + 0.5) / grid) * bin_length
                    low = (start + offset) / spatial_scale
                    high = low + out_size * bin_length / spatial_scale
                    rows.append([0, low, low, high, high])
    return torch.tensor(rows)


@requires_torchvision
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("spatial_scale", [0.25, 0.1, 1 / 3])
def test_samples_on_the_edges_of_the_map_count_as_in_roi_align(cuda_target, spatial_scale, aligned):
    # Issue 20 part 5: roi_align counts a sample at y (and x) when -1 <= y <= H and reads 0
    # otherwise, and clamps [-1, 0] and [H - 1, H] to the border. On a map of ones the crop is
    # the share of the samples that count, so a sample rounded to the other side of -1 or H
    # shows as a jump of 0.2 or more (a row or column of at most 5 samples). The samples are
    # placed on -1, 0, H - 1 and H; their positions are computed without contraction on both
    # devices (common/bilinear.h), so the CPU kernels, the CUDA kernels and roi_align (on the
    # CPU) count the same samples, forward and backward (both CUDA backwards). Each box crops
    # its own image of ones, so that its gradient is that image's, and float32 sums stay far
    # below the jump.
    size = 4

    def crop_and_gradient_of_sum(crop, boxes, out_size, settings, device):
        boxes = boxes.clone()
        boxes[:, 0] = torch.arange(boxes.shape[0])
        x = torch.ones(boxes.shape[0], 1, size, size, device=device, requires_grad=True)
        out = crop(x, boxes.to(device), out_size, **settings)
        (grad,) = torch.autograd.grad(out.sum(), x)
        return out.detach().cpu().reshape(-1, out_size, out_size), grad.cpu()

    def ssanet_crop(x, boxes, out_size, **settings):
        return ssanet_ops.multiscale_roi_crop(x, boxes, out_size, [1.0], clip=False, **settings)

    for out_size, grid in ((3, 2), (7, 5)):
        targets = (-1.0, 0.0, size - 1.0, float(size))
        boxes = boxes_sampling_at(targets, out_size, grid, spatial_scale, aligned)
        settings = {"spatial_scale": spatial_scale, "sampling_ratio": grid, "aligned": aligned}
        expected = crop_and_gradient_of_sum(roi_align, boxes, out_size, settings, "cpu")
        results = {"cpu": crop_and_gradient_of_sum(ssanet_crop, boxes, out_size, settings, "cpu")}
        for deterministic in (True, False):
            with cuda_target, deterministic_algorithms(deterministic):
                results[f"cuda, deterministic={deterministic}"] = crop_and_gradient_of_sum(
                    ssanet_crop, boxes, out_size, settings, cuda_target.device
                )
        for name, (out, grad) in results.items():
            message = f"{name}, output size {out_size}, grid {grid}"
            torch.testing.assert_close(
                out,
                expected[0],
                rtol=0,
                atol=1e-6,
                msg=lambda m, message=message: f"{message}: {m}",
            )
            # A sample row or column counted on one side only moves some element by 0.05 or
            # more; float32 rounding of the gradients (up to about 25) stays below 2e-4.
            torch.testing.assert_close(
                grad,
                expected[1],
                rtol=0,
                atol=1e-3,
                msg=lambda m, message=message: f"{message}: {m}",
            )


@requires_torchvision
def test_issue_sample_one_ulp_past_the_map(cuda_target):
    # Issue 20 part 5: contracted into an FMA, this box's last row of samples came out at
    # y = 1.0 exactly on CUDA, where the CPU and roi_align get 1.0000001 > H = 1 and drop it:
    # the CUDA output was 0.4 instead of 0.2.
    x = torch.ones(1, 1, 1, 1)
    boxes = torch.tensor([[0, 3.0, 0.4, 3.0, 4.0]])
    settings = {"spatial_scale": 0.25, "sampling_ratio": 5, "aligned": False}
    expected = roi_align(x, boxes, 7, **settings)
    out = ssanet_ops.multiscale_roi_crop(x, boxes, 7, [1.0], clip=False, **settings)
    with cuda_target:
        cuda_out = ssanet_ops.multiscale_roi_crop(
            x.to(cuda_target.device), boxes.to(cuda_target.device), 7, [1.0], clip=False, **settings
        )
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(cuda_out.cpu()[:, 0], expected, rtol=0, atol=1e-6)


@requires_torchvision
def test_crop_image_workload_shape(device):
    # Large candidates shrunk to the output: several samples per cell (adaptive grid).
    x = torch.randn(2, 3, 64, 64, device=device)
    boxes = torch.tensor([[0, 4, 6, 60, 50], [1, 10, 20, 30, 62]], device=device)
    out = ssanet_ops.multiscale_roi_crop(x, boxes, 16, SCALES)
    expected = reference.multiscale_roi_crop(x, boxes, 16, SCALES)
    torch.testing.assert_close(out, expected, **tolerances(x))


@pytest.mark.parametrize("channels", [5, 20])
def test_non_contiguous_and_channels_last_input(device, channels):
    x = torch.randn(2, channels, 11, 14, device=device)
    boxes = random_boxes(2, 11, 14).to(device)
    expected = ssanet_ops.multiscale_roi_crop(x, boxes, 3, SCALES)
    channels_last = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        ssanet_ops.multiscale_roi_crop(channels_last, boxes, 3, SCALES), expected, rtol=0, atol=0
    )
    strided = torch.randn(2, channels, 11, 28, device=device)[..., ::2]
    strided.copy_(x)
    torch.testing.assert_close(
        ssanet_ops.multiscale_roi_crop(strided, boxes, 3, SCALES), expected, rtol=0, atol=0
    )


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("channels", [2, 17])
def test_gradcheck(device, channels, deterministic):
    if not runs_cuda_kernels(device) and not deterministic:
        pytest.skip("the CPU backward has one, deterministic, path")
    x = torch.randn(2, channels, 6, 7, device=device, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[0, 0.5, 1.2, 4.7, 5.1], [1, 2.2, 0.1, 6.3, 3.9], [1, -1.0, 2.0, 3.0, 7.5]],
        device=device,
        dtype=torch.float64,
    )
    # gradcheck also asks two backward calls to agree; the atomic backward adds in a varying
    # order, so its calls agree to float64 rounding only (issue 9 defect 3).
    nondet_tol = 0.0 if deterministic else 1e-12
    for sampling_ratio in (-1, 2):
        with deterministic_algorithms(deterministic):
            torch.autograd.gradcheck(
                lambda x, ratio=sampling_ratio: ssanet_ops.multiscale_roi_crop(
                    x, boxes, (3, 2), [0.7, 1.0, 1.4], sampling_ratio=ratio
                ),
                (x,),
                fast_mode=channels > 2,  # a random projection of the Jacobian: fewer evaluations
                nondet_tol=nondet_tol,
            )


def test_opcheck(device):
    x = torch.randn(2, 3, 8, 9, device=device, requires_grad=True)
    boxes = random_boxes(2, 8, 9).to(device)
    centers = torch.rand(2, 2, device=device) * 8
    scales = [0.8, 1.0, 1.25]
    crop = torch.ops.ssanet_ops.multiscale_roi_crop.default
    torch.library.opcheck(crop, (x, boxes, scales, None, [3, 2], 1.0, -1, True, True))
    torch.library.opcheck(crop, (x, boxes, scales, centers, [2, 2], 0.5, 2, False, False))
    grad = torch.randn(boxes.shape[0], 3, 3, 3, 2, device=device)
    for deterministic in (True, False):
        torch.library.opcheck(
            torch.ops.ssanet_ops._multiscale_roi_crop_backward.default,
            (grad, boxes, scales, None, [3, 2], 1.0, -1, True, True, 2, 3, 8, 9, deterministic),
        )
    torch.library.opcheck(
        torch.ops.ssanet_ops.scale_candidates.default, (boxes, scales, centers, 8.0, 9.0, True)
    )


def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 3, 10, 12, device=device, requires_grad=True)
    boxes = random_boxes(2, 10, 12).to(device)

    def crop_loss(x, boxes):
        return (
            ssanet_ops.multiscale_roi_crop(x, boxes, (3, 4), SCALES, sampling_ratio=2)
            .square()
            .sum()
        )

    compiled = torch.compile(crop_loss, fullgraph=True)
    with deterministic_algorithms():  # on CUDA, the same summation order in both
        (grad,) = torch.autograd.grad(compiled(x, boxes), x)
        (expected,) = torch.autograd.grad(crop_loss(x, boxes), x)
    torch.testing.assert_close(grad, expected)


def test_torch_export(device):
    x = torch.randn(2, 3, 10, 12, device=device)
    boxes = random_boxes(2, 10, 12).to(device)
    module = ssanet_ops.nn.MultiScaleRoICrop((3, 4), SCALES)
    exported = torch.export.export(module, (x, boxes))
    torch.testing.assert_close(exported.module()(x, boxes), module(x, boxes), rtol=0, atol=0)


def test_backward_is_bitwise_repeatable(device):
    # The deterministic backward (always on the CPU; the gather kernel on CUDA). The atomic one
    # agrees with it to rounding: test_cuda_deterministic_backward_matches_atomic_backward.
    x = torch.randn(2, 4, 20, 20, device=device)
    boxes = random_boxes(2, 20, 20).to(device)
    with deterministic_algorithms():
        _, first = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 6, SCALES)
        for _ in range(3):
            _, again = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 6, SCALES)
            assert torch.equal(first, again)


@pytest.mark.parametrize("channels", [4, 70])
def test_cpu_backward_does_not_depend_on_thread_count(channels):
    x = torch.randn(3, channels, 20, 20)
    boxes = random_boxes(3, 20, 20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out_one, grad_one = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 6, SCALES)
        torch.set_num_threads(max(2, threads))
        out_many, grad_many = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 6, SCALES)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out_one, out_many)
    assert torch.equal(grad_one, grad_many)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_deterministic_backward_matches_atomic_backward(cuda_device, dtype):
    x = torch.randn(2, 5, 24, 20, device=cuda_device, dtype=dtype)
    boxes = random_boxes(2, 24, 20, dtype).to(cuda_device)
    for sampling_ratio in (-1, 2):
        _, atomic = crop_and_gradient(
            ssanet_ops.multiscale_roi_crop, x, boxes, 7, SCALES, sampling_ratio=sampling_ratio
        )
        with deterministic_algorithms():
            _, gathered = crop_and_gradient(
                ssanet_ops.multiscale_roi_crop, x, boxes, 7, SCALES, sampling_ratio=sampling_ratio
            )
            _, again = crop_and_gradient(
                ssanet_ops.multiscale_roi_crop, x, boxes, 7, SCALES, sampling_ratio=sampling_ratio
            )
        torch.testing.assert_close(gathered, atomic, **tolerances(x))
        assert torch.equal(gathered, again)


def test_cuda_backward_kernel_follows_the_deterministic_argument(cuda_device):
    # Issue 11: the backward op takes `deterministic` as an argument (the Python layer passes
    # torch.are_deterministic_algorithms_enabled()) and ignores torch's global flag. The gather
    # kernel associates the sums differently from the atomic one, so in float32 their results
    # differ in the last bits: each call shows which kernel ran.
    boxes = random_boxes(2, 16, 16).to(cuda_device)
    grad = torch.randn(boxes.shape[0], len(SCALES), 3, 5, 5, device=cuda_device)
    arguments = (grad, boxes, SCALES, None, [5, 5], 1.0, -1, True, True, 2, 3, 16, 16)
    backward = torch.ops.ssanet_ops._multiscale_roi_crop_backward
    with deterministic_algorithms(False):
        gathered = backward(*arguments, True)
    with deterministic_algorithms(True):
        gathered_again = backward(*arguments, True)
        atomic = backward(*arguments, False)
    assert torch.equal(gathered, gathered_again)
    assert not torch.equal(gathered, atomic)
    torch.testing.assert_close(gathered, atomic, **tolerances(grad))


@requires_torchvision
@requires_cuda
@pytest.mark.parametrize("deterministic", [True, False])
def test_cuda_graph_capture(deterministic):
    # docs/operators.md section 4: no host synchronisation, so forward and backward can be
    # captured in a CUDA graph (errors.item() made the capture fail), and replays recompute them.
    with deterministic_algorithms(deterministic):
        x, boxes, grad_output, out, _ = _capture_crop_and_replay(SCALES)
    _check_replayed_crop(x, boxes, grad_output, out)


def _capture_crop_and_replay(scales):
    """Captures the crop of a random input, forward and backward (and the candidates), in a
    CUDA graph after a warm-up on a side stream, as torch.cuda.graph asks; then gives the input
    new values and replays. Returns the input, the boxes, the output gradient, the crops and
    the candidates."""
    x = torch.randn(2, 3, 16, 18, device="cuda", requires_grad=True)
    boxes = random_boxes(2, 16, 18).cuda()
    grad_output = torch.randn(boxes.shape[0], len(SCALES), 3, 5, 5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            ssanet_ops.multiscale_roi_crop(x, boxes, 5, scales).backward(grad_output)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        out = ssanet_ops.multiscale_roi_crop(x, boxes, 5, scales)
        out.backward(grad_output)
        candidates = ssanet_ops.scale_candidates(boxes, scales, (16, 18))
    x.data.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    return x, boxes, grad_output, out, candidates


def _check_replayed_crop(x, boxes, grad_output, out):
    expected_x = x.detach().clone().requires_grad_()
    expected_out = reference.multiscale_roi_crop(expected_x, boxes, 5, SCALES)
    (expected_grad,) = torch.autograd.grad(expected_out, expected_x, grad_output)
    torch.testing.assert_close(out, expected_out, **tolerances(x))
    torch.testing.assert_close(x.grad, expected_grad, **tolerances(x))


@requires_torchvision
@requires_cuda
def test_cuda_graph_capture_with_a_tensor_of_scales():
    # Issue 20: a CPU tensor of scales is read on the host, without waiting for the device, so
    # the crop with CUDA tensors is captured, forward and backward; a CUDA tensor of scales is
    # refused with a ValueError before anything is read or launched.
    scales = torch.tensor(SCALES)
    with pytest.raises(ValueError, match="scales must be a sequence or a CPU tensor"):
        ssanet_ops.multiscale_roi_crop(
            torch.randn(1, 3, 16, 18, device="cuda"),
            random_boxes(1, 16, 18).cuda(),
            5,
            scales.cuda(),
        )
    x, boxes, grad_output, out, candidates = _capture_crop_and_replay(scales)
    _check_replayed_crop(x, boxes, grad_output, out)
    torch.testing.assert_close(
        candidates, reference.scale_candidates(boxes, SCALES, (16, 18)), rtol=0, atol=0
    )


@requires_torchvision
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(cuda_device, dtype, deterministic):
    x = torch.randn(2, 4, 16, 18, device=cuda_device)
    boxes = random_boxes(2, 16, 18).to(cuda_device)
    with deterministic_algorithms(deterministic):
        out, grad = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x.to(dtype), boxes, 5, SCALES)
    expected_out, expected_grad = crop_and_gradient(
        reference.multiscale_roi_crop, x, boxes, 5, SCALES
    )
    assert out.dtype == dtype and grad.dtype == dtype
    tolerance = (
        {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.float16 else {"rtol": 5e-2, "atol": 5e-2}
    )
    torch.testing.assert_close(out.float(), expected_out, **tolerance)
    torch.testing.assert_close(grad.float(), expected_grad, **tolerance)


@requires_simulator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_int64_index_kernels(dtype):
    # Every launch with an int32 index limit of 100 takes the kernels' int64-index branch, on
    # tensors small enough to simulate; the results match the int32 branch's.
    x = torch.randn(2, 5, 12, 10).to(dtype)
    boxes = random_boxes(2, 12, 10)
    results = []
    for limit in (None, 100):
        with simulate_cuda(int32_index_limit=limit):
            candidates = ssanet_ops.scale_candidates(boxes.to(x.dtype), SCALES, (12, 10))
            with deterministic_algorithms():
                out, gathered = crop_and_gradient(
                    ssanet_ops.multiscale_roi_crop, x, boxes, 4, SCALES
                )
            _, atomic = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 4, SCALES)
            float_tolerance = tolerances(x)  # the CUDA kernels' (two atomic summation orders)
        results.append((candidates, out, gathered, atomic))
    (candidates, out, gathered, atomic), int64_results = results
    torch.testing.assert_close(int64_results[0], candidates, rtol=0, atol=0)
    torch.testing.assert_close(int64_results[1], out, rtol=0, atol=0)
    torch.testing.assert_close(int64_results[2], gathered, rtol=0, atol=0)
    reduced = {
        torch.float16: {"rtol": 1e-2, "atol": 1e-2},
        torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
    }
    tolerance = reduced.get(dtype, float_tolerance)
    torch.testing.assert_close(int64_results[3], atomic, **tolerance)


def test_module_matches_function(device):
    x = torch.randn(2, 3, 12, 12, device=device)
    boxes = random_boxes(2, 12 * 4, 12 * 4).to(device)
    module = ssanet_ops.nn.MultiScaleRoICrop((4, 3), SCALES, spatial_scale=0.25, sampling_ratio=2)
    expected = ssanet_ops.multiscale_roi_crop(
        x, boxes, (4, 3), SCALES, spatial_scale=0.25, sampling_ratio=2
    )
    torch.testing.assert_close(module(x, boxes), expected, rtol=0, atol=0)
    assert "scales=" in repr(module)


# ---- empty inputs ----


def test_no_boxes_gives_empty_output_and_zero_gradient(device):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    boxes = torch.zeros(0, 5, device=device)
    out = ssanet_ops.multiscale_roi_crop(x, boxes, (4, 5), SCALES)
    assert out.shape == (0, len(SCALES), 3, 4, 5)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))
    assert ssanet_ops.scale_candidates(boxes, SCALES, (8, 8)).shape == (0, len(SCALES), 4)


def test_images_without_boxes_get_zero_gradient(device):
    x = torch.randn(3, 2, 8, 8, device=device, requires_grad=True)
    boxes = torch.tensor([[1, 1.0, 1.0, 6.0, 5.0]], device=device)
    (grad,) = torch.autograd.grad(ssanet_ops.multiscale_roi_crop(x, boxes, 3, SCALES).sum(), x)
    assert torch.equal(grad[[0, 2]], torch.zeros_like(grad[[0, 2]]))
    assert grad[1].abs().sum() > 0


# ---- bounds (issue 12 items 7 and 9) ----


def test_sampling_ratio_above_the_cap_is_refused():
    x = torch.randn(1, 2, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    cap = ssanet_ops.MAX_SAMPLING_RATIO
    for ratio in (cap + 1, 2**62):
        # docs/operators.md section 4: a ValueError, checked before any kernel (issue 20).
        with pytest.raises(ValueError, match=rf"sampling_ratio must be at most {cap}"):
            crop_error(x, boxes, sampling_ratio=ratio)
        with pytest.raises(ValueError, match=rf"sampling_ratio must be at most {cap}"):
            ssanet_ops.nn.MultiScaleRoICrop(3, SCALES, sampling_ratio=ratio)
        with pytest.raises(RuntimeError, match=rf"sampling_ratio must be at most {cap}"):
            torch.ops.ssanet_ops.multiscale_roi_crop(
                x, boxes, [1.0], None, [3, 3], 1.0, ratio, True, True
            )
        with pytest.raises(RuntimeError, match=rf"sampling_ratio must be at most {cap}"):
            torch.ops.ssanet_ops._multiscale_roi_crop_backward(
                torch.zeros(1, 1, 2, 3, 3),
                boxes,
                [1.0],
                None,
                [3, 3],
                1.0,
                ratio,
                True,
                True,
                1,
                2,
                8,
                8,
                False,
            )


@requires_torchvision
def test_sampling_grid_is_capped(device):
    # A box of 600 x 600 pixels per output cell: roi_align would take 600 x 600 samples; the
    # crop takes MAX_SAMPLING_RATIO per axis, adaptive or explicit, and equals roi_align there.
    cap = ssanet_ops.MAX_SAMPLING_RATIO
    x = torch.randn(1, 2, 600, 600, device=device, dtype=torch.float64)
    boxes = torch.tensor([[0, 0.0, 0.0, 600.0, 600.0]], device=device, dtype=torch.float64)
    capped = roi_align(x, boxes, 1, sampling_ratio=cap, aligned=True)
    for ratio in (-1, cap):
        out = ssanet_ops.multiscale_roi_crop(x, boxes, 1, [1.0], sampling_ratio=ratio)
        torch.testing.assert_close(out[:, 0], capped, **tolerances(x))
    uncapped = roi_align(x, boxes, 1, sampling_ratio=-1, aligned=True)
    assert not torch.allclose(capped, uncapped, rtol=1e-10, atol=1e-10)


@requires_torchvision
def test_huge_unclipped_box_costs_at_most_the_capped_grid(device):
    # Issue 12 item 9: this box asked for 2e30 / 7 samples per bin and axis (390 s on a 64x64
    # map); capped, it is roi_align's result at the cap: all its samples fall off the map.
    x = torch.randn(1, 3, 64, 64, device=device, requires_grad=True)
    boxes = torch.tensor([[0, -1e30, -1e30, 1e30, 1e30]], device=device)
    out = ssanet_ops.multiscale_roi_crop(x, boxes, 7, [1.0], clip=False)
    expected = roi_align(x, boxes, 7, sampling_ratio=ssanet_ops.MAX_SAMPLING_RATIO, aligned=True)
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_direct_calls_with_overflowing_sizes_raise():
    x = torch.randn(1, 1, 4, 4)
    boxes = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]])
    crop = torch.ops.ssanet_ops.multiscale_roi_crop
    backward = torch.ops.ssanet_ops._multiscale_roi_crop_backward
    with pytest.raises(RuntimeError, match=r"output_size has more than 2\^63 - 1 elements"):
        crop(x, boxes, [1.0], None, [2**62, 4], 1.0, -1, True, True)
    with pytest.raises(RuntimeError, match=r"the output \[K, S, C, oh, ow\] has more than"):
        crop(
            torch.randn(1, 2**20, 1, 1).expand(1, 2**20, 1, 1),
            boxes,
            [1.0] * 64,
            None,
            [2**20, 2**20],
            1.0,
            -1,
            True,
            True,
        )
    grad = torch.zeros(1, 1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"input gradient \[B, C, H, W\] has more than"):
        backward(grad, boxes, [1.0], None, [2, 2], 1.0, -1, True, True, 2**62, 1, 4, 4, False)
    with pytest.raises(RuntimeError, match=r"input gradient \[B, C, H, W\] has a negative"):
        backward(grad, boxes, [1.0], None, [2, 2], 1.0, -1, True, True, 1, 1, -4, 4, False)


# ---- NaN gradients (issue 9 defect 8) ----


@requires_torchvision
@pytest.mark.parametrize("deterministic", [True, False])
def test_nan_gradients_reach_exactly_the_elements_their_cells_read(device, deterministic):
    # A NaN in the output gradient reaches the input elements its cell's samples read with a
    # non-zero weight, and no other, on the CPU, the gather and the atomic kernels alike: the
    # elements that the indicator of the NaN cells, sent back through roi_align, makes positive.
    x = torch.randn(2, 3, 10, 11, device=device, dtype=torch.float64, requires_grad=True)
    # Besides random boxes, boxes of one pixel per output cell: with aligned=True their
    # factor-1 candidates sample on pixel centres, where one neighbour's weight is exactly 0.
    pixel_bins = torch.tensor([[0, 1, 2, 4, 6], [1, 0, 0, 3, 4]], dtype=torch.float64)
    boxes = torch.cat([random_boxes(2, 10, 11, torch.float64), pixel_bins]).to(device)
    generator = torch.Generator().manual_seed(5)
    with deterministic_algorithms(deterministic):
        for sampling_ratio in (-1, 2):
            out = ssanet_ops.multiscale_roi_crop(
                x, boxes, (4, 3), SCALES, sampling_ratio=sampling_ratio
            )
            grad_output = torch.randn(out.shape, generator=generator, dtype=out.dtype)
            nan_cells = torch.rand(out.shape, generator=generator) < 0.05
            grad_output = grad_output.masked_fill(nan_cells, math.nan).to(device)
            (grad,) = torch.autograd.grad(out, x, grad_output, retain_graph=True)
            expected = reference.multiscale_roi_crop(
                x, boxes, (4, 3), SCALES, sampling_ratio=sampling_ratio
            )
            (reach,) = torch.autograd.grad(expected, x, nan_cells.to(expected))
            assert torch.equal(grad.isnan(), reach > 0)
            (finite,) = torch.autograd.grad(out, x, grad_output.nan_to_num(0.0))
            torch.testing.assert_close(grad[reach == 0], finite[reach == 0], **tolerances(x))


@requires_torchvision
def test_boxes_in_any_order_of_images(device):
    # The images' boxes are grouped on the device (a stable sort by batch index): boxes given
    # in any order of images crop as the reference does, forward and backward.
    x = torch.randn(3, 4, 14, 12, device=device)
    boxes = random_boxes(3, 14, 12)
    boxes = boxes[torch.randperm(boxes.shape[0])].to(device)
    candidates = ssanet_ops.scale_candidates(boxes, SCALES, (14, 12))
    torch.testing.assert_close(
        candidates, reference.scale_candidates(boxes, SCALES, (14, 12)), rtol=0, atol=0
    )
    for deterministic in (True, False):
        with deterministic_algorithms(deterministic):
            out, grad = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 3, SCALES)
        expected_out, expected_grad = crop_and_gradient(
            reference.multiscale_roi_crop, x, boxes, 3, SCALES
        )
        torch.testing.assert_close(out, expected_out, **tolerances(x))
        torch.testing.assert_close(grad, expected_grad, **tolerances(x))


# ---- errors ----


def crop_error(x, boxes, **kwargs):
    kwargs = {"output_size": 3, "scales": SCALES, **kwargs}
    return ssanet_ops.multiscale_roi_crop(x, boxes, **kwargs)


# docs/operators.md section 4: the public functions raise a ValueError for bad box and centre
# values on the CPU (issue 20; the kernels' RuntimeError when torch.ops is called directly), for
# scales as a list or as a tensor.
SCALE_ARGUMENTS = [pytest.param(SCALES, id="list"), pytest.param(torch.tensor(SCALES), id="tensor")]


@pytest.mark.parametrize("scales", SCALE_ARGUMENTS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_boxes_raise_on_the_cpu(bad, scales):
    x = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, bad]])
    message = "boxes must have finite coordinates"
    with pytest.raises(ValueError, match="multiscale_roi_crop: " + message):
        crop_error(x, boxes, scales=scales)
    with pytest.raises(ValueError, match="scale_candidates: " + message):
        ssanet_ops.scale_candidates(boxes, scales, (8, 8))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ssanet_ops.scale_candidates(boxes, SCALES, None, 8.0, 8.0, True)


@pytest.mark.parametrize("scales", SCALE_ARGUMENTS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_centres_raise_on_the_cpu(bad, scales):
    x = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    centers = torch.tensor([[4.0, 4.0], [bad, 4.0]])
    with pytest.raises(ValueError, match="multiscale_roi_crop: centers must be finite"):
        crop_error(x, boxes, scales=scales, centers=centers)
    with pytest.raises(ValueError, match="scale_candidates: centers must be finite"):
        ssanet_ops.scale_candidates(boxes, scales, (8, 8), centers)


@pytest.mark.parametrize("scales", SCALE_ARGUMENTS)
@pytest.mark.parametrize("index", [2.0, -1.0, 0.5, math.nan])
def test_batch_index_out_of_range_raises_on_the_cpu(index, scales):
    x = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor([[index, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"batch index.*\[0, 2\)"):
        crop_error(x, boxes, scales=scales)
    with pytest.raises(ValueError, match=r"batch index.*\[0, 2\)"):
        ssanet_ops.scale_candidates(boxes, scales, (8, 8), torch.zeros(2, 2))


# Boxes that check_box refuses: a non-finite coordinate, or a batch index that is out of
# [0, 2), not whole, or not a number.
BAD_BOXES = [
    [0, 1.0, 1.0, 5.0, math.nan],
    [1, -math.inf, 1.0, 5.0, 5.0],
    [1, 1.0, 2.0, math.inf, 6.0],
    [2, 1.0, 1.0, 5.0, 5.0],
    [-1, 1.0, 1.0, 5.0, 5.0],
    [0.5, 1.0, 1.0, 5.0, 5.0],
    [math.nan, 1.0, 1.0, 5.0, 5.0],
    [1e12, 1.0, 1.0, 5.0, 5.0],
]


@requires_torchvision
@pytest.mark.parametrize("deterministic", [True, False])
def test_bad_boxes_give_zeros_and_no_gradient_on_cuda(cuda_device, deterministic):
    # docs/operators.md section 4: on CUDA the ops do not wait for the device to check box
    # values; a bad box's candidates are zeros and pass no gradient, and the good boxes are
    # unaffected (the default centres leave the bad boxes out). The CPU raises
    # (test_*_raises_on_the_cpu).
    device = cuda_device
    x = torch.randn(2, 3, 12, 12, device=device)
    good = random_boxes(2, 12, 12)
    rows = torch.cat([good, torch.tensor(BAD_BOXES)])
    order = torch.randperm(rows.shape[0])
    boxes, is_bad = rows[order].to(device), (order >= good.shape[0]).to(device)
    with deterministic_algorithms(deterministic):
        out, grad = crop_and_gradient(ssanet_ops.multiscale_roi_crop, x, boxes, 4, SCALES)
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
        expected_out = reference.multiscale_roi_crop(x, boxes[~is_bad], 4, SCALES)
        x_ = x.detach().requires_grad_()
        (expected_grad,) = torch.autograd.grad(
            reference.multiscale_roi_crop(x_, boxes[~is_bad], 4, SCALES), x_, grad_output[~is_bad]
        )
    assert torch.equal(out[is_bad], torch.zeros_like(out[is_bad]))
    torch.testing.assert_close(out[~is_bad], expected_out, **tolerances(x))
    torch.testing.assert_close(grad, expected_grad, **tolerances(x))
    centers = torch.rand(2, 2, device=device) * 12
    candidates = ssanet_ops.scale_candidates(boxes, SCALES, (12, 12), centers)
    assert torch.equal(candidates[is_bad], torch.zeros_like(candidates[is_bad]))


@requires_torchvision
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_centre_gives_its_image_zeros_on_cuda(cuda_device, bad, axis, deterministic):
    # docs/operators.md section 4 (issue 20): on CUDA the given centres are not checked either;
    # the boxes of an image whose centre is not finite get zero candidates and no gradient, like
    # bad boxes, and the other images are untouched. (A NaN centre picked corner 3 as psi where
    # the reference picks corner 0: a plausible but arbitrary box.) The CPU raises
    # (test_non_finite_centres_raise_on_the_cpu).
    device = cuda_device
    x = torch.randn(3, 2, 12, 12, device=device)
    boxes = random_boxes(3, 12, 12)
    boxes = boxes[torch.randperm(boxes.shape[0])].to(device)
    finite_centers = (torch.rand(3, 2) * 12).to(device)
    centers = finite_centers.clone()
    centers[1, axis] = bad
    in_bad_image = boxes[:, 0] == 1
    candidates = ssanet_ops.scale_candidates(boxes, SCALES, (12, 12), centers)
    assert torch.equal(candidates[in_bad_image], torch.zeros_like(candidates[in_bad_image]))
    expected_candidates = reference.scale_candidates(
        boxes[~in_bad_image], SCALES, (12, 12), finite_centers
    )
    torch.testing.assert_close(candidates[~in_bad_image], expected_candidates, rtol=0, atol=0)
    with deterministic_algorithms(deterministic):
        out, grad = crop_and_gradient(
            ssanet_ops.multiscale_roi_crop, x, boxes, 4, SCALES, centers=centers
        )
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    x_ = x.detach().requires_grad_()
    expected_out = reference.multiscale_roi_crop(
        x_, boxes[~in_bad_image], 4, SCALES, centers=finite_centers
    )
    (expected_grad,) = torch.autograd.grad(expected_out, x_, grad_output[~in_bad_image])
    assert torch.equal(out[in_bad_image], torch.zeros_like(out[in_bad_image]))
    torch.testing.assert_close(out[~in_bad_image], expected_out, **tolerances(x))
    torch.testing.assert_close(grad, expected_grad, **tolerances(x))


def test_check_boxes_checks_centres(device):
    good = random_boxes(2, 8, 8).to(device)
    centers = torch.rand(2, 2, device=device) * 8
    ssanet_ops.check_boxes(good, centers=centers)
    ssanet_ops.check_boxes(good, 2, centers)
    ssanet_ops.check_boxes(as_list(good, 2), centers=centers)
    for bad in (math.nan, math.inf, -math.inf):
        bad_centers = centers.clone()
        bad_centers[1, 1] = bad
        with pytest.raises(ValueError, match=r"centers\[1\] is not finite"):
            ssanet_ops.check_boxes(good, centers=bad_centers)
    # The centres give the number of images: one row, so image 1's boxes are out of range.
    with pytest.raises(ValueError, match=r"batch index must be a whole number in \[0, 1\)"):
        ssanet_ops.check_boxes(good, centers=centers[:1])
    with pytest.raises(ValueError, match=r"centers must be a \[3, 2\] tensor"):
        ssanet_ops.check_boxes(good, 3, centers)


def test_check_boxes(device):
    good = random_boxes(2, 8, 8).to(device)
    ssanet_ops.check_boxes(good, 2)
    ssanet_ops.check_boxes(good)
    ssanet_ops.check_boxes(as_list(good, 2), 2)
    ssanet_ops.check_boxes(torch.tensor([[2**31 - 1, 0, 0, 1, 1.0]], dtype=torch.float64))
    for row in BAD_BOXES:
        boxes = torch.cat([good, torch.tensor([row], device=device)])
        index = good.shape[0]
        if all(math.isfinite(v) for v in row[1:]):
            message = rf"boxes\[{index}, 0\] = .*batch index must be a whole number in \[0, 2\)"
        else:
            message = rf"boxes\[{index}\] has a non-finite coordinate"
        with pytest.raises(ValueError, match=message):
            ssanet_ops.check_boxes(boxes, 2)
    with pytest.raises(ValueError, match=r"whole number in \[0, 2147483648\)"):
        ssanet_ops.check_boxes(torch.tensor([[2**31, 0, 0, 1, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"boxes\[1\]\[0\] has a non-finite coordinate"):
        ssanet_ops.check_boxes([good[:2, 1:], torch.tensor([[0, 0, 1, math.nan]])])
    with pytest.raises(ValueError, match="one \\[K_b, 4\\] tensor per image"):
        ssanet_ops.check_boxes(as_list(good, 2), 3)
    with pytest.raises(ValueError, match=r"boxes must be a \[K, 5\]"):
        ssanet_ops.check_boxes(good[:, 1:])


def test_scale_candidates_allocate_by_the_boxes_not_the_batch_index(device):
    # Issue 12 item 8: without centres the images are grouped by sorting the boxes' batch
    # indices, not in an array as long as the largest index (2**31 - 1 asked for 48 GiB).
    box = [1.0, 2.0, 5.0, 9.0]
    far = torch.tensor([[2**31 - 1, *box]], dtype=torch.float64, device=device)
    near = torch.tensor([[0, *box]], dtype=torch.float64, device=device)
    torch.testing.assert_close(
        ssanet_ops.scale_candidates(far, SCALES, (8, 8)),
        ssanet_ops.scale_candidates(near, SCALES, (8, 8)),
        rtol=0,
        atol=0,
    )
    if not runs_cuda_kernels(device):
        with pytest.raises(ValueError, match=r"batch index.*\[0, 2\^31\)"):
            ssanet_ops.scale_candidates(far + torch.tensor([1.0, 0, 0, 0, 0]), SCALES, (8, 8))


def test_bad_scales_raise():
    x = torch.randn(1, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    for scales in ([1.0, 0.0], [-0.5], [], [math.nan], [1.0] * 65):
        with pytest.raises(ValueError, match="scales"):
            crop_error(x, boxes, scales=scales)
        with pytest.raises(ValueError, match="scales"):
            ssanet_ops.scale_candidates(boxes, scales, (8, 8))
    with pytest.raises(RuntimeError, match="scales must be positive"):
        torch.ops.ssanet_ops.multiscale_roi_crop(
            x, boxes, [1.0, -2.0], None, [3, 3], 1.0, -1, True, True
        )


def test_scales_as_a_tensor(device):
    # The same kernels as with a list, on every device (issue 20: simulate_cuda() refused the
    # tensor-scales ops), forward and backward, candidates and crops.
    x = torch.randn(2, 3, 8, 8, device=device)
    boxes = random_boxes(2, 8, 8).to(device)
    for deterministic in (True, False):
        with deterministic_algorithms(deterministic):
            out, grad = crop_and_gradient(
                ssanet_ops.multiscale_roi_crop, x, boxes, 3, torch.tensor(SCALES)
            )
            expected_out, expected_grad = crop_and_gradient(
                ssanet_ops.multiscale_roi_crop, x, boxes, 3, SCALES
            )
        torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
        # The atomic backward sums in the order the threads arrive.
        exact = deterministic or not runs_cuda_kernels(device)
        torch.testing.assert_close(
            grad, expected_grad, **({"rtol": 0, "atol": 0} if exact else tolerances(x))
        )
    torch.testing.assert_close(
        ssanet_ops.scale_candidates(boxes, torch.tensor(SCALES), (8, 8)),
        ssanet_ops.scale_candidates(boxes, SCALES, (8, 8)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match=r"scales must be a 1-d tensor"):
        crop_error(x, boxes, scales=torch.ones(2, 2, device=device))


@requires_simulator
def test_simulate_cuda_runs_tensor_scales_on_the_cuda_kernels():
    # Issue 20: the tensor-scales ops (Python ops calling the C++ ones) raised
    # NotSimulatedError inside simulate_cuda(), which the test hook reports as a skip, so it is
    # caught and failed here. Now they run the simulated kernels (as the profiler records), and
    # give what the simulated kernels give with a list.
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    boxes = random_boxes(2, 9, 8)
    grad_output = torch.randn(boxes.shape[0], len(SCALES), 3, 3, 3)

    def crop_gradient_and_candidates(scales):
        out = ssanet_ops.multiscale_roi_crop(x, boxes, 3, scales)
        (grad,) = torch.autograd.grad(out, x, grad_output)
        return out, grad, ssanet_ops.scale_candidates(boxes, scales, (9, 8))

    refused = None
    with simulate_cuda(), deterministic_algorithms(True):  # a backward that repeats to the bit
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as run:
                simulated = crop_gradient_and_candidates(torch.tensor(SCALES))
        except NotImplementedError as error:
            refused = str(error)
        simulated_with_list = crop_gradient_and_candidates(SCALES)
    assert refused is None, refused
    kernels = {f"ssanet_ops_sim::{name}" for name in ("multiscale_roi_crop", "scale_candidates")}
    kernels.add("ssanet_ops_sim::_multiscale_roi_crop_backward")
    assert kernels <= {event.name for event in run.events()}
    for actual, expected in zip(simulated, simulated_with_list, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_scales_on_another_device_than_the_cpu_are_refused():
    # Issue 20: a CUDA tensor of scales was read with .tolist(), a synchronisation in the forward
    # and the backward (no CUDA graph capture). The factors reach the kernels by value, so a
    # tensor of them must be on the CPU; another device is refused before any read (meta
    # stands in for CUDA here: reading it would fail).
    x = torch.randn(1, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    scales = torch.tensor(SCALES, device="meta")
    with pytest.raises(ValueError, match=r"scales must be a sequence or a CPU tensor.*meta"):
        crop_error(x, boxes, scales=scales)
    with pytest.raises(ValueError, match=r"scales must be a sequence or a CPU tensor.*meta"):
        ssanet_ops.scale_candidates(boxes, scales, (8, 8))


def test_scale_candidates_argument_errors():
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="image_size must be positive"):
        ssanet_ops.scale_candidates(boxes, SCALES, (0, 8))
    with pytest.raises(TypeError, match="image_size must be a"):
        ssanet_ops.scale_candidates(boxes, SCALES, 8)
    with pytest.raises(ValueError, match=r"centers must be a \[B, 2\]"):
        ssanet_ops.scale_candidates(boxes, SCALES, (8, 8), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"batch index.*\[0, 1\)"):
        ssanet_ops.scale_candidates(
            boxes + torch.tensor([1.0, 0, 0, 0, 0]), SCALES, (8, 8), torch.zeros(1, 2)
        )
    with pytest.raises(ValueError, match="centers must be finite"):
        ssanet_ops.scale_candidates(boxes, SCALES, (8, 8), torch.full((1, 2), math.nan))


def test_wrong_ranks_and_shapes_raise():
    x = torch.randn(1, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match=r"input must be a 4-d tensor"):
        crop_error(x[0], boxes)
    with pytest.raises(ValueError, match=r"boxes must be a 2-d tensor"):
        crop_error(x, boxes[0])
    with pytest.raises(ValueError, match=r"boxes must be a \[K, 5\]"):
        crop_error(x, boxes[:, 1:])
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a \[K_b, 4\]"):
        crop_error(x, [boxes])
    with pytest.raises(ValueError, match="one \\[K_b, 4\\] tensor per image"):
        crop_error(x, [boxes[:, 1:], boxes[:, 1:]])
    with pytest.raises(ValueError, match=r"centers must be a \[1, 2\]"):
        crop_error(x, boxes, centers=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="output_size must be positive"):
        crop_error(x, boxes, output_size=(0, 3))
    with pytest.raises(ValueError, match="spatial_scale"):
        crop_error(x, boxes, spatial_scale=0.0)
    with pytest.raises(TypeError, match="input must have one of the dtypes"):
        crop_error(x.int(), boxes)
    with pytest.raises(RuntimeError, match=r"boxes must be a \[K, 5\]"):
        torch.ops.ssanet_ops.multiscale_roi_crop(
            x, boxes[:, 1:], [1.0], None, [3, 3], 1.0, -1, True, True
        )
    with pytest.raises(RuntimeError, match="input must be a 4-d tensor"):
        torch.ops.ssanet_ops.multiscale_roi_crop(
            x[0], boxes, [1.0], None, [3, 3], 1.0, -1, True, True
        )


def test_mixed_devices_raise():
    # The meta device stands in for a second device where no GPU is present.
    x = torch.randn(1, 3, 8, 8)
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="input on cpu, boxes on meta"):
        crop_error(x, boxes.to("meta"))
    with pytest.raises(ValueError, match="centers on meta"):
        crop_error(x, boxes, centers=torch.zeros(1, 2, device="meta"))
    with pytest.raises(ValueError, match=r"boxes\[1\] on meta"):
        crop_error(torch.randn(2, 3, 8, 8), [boxes[:, 1:], boxes[:, 1:].to("meta")])


@requires_cuda
def test_mixed_cuda_and_cpu_raise():
    x = torch.randn(1, 3, 8, 8, device="cuda")
    boxes = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="input on cuda:0, boxes on cpu"):
        crop_error(x, boxes)
    with pytest.raises(RuntimeError, match="boxes must be on cuda"):
        torch.ops.ssanet_ops.multiscale_roi_crop(x, boxes, [1.0], None, [3, 3], 1.0, -1, True, True)
