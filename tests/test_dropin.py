"""The drop-in promises of issue 12 (items 1-3 and 5): torch.fx leaves, CPU float16/bfloat16
and autocast, integral numbers and numpy arguments as roi_align takes them, scales as a tensor
under torch.compile, scale_factors' limits, the modules' constructor checks and error messages
that name the function's own arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx

import ssanet_ops
from ssanet_ops import reference

from .conftest import requires_torchvision

SCALES = [0.8, 1.0, 1.25]
BOXES = torch.tensor([[0, 1.0, 1.2, 5.5, 6.0], [1, 0.2, 0.3, 3.3, 6.6], [1, 4.0, 2.0, 9.5, 8.0]])


# ---- 1. torch.fx: every public op and module is a leaf ----


class UserModel(torch.nn.Module):
    """A small model that calls each public op and module, the way a user would."""

    def __init__(self) -> None:
        super().__init__()
        self.crop = ssanet_ops.nn.MultiScaleRoICrop(7, SCALES, 1.0, 2, aligned=True)
        self.pool = ssanet_ops.nn.OrientedPool(3, 3)
        self.align = ssanet_ops.nn.ScaleAlign(4 * 3 * 27, 5, len(SCALES))
        self.reduce = torch.nn.Conv2d(3, 3, 1)

    def forward(self, images, boxes, weight):
        parts = self.crop(self.reduce(images), boxes)  # [K, S, C, 7, 7]
        flat = parts.flatten(0, 1)
        pooled = self.pool(flat) + ssanet_ops.oriented_pool(flat)  # [K*S, 4, 3*27]
        phi = pooled.reshape(parts.shape[0], len(SCALES), -1)
        logits, shift = self.align(phi)
        corr = ssanet_ops.scale_correlation(phi, weight)
        _, shift_fn = ssanet_ops.scale_align(phi, weight)
        candidates = ssanet_ops.scale_candidates(boxes, SCALES, (10, 12))
        crops = ssanet_ops.multiscale_roi_crop(images, boxes, 2, SCALES, aligned=False)
        return logits, shift, corr, shift_fn, candidates, crops


OP_FUNCTIONS = {
    ssanet_ops.ops.oriented_pool,
    ssanet_ops.ops.scale_candidates,
    ssanet_ops.ops.multiscale_roi_crop,
    ssanet_ops.ops.scale_correlation,
    ssanet_ops.ops.scale_align,
}


def leaf_calls(graph_module: torch.fx.GraphModule) -> list:
    return [
        node.target
        for node in graph_module.graph.nodes
        if node.op == "call_function" and node.target in OP_FUNCTIONS
    ]


def test_user_model_traces_with_the_ops_as_leaves_and_matches_eager():
    model = UserModel().double()
    traced = torch.fx.symbolic_trace(model)
    # Every op is one node (the module's op, the functional calls): none was traced through.
    calls = leaf_calls(traced)
    assert sorted(call.__name__ for call in calls) == sorted(
        ["multiscale_roi_crop", "oriented_pool", "oriented_pool", "scale_align"]
        + ["scale_correlation", "scale_align", "scale_candidates", "multiscale_roi_crop"]
    )
    images = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    weight = torch.randn(5, len(SCALES), 4 * 3 * 27, dtype=torch.float64)
    boxes = BOXES.double()
    outputs = zip(traced(images, boxes, weight), model(images, boxes, weight), strict=True)
    for actual, expected in outputs:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "module",
    [
        ssanet_ops.nn.MultiScaleRoICrop(5, [1.0], 1.0, -1, False, clip=False),
        ssanet_ops.nn.OrientedPool(3, 3),
        ssanet_ops.nn.ScaleAlign(6, 4, 3),
    ],
    ids=["MultiScaleRoICrop", "OrientedPool", "ScaleAlign"],
)
def test_each_module_traces_to_one_call(module):
    traced = torch.fx.symbolic_trace(module)
    assert len(leaf_calls(traced)) == 1


@requires_torchvision
def test_fx_feature_extraction_of_a_model_with_the_crop():
    # torchvision's create_feature_extractor is FX-based.
    from torchvision.models.feature_extraction import create_feature_extractor

    model = UserModel()
    extractor = create_feature_extractor(model, return_nodes={"crop": "parts"})
    images = torch.randn(2, 3, 10, 12)
    parts = extractor(images, BOXES, torch.randn(5, 3, 324))["parts"]
    torch.testing.assert_close(parts, model.crop(model.reduce(images), BOXES))


# ---- 2. CPU float16 and bfloat16 ----

REDUCED = [torch.float16, torch.bfloat16]


def reduced_tolerance(dtype: torch.dtype) -> dict:
    # One rounding of a float32 result: 2^-11 (float16) or 2^-8 (bfloat16) relative.
    return {"rtol": 2e-3, "atol": 2e-3} if dtype == torch.float16 else {"rtol": 1e-2, "atol": 1e-2}


@pytest.mark.parametrize("dtype", REDUCED)
def test_cpu_reduced_oriented_pool(dtype):
    x = torch.randn(2, 4, 7, 7).to(dtype).requires_grad_()
    rounded = x.detach().float().requires_grad_()
    out = ssanet_ops.oriented_pool(x)
    expected = reference.oriented_pool(rounded)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0)  # a max is exact
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.float())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), rounded.grad, **reduced_tolerance(dtype))


@requires_torchvision
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("channels", [3, 20])  # plane by plane, and channels-last chunks
def test_cpu_reduced_multiscale_roi_crop(dtype, channels):
    x = torch.randn(2, channels, 10, 12).to(dtype).requires_grad_()
    rounded = x.detach().float().requires_grad_()
    out = ssanet_ops.multiscale_roi_crop(x, BOXES, 3, SCALES, sampling_ratio=2)
    expected = reference.multiscale_roi_crop(rounded, BOXES, 3, SCALES, sampling_ratio=2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, **reduced_tolerance(dtype))
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.float())
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), rounded.grad, **reduced_tolerance(dtype))


@pytest.mark.parametrize("dtype", REDUCED)
def test_cpu_reduced_scale_align(dtype):
    phi = torch.randn(4, 5, 16).to(dtype).requires_grad_()
    weight = torch.randn(3, 5, 16).to(dtype).requires_grad_()
    rounded = [t.detach().float().requires_grad_() for t in (phi, weight)]
    logits, shift = ssanet_ops.scale_align(phi, weight)
    corr = ssanet_ops.scale_correlation(phi, weight)
    assert logits.dtype == corr.dtype == dtype
    expected_corr = reference.scale_correlation(*rounded)
    # The products accumulate in float32: the error is the output's rounding.
    tolerance = (
        {"rtol": 1e-2, "atol": 5e-2} if dtype == torch.float16 else {"rtol": 2e-2, "atol": 0.2}
    )
    torch.testing.assert_close(corr.float(), expected_corr, **tolerance)
    chosen = expected_corr.gather(-1, shift.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logits.float(), chosen, **tolerance)
    grad = torch.randn_like(logits)
    logits.backward(grad)
    chosen.backward(grad.float())
    for actual, expected in zip((phi.grad, weight.grad), rounded, strict=True):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected.grad, **tolerance)


@requires_torchvision
def test_cpu_autocast_runs_the_crop_in_float32_and_keeps_the_input_dtype():
    # torchvision's roi_align under CPU (and CUDA) autocast: computed in float32, returned in
    # the input's dtype; a float32 input stays float32.
    images = torch.randn(2, 3, 10, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = ssanet_ops.multiscale_roi_crop(images, BOXES, 3, SCALES)
        reduced = ssanet_ops.multiscale_roi_crop(images.bfloat16(), BOXES, 3, SCALES)
        pooled = ssanet_ops.oriented_pool(images.bfloat16(), 3, 2, 2)
    assert kept.dtype == torch.float32 and reduced.dtype == pooled.dtype == torch.bfloat16
    torch.testing.assert_close(kept, reference.multiscale_roi_crop(images, BOXES, 3, SCALES))
    torch.testing.assert_close(
        reduced.float(),
        reference.multiscale_roi_crop(images.bfloat16().float(), BOXES, 3, SCALES),
        **reduced_tolerance(torch.bfloat16),
    )


# ---- 3 and 5. arguments as a user passes them ----


@pytest.mark.parametrize(
    ("output_size", "sampling_ratio"),
    [
        (np.int64(3), np.int64(2)),
        ((np.int32(3), np.int64(3)), np.int32(2)),
        (np.array([3, 3]), np.uint8(2)),
        (torch.tensor(3), 2),
    ],
    ids=["numpy-ints", "tuple-of-numpy-ints", "numpy-array", "int-tensor"],
)
def test_integral_numbers_as_roi_align_takes_them(output_size, sampling_ratio):
    x = torch.randn(2, 3, 10, 12)
    expected = ssanet_ops.multiscale_roi_crop(x, BOXES, 3, SCALES, sampling_ratio=2)
    actual = ssanet_ops.multiscale_roi_crop(
        x, BOXES, output_size, SCALES, sampling_ratio=sampling_ratio
    )
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    module = ssanet_ops.nn.MultiScaleRoICrop(output_size, SCALES, sampling_ratio=sampling_ratio)
    torch.testing.assert_close(module(x, BOXES), expected, rtol=0, atol=0)
    pooled = ssanet_ops.oriented_pool(x, np.int64(3), np.int64(2), np.array([7, 9]))
    torch.testing.assert_close(pooled, ssanet_ops.oriented_pool(x, 3, 2, (7, 9)))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("output_size", True),
        ("output_size", 3.0),
        ("output_size", (3, 2.5)),
        ("sampling_ratio", 2.0),
    ],
)
def test_non_integral_numbers_are_refused(argument, value):
    kwargs = {"output_size": 3, "sampling_ratio": 2, argument: value}
    with pytest.raises(TypeError, match=argument):
        ssanet_ops.multiscale_roi_crop(torch.randn(2, 3, 10, 12), BOXES, scales=SCALES, **kwargs)


def test_numpy_image_size_and_scales():
    expected = ssanet_ops.scale_candidates(BOXES, SCALES, (10, 12))
    for image_size in (
        np.array([10, 12]),
        (np.int64(10), np.float32(12.0)),
        np.array([10.0, 12.0]),
    ):
        for scales in (
            np.array(SCALES),
            np.array(SCALES, dtype=np.float32),
            [np.float64(s) for s in SCALES],
        ):
            actual = ssanet_ops.scale_candidates(BOXES, scales, image_size)
            torch.testing.assert_close(actual, expected)
    x = torch.randn(2, 3, 10, 12)
    torch.testing.assert_close(
        ssanet_ops.multiscale_roi_crop(x, BOXES, 3, np.array(SCALES)),
        ssanet_ops.multiscale_roi_crop(x, BOXES, 3, SCALES),
    )
    assert ssanet_ops.scale_factors(np.float32(2.0), np.int64(3)) == [0.5, 1.0, 2.0]


def test_scales_as_a_tensor_under_torch_compile_fullgraph():
    x = torch.randn(2, 3, 10, 12, requires_grad=True)

    def crop_and_candidates(x, boxes, scales):
        crops = ssanet_ops.multiscale_roi_crop(x, boxes, 3, scales, sampling_ratio=2)
        return crops, ssanet_ops.scale_candidates(boxes, scales, (10, 12))

    compiled = torch.compile(crop_and_candidates, fullgraph=True, backend="aot_eager")
    # New values in a tensor of the same shape must give new results (no stale constants).
    for values in (SCALES, [0.5, 1.0, 2.0]):
        crops, candidates = compiled(x, BOXES, torch.tensor(values))
        expected_crops, expected_candidates = crop_and_candidates(x, BOXES, values)
        torch.testing.assert_close(crops, expected_crops)
        torch.testing.assert_close(candidates, expected_candidates)
        grad = torch.randn_like(crops)
        (actual_grad,) = torch.autograd.grad(crops, x, grad)
        (expected_grad,) = torch.autograd.grad(expected_crops, x, grad)
        torch.testing.assert_close(actual_grad, expected_grad)
    with pytest.raises(ValueError, match="scales must be positive finite factors"):
        compiled(x, BOXES, torch.tensor([1.0, -2.0, 3.0]))


def test_scales_as_a_tensor_pass_opcheck_and_double_backward():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor(SCALES, dtype=torch.float64)
    arguments = (x, BOXES.double(), scales, None, [3, 2], 1.0, 2, True, True)
    torch.library.opcheck(
        torch.ops.ssanet_ops._multiscale_roi_crop_tensor_scales.default, arguments
    )
    assert torch.autograd.gradgradcheck(
        lambda t: ssanet_ops.multiscale_roi_crop(
            t, BOXES.double(), (3, 2), scales, sampling_ratio=2
        ),
        (x,),
    )


def test_scale_factors_refuse_what_the_ops_refuse():
    assert len(ssanet_ops.scale_factors(1.01, 63)) == 63
    with pytest.raises(ValueError, match="S must be at most 64"):
        ssanet_ops.scale_factors(1.01, 65)
    for alpha in (1e300, 1e-300):  # alpha^2 overflows / alpha^-2 overflows
        with pytest.raises(ValueError, match="outside the positive finite floats"):
            ssanet_ops.scale_factors(alpha, 5)
    with pytest.raises(ValueError, match="outside the positive finite floats"):
        ssanet_ops.scale_factors(1e-200, 5)  # alpha^2 underflows to 0
    with pytest.raises(ValueError, match="S must be a positive odd int"):
        ssanet_ops.scale_factors(2.0, True)
    with pytest.raises(TypeError, match="alpha must be a number"):
        ssanet_ops.scale_factors("2", 3)


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"patch_size": 0}, ValueError, "patch_size must be positive"),
        ({"patch_size": 2.5}, TypeError, "patch_size"),
        ({"grid_size": (2, 3)}, ValueError, "grid_size must be square"),
        ({"grid_size": 300}, ValueError, r"grid_size must be in \[1, 256\]"),
        ({"stride": -1}, ValueError, "stride must be non-negative"),
        ({"stride": "2"}, TypeError, "stride"),
    ],
)
def test_oriented_pool_module_checks_its_settings(settings, error, match):
    with pytest.raises(error, match=match):
        ssanet_ops.nn.OrientedPool(**settings)


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"output_size": 0}, ValueError, "output_size must be positive"),
        ({"output_size": (2, 2, 2)}, TypeError, "output_size"),
        ({"scales": []}, ValueError, "scales must hold 1 to 64"),
        ({"scales": [1.0, float("nan")]}, ValueError, "scales must be positive finite"),
        ({"spatial_scale": 0.0}, ValueError, "spatial_scale must be positive"),
        ({"spatial_scale": "1"}, TypeError, "spatial_scale must be a number"),
        ({"sampling_ratio": 1.5}, TypeError, "sampling_ratio must be an int"),
    ],
)
def test_crop_module_checks_its_settings(settings, error, match):
    arguments = {"output_size": 3, "scales": SCALES, **settings}
    with pytest.raises(error, match=match):
        ssanet_ops.nn.MultiScaleRoICrop(**arguments)


def test_errors_name_the_functions_own_arguments():
    # scale_candidates has no input: a batch index beyond its centers names centers.
    with pytest.raises(RuntimeError, match=r"scale_candidates: .*\[0, 1\) \(the rows of centers\)"):
        ssanet_ops.scale_candidates(BOXES, SCALES, (10, 12), centers=torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match=r"\[0, 1\) \(the batch size of input\)"):
        ssanet_ops.multiscale_roi_crop(torch.randn(1, 3, 10, 12), BOXES, 3, SCALES)
