"""torchvision's own RoIAlign test cases (its test/test_ops.py: TestRoIAlign and RoIOpTester),
ported to ``multiscale_roi_crop(..., scales=[1.0], clip=False)`` with ``aligned`` passed
explicitly: the drop-in promise of the README, tested the way torchvision tests roi_align.

With one scale of 1.0 the only candidate of a box is the box itself (docs/operators.md
section 2), so the crop must be roi_align: against torchvision's slow reference (rewritten
here, vectorized over channels), with its tolerances, inputs and boxes, and against
``torchvision.ops.roi_align`` itself. Where the port differs from torchvision's test, the
README's drop-in section lists the difference (ValueError instead of AssertionError for bad
box shapes, no TorchScript, no quantized tensors).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx

# These are torchvision's tests, against its roi_align: skipped without torchvision (an
# optional dependency, the "vision" extra) or beside a torch it was not made for (the reason
# says which, as ssanet's model layer does).
pytest.importorskip("ssanet._vision", exc_type=ImportError)

from torchvision.models.feature_extraction import get_graph_node_names
from torchvision.ops import roi_align

import ssanet_ops

from .conftest import requires_cuda


def crop(x, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, aligned=False):
    """roi_align's call, as multiscale_roi_crop: one scale of 1.0, no clipping."""
    out = ssanet_ops.multiscale_roi_crop(
        x,
        rois,
        (pool_h, pool_w),
        scales=[1.0],
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        clip=False,
    )
    return out.squeeze(1)  # [K, 1, C, oh, ow] -> roi_align's [K, C, oh, ow]


def make_module(pool_h=5, pool_w=5, spatial_scale=1, sampling_ratio=-1, aligned=False):
    return ssanet_ops.nn.MultiScaleRoICrop(
        (pool_h, pool_w), [1.0], spatial_scale, sampling_ratio, aligned, clip=False
    )


class CropWrapper(torch.nn.Module):
    """torchvision's RoIOpTesterModuleWrapper: the op module inside another module."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.n_inputs = 2

    def forward(self, a, b):
        return self.layer(a, b)


# ---- torchvision's slow reference ----


def bilinear_interpolate(data, y, x):
    """data [C, H, W] at the point (y, x), roi_align's way: snapped to the border within one
    pixel of it, then the weighted sum of the four neighbours that lie inside the map."""
    height, width = data.shape[-2:]
    if -1 < y <= 0:
        y = 0
    elif height - 1 <= y < height:
        y = height - 1
    if -1 < x <= 0:
        x = 0
    elif width - 1 <= x < width:
        x = width - 1
    y_low, x_low = math.floor(y), math.floor(x)
    high_y, high_x = y - y_low, x - x_low
    value = torch.zeros(data.shape[0], dtype=torch.float64)
    for weight_x, xp in ((1 - high_x, x_low), (high_x, x_low + 1)):
        for weight_y, yp in ((1 - high_y, y_low), (high_y, y_low + 1)):
            if 0 <= yp < height and 0 <= xp < width:
                value += weight_x * weight_y * data[:, yp, xp].double()
    return value


def expected_roi_align(
    data, rois, pool_h, pool_w, spatial_scale=1, sampling_ratio=-1, aligned=False
):
    """torchvision's expected_fn of TestRoIAlign, in float64 on the CPU."""
    data = data.detach().cpu()
    out = torch.zeros(rois.shape[0], data.shape[1], pool_h, pool_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for r, roi in enumerate(rois.cpu()):
        batch = int(roi[0])
        j_begin, i_begin, j_end, i_end = (v.item() * spatial_scale - offset for v in roi[1:])
        bin_h = (i_end - i_begin) / pool_h
        bin_w = (j_end - j_begin) / pool_w
        for i in range(pool_h):
            start_h = i_begin + i * bin_h
            grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
            for j in range(pool_w):
                start_w = j_begin + j * bin_w
                grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
                value = torch.zeros(data.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    y = start_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + (ix + 0.5) * bin_w / grid_w
                        value += bilinear_interpolate(data[batch], y, x)
                out[r, :, i, j] = value / (grid_h * grid_w)
    return out


ROIS = [[0, 0, 0, 9, 9], [0, 0, 5, 4, 9], [0, 5, 5, 9, 9], [1, 0, 0, 9, 9]]  # (xyxy)


def set_deterministic(deterministic: bool):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    return previous


# ---- forward (RoIOpTester.test_forward) ----


def check_forward(device, contiguous, x_dtype, aligned, rois_dtype=None, deterministic=False):
    rois_dtype = x_dtype if rois_dtype is None else rois_dtype
    tol = {torch.float16: 4e-3, torch.bfloat16: 1e-2}.get(x_dtype, 1e-5)
    pool_size = 5
    x = torch.rand(2, 2 * pool_size**2, 10, 10, dtype=x_dtype, device=device)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(ROIS, dtype=rois_dtype, device=device)
    previous = set_deterministic(deterministic)
    try:
        y = crop(x, rois, pool_size, pool_size, spatial_scale=1, sampling_ratio=-1, aligned=aligned)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert y.dtype == x.dtype  # with or without autocast, as torchvision asserts
    expected = expected_roi_align(x, rois, pool_size, pool_size, aligned=aligned)
    torch.testing.assert_close(expected.to(y), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
def test_forward(device, contiguous, deterministic, aligned, x_dtype):
    if deterministic and device.type == "cpu":
        pytest.skip("cpu is always deterministic, don't retest")
    check_forward(device, contiguous, x_dtype, aligned, deterministic=deterministic)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 3])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_equals_torchvision_roi_align(device, aligned, sampling_ratio, spatial_scale):
    x = torch.randn(2, 6, 12, 14, dtype=torch.float64, device=device)
    corner = torch.rand(9, 2, dtype=torch.float64) * 16 - 2
    size = torch.rand(9, 2, dtype=torch.float64) * 14
    rois = torch.cat([torch.randint(0, 2, (9, 1)).double(), corner, corner + size], 1).to(device)
    expected = roi_align(x, rois, (3, 4), spatial_scale, sampling_ratio, aligned)
    actual = crop(x, rois, 3, 4, spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(actual, expected)


# ---- backward (RoIOpTester.test_backward) ----


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
def test_backward(device, seed, contiguous, deterministic):
    if deterministic and device.type == "cpu":
        pytest.skip("cpu is always deterministic, don't retest")
    torch.random.manual_seed(seed)
    pool_size = 2
    x = torch.rand(
        1, 2 * pool_size**2, 5, 5, dtype=torch.float64, device=device, requires_grad=True
    )
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    rois = torch.tensor(
        [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]], dtype=torch.float64, device=device
    )

    def func(z):
        return crop(z, rois, pool_size, pool_size, spatial_scale=1, sampling_ratio=1)

    previous = set_deterministic(deterministic)
    try:
        assert torch.autograd.gradcheck(func, (x,), atol=1e-5)
    finally:
        torch.use_deterministic_algorithms(previous)


# ---- autocast (TestRoIAlign.test_autocast, and the same on the CPU) ----


@requires_cuda
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float, torch.half])
@pytest.mark.parametrize("rois_dtype", [torch.float, torch.half])
def test_autocast(aligned, deterministic, x_dtype, rois_dtype):
    with torch.autocast("cuda"):
        check_forward(
            torch.device("cuda"), False, x_dtype, aligned, rois_dtype, deterministic=deterministic
        )


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.half])
@pytest.mark.parametrize("x_dtype", [torch.float, torch.half, torch.bfloat16])
@pytest.mark.parametrize("rois_dtype", [torch.float, torch.half])
def test_autocast_cpu(aligned, autocast_dtype, x_dtype, rois_dtype):
    with torch.autocast("cpu", dtype=autocast_dtype):
        check_forward(torch.device("cpu"), False, x_dtype, aligned, rois_dtype)


# ---- FX (RoIOpTester.test_is_leaf_node, test_torch_fx_trace) ----


def test_is_leaf_node(device):
    op_obj = CropWrapper(make_module()).to(device=device)
    graph_node_names = get_graph_node_names(op_obj)
    assert len(graph_node_names) == 2
    assert len(graph_node_names[0]) == len(graph_node_names[1])
    # The inputs and one node for the op (its output node is not counted).
    assert len(graph_node_names[0]) == 1 + op_obj.n_inputs


def test_torch_fx_trace(device):
    op_obj = make_module().to(device=device)
    graph_module = torch.fx.symbolic_trace(op_obj)
    pool_size = 5
    x = torch.rand(2, 2 * pool_size**2, 5, 5, device=device)
    rois = torch.tensor(ROIS, dtype=torch.float, device=device)
    output_gt = op_obj(x, rois)
    assert output_gt.dtype == x.dtype
    output_fx = graph_module(x, rois)
    assert output_fx.dtype == x.dtype
    torch.testing.assert_close(output_gt, output_fx, rtol=1e-5, atol=1e-5)


# ---- boxes: shape errors, lists, none (RoIOpTester._helper_boxes_shape, test_jit_boxes_list) ----


def test_boxes_shape():
    a = torch.linspace(1, 8 * 8, 8 * 8).reshape(1, 1, 8, 8)
    # torchvision raises AssertionError; the crop a ValueError naming boxes.
    with pytest.raises(ValueError, match=r"boxes must be a \[K, 5\] tensor"):
        crop(a, torch.tensor([[0, 0, 3, 3]], dtype=a.dtype), 2, 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a \[K_b, 4\] tensor"):
        crop(a, [torch.tensor([[0, 0, 3]], dtype=a.dtype)], 2, 2)


def test_boxes_list():
    x = torch.rand(2, 1, 10, 10)
    roi = torch.tensor(ROIS, dtype=torch.float).t()  # torchvision's [5, 4] boxes per image
    rois = [roi, roi]
    model = CropWrapper(make_module(3, 3, aligned=False))
    y = model(x, rois)
    assert y.shape == (10, 1, 1, 3, 3)  # roi_align's (10, 1, 3, 3), with the scale axis
    as_tensor = torch.cat([torch.cat([torch.full((5, 1), float(b)), roi], 1) for b in range(2)])
    torch.testing.assert_close(y.squeeze(1), roi_align(x, as_tensor, 3, 1.0, -1, False))
    torch.testing.assert_close(y.squeeze(1), roi_align(x, rois, 3, 1.0, -1, False))


@pytest.mark.parametrize("aligned", [True, False])
def test_empty_boxes(device, aligned):
    x = torch.rand(2, 3, 10, 10, device=device, requires_grad=True)
    for rois in (torch.zeros(0, 5, device=device), [torch.zeros(0, 4, device=device)] * 2):
        y = crop(x, rois, 5, 5, aligned=aligned)
        expected = roi_align(x, rois, 5, 1.0, -1, aligned)
        assert y.shape == expected.shape == (0, 3, 5, 5)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad, torch.zeros_like(x))


# ---- opcheck (torchvision runs optests.generate_opcheck_tests over these cases) ----


@pytest.mark.parametrize("aligned", [True, False])
def test_opcheck(device, aligned):
    x = torch.rand(2, 8, 10, 10, device=device, requires_grad=True)
    rois = torch.tensor(ROIS, dtype=torch.float, device=device)
    torch.library.opcheck(
        torch.ops.ssanet_ops.multiscale_roi_crop.default,
        (x, rois, [1.0], None, [5, 5], 1.0, -1, aligned, False),
    )
