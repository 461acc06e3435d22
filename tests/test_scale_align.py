"""scale_correlation and scale_align (docs/operators.md section 3) against the two references,
gradcheck, opcheck, torch.compile, ties, empty inputs, errors, autocast, and the ScaleAlign
module."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ssanet_ops
from ssanet_ops import _scale_align_arguments, reference
from ssanet_ops.nn import ScaleAlign
from ssanet_ops.testing import simulating

from .conftest import requires_cuda

SCALES = [1, 2, 3, 5, 7, 9]
MAX_SCALES = 2048  # kMaxScales of csrc/scale_align/arguments.h


def make_inputs(
    scales,
    proposals=4,
    classes=3,
    features=13,
    groups=None,
    dtype=torch.float64,
    device="cpu",
    bias=False,
):
    """phi [G?, N, S, D], weight [G?, C, S, D] and bias [G?, C] (or None), all requiring grad."""
    lead = () if groups is None else (groups,)
    phi = torch.randn(*lead, proposals, scales, features, dtype=dtype, device=device)
    weight = torch.randn(*lead, classes, scales, features, dtype=dtype, device=device)
    bias_tensor = torch.randn(*lead, classes, dtype=dtype, device=device) if bias else None
    tensors = [phi, weight] + ([bias_tensor] if bias else [])
    for tensor in tensors:
        tensor.requires_grad_()
    return phi, weight, bias_tensor


def grads(outputs, inputs, grad_outputs):
    inputs = [tensor for tensor in inputs if tensor is not None]
    return torch.autograd.grad(outputs, inputs, grad_outputs)


def assert_close_tuple(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **tolerance)


# ---- the references ----


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("groups", [None, 2])
def test_references_agree(scales, groups):
    phi, weight, _ = make_inputs(scales, groups=groups)
    direct = reference.scale_correlation(phi, weight)
    fourier = reference.scale_correlation_fft(phi, weight)
    torch.testing.assert_close(fourier, direct)
    grad = torch.randn_like(direct)
    assert_close_tuple(grads(fourier, (phi, weight), grad), grads(direct, (phi, weight), grad))


def test_reference_is_the_spec_sum():
    # corr[n, c, r] = sum over j, d of phi[n, j, d] * weight[c, (j + r) mod S, d], spelled out.
    phi, weight, _ = make_inputs(5, proposals=2, classes=2, features=3)
    expected = torch.zeros(2, 2, 5, dtype=torch.float64)
    for r in range(5):
        for j in range(5):
            expected[:, :, r] += phi[:, j].detach() @ weight[:, (j + r) % 5].detach().T
    torch.testing.assert_close(reference.scale_correlation(phi, weight).detach(), expected)


# ---- the ops against the references ----


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("groups", [None, 3])
def test_correlation_matches_reference(device, scales, groups):
    phi, weight, _ = make_inputs(scales, groups=groups, device=device)
    expected = reference.scale_correlation(phi, weight)
    actual = ssanet_ops.scale_correlation(phi, weight)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    assert_close_tuple(grads(actual, (phi, weight), grad), grads(expected, (phi, weight), grad))


@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_align_matches_reference(device, scales, groups, bias):
    phi, weight, bias_tensor = make_inputs(scales, groups=groups, device=device, bias=bias)
    expected_logits, expected_shift = reference.scale_align(phi, weight, bias_tensor)
    logits, shift = ssanet_ops.scale_align(phi, weight, bias_tensor)
    assert shift.dtype == torch.int64 and logits.shape == expected_logits.shape
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(shift, expected_shift)
    grad = torch.randn_like(expected_logits)
    inputs = (phi, weight, bias_tensor)
    assert_close_tuple(grads(logits, inputs, grad), grads(expected_logits, inputs, grad))


@pytest.mark.parametrize(("scales", "features"), [(5, 1), (3, 2), (5, 4099), (2, 3001)])
def test_feature_lengths(device, scales, features):
    # D from 1 to several thousand: long D runs in several chunks and parallel tasks on the CPU.
    phi, weight, bias = make_inputs(
        scales, proposals=8, classes=50, features=features, device=device, bias=True
    )
    expected_logits, expected_shift = reference.scale_align(phi, weight, bias)
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(shift, expected_shift)
    grad = torch.randn_like(logits)
    inputs = (phi, weight, bias)
    assert_close_tuple(grads(logits, inputs, grad), grads(expected_logits, inputs, grad))


def test_float32_against_float64_reference(device):
    phi, weight, bias = make_inputs(
        5,
        proposals=16,
        classes=40,
        features=2048,
        groups=2,
        dtype=torch.float32,
        device=device,
        bias=True,
    )
    corr = ssanet_ops.scale_correlation(phi, weight)
    expected = reference.scale_correlation(phi.double(), weight.double())
    # The sums run over S*D = 10240 products of unit-variance terms (about 100 in size).
    torch.testing.assert_close(corr, expected.float(), atol=2e-3, rtol=1e-4)
    grad = torch.randn_like(corr)
    actual_grads = grads(corr, (phi, weight), grad)
    expected_grads = grads(expected, (phi, weight), grad.double())
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e.float(), atol=1e-4, rtol=1e-4)


def test_non_contiguous_inputs(device):
    phi_base = torch.randn(13, 4, 5, dtype=torch.float64, device=device)  # [D, N, S]
    weight_base = torch.randn(3, 26, 5, dtype=torch.float64, device=device)  # [C, 2D, S]
    phi = phi_base.permute(1, 2, 0).requires_grad_()  # [N, S, D], D strided
    weight = weight_base[:, ::2].transpose(1, 2).requires_grad_()  # [C, S, D], every other d
    bias = torch.randn(6, dtype=torch.float64, device=device)[::2].requires_grad_()
    assert not phi.is_contiguous() and not weight.is_contiguous()
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    expected_logits, expected_shift = reference.scale_align(phi, weight, bias)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(shift, expected_shift)
    grad = torch.randn(3, 4, dtype=torch.float64, device=device).T  # non-contiguous gradient
    inputs = (phi, weight, bias)
    assert_close_tuple(grads(logits, inputs, grad), grads(expected_logits, inputs, grad))


def test_repeated_calls_are_identical(device):
    phi, weight, bias = make_inputs(
        5, proposals=8, classes=30, features=3000, dtype=torch.float32, device=device, bias=True
    )
    first = ssanet_ops.scale_align(phi, weight, bias)
    second = ssanet_ops.scale_align(phi, weight, bias)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ---- ties, special values, empty inputs ----


def test_ties_go_to_the_lowest_shift(device):
    # Zero phi rows: every shift responds exactly 0 (+ bias), so shift 0 wins.
    phi, weight, bias = make_inputs(5, proposals=4, classes=3, device=device, bias=True)
    phi = phi.detach().clone()
    phi[1:3] = 0
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    assert torch.equal(shift[1:3], torch.zeros_like(shift[1:3]))
    torch.testing.assert_close(logits[1:3], bias.detach().expand(2, 3))


@pytest.mark.parametrize("scales", [2, 4])
def test_periodic_phi_ties_to_the_first_period(device, scales):
    # phi periodic over scales with period 2: corr[r] == corr[r + 2], exactly so in the Fourier
    # form too where the twiddles are exact (quarter turns: S = 2, 4). The argmax must lie in the
    # first period {0, 1}, on whichever of the two shifts is larger.
    period = torch.randn(6, 2, 11, dtype=torch.float64, device=device)
    phi = period.repeat(1, scales // 2, 1)
    weight = torch.randn(7, scales, 11, dtype=torch.float64, device=device)
    _, shift = ssanet_ops.scale_align(phi, weight)
    corr = reference.scale_correlation(phi, weight)
    assert torch.equal(shift, corr[..., :2].argmax(dim=-1))


def assert_within(actual: torch.Tensor, expected: np.ndarray, bound: np.ndarray):
    """|actual - expected| <= bound elementwise, expected and bound in float64."""
    error = np.abs(actual.detach().cpu().double().numpy() - expected)
    assert (error <= bound).all(), f"largest error / bound: {(error / bound).max()}"


@pytest.mark.parametrize("scales", [3, 5, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [None, 2])
def test_exact_ties_give_shift_zero(device, scales, dtype, groups):
    # phi equal at every scale: every shift r responds sum_j <phi[n, 0], weight[c, j]> in real
    # arithmetic, which the Fourier form reaches to within its rounding, so the tie rule of
    # docs/operators.md section 3 gives shift 0, and the gradient goes through shift 0. Rows of
    # norms from 1e-3 to 1e3 check that each (n, c) gets its own tolerance. numpy, float64, on the
    # values the op sees.
    rng = np.random.default_rng(scales)
    lead = () if groups is None else (groups,)
    proposals, classes, features = 40, 30, 23

    def rows(count, length):
        magnitude = 10.0 ** rng.uniform(-3, 3, (*lead, count, 1, 1))
        values = rng.standard_normal((*lead, count, length, features)) * magnitude
        return torch.from_numpy(values).to(dtype).double().numpy()

    row = rows(proposals, 1)
    weight = rows(classes, scales)
    bias = torch.randn(*lead, classes, dtype=dtype).double().numpy()
    grad = torch.randn(*lead, proposals, classes, dtype=dtype).double().numpy()
    phi = np.repeat(row, scales, axis=-2)
    eps = torch.finfo(dtype).eps
    phi_norm = np.linalg.norm(phi, axis=(-2, -1))
    weight_norm = np.linalg.norm(weight, axis=(-2, -1))
    tolerance = 8 * scales * eps * phi_norm[..., :, None] * weight_norm[..., None, :]
    expected_logits = np.einsum("...nd,...cd->...nc", row[..., 0, :], weight.sum(axis=-2))
    expected_logits = expected_logits + bias[..., None, :]
    # eq. 8 at r* = 0: d phi[n, j] = sum_c g[n, c] weight[c, j], d weight[c, m] = sum_n g[n, c]
    # phi[n, m]; each within the rounding of sums of |g| times the other input's norms.
    expected_grads = (
        np.einsum("...nc,...cjd->...njd", grad, weight),
        np.einsum("...nc,...njd->...cjd", grad, phi),
    )
    grad_bounds = (
        8 * scales * eps * np.einsum("...nc,...c->...n", np.abs(grad), weight_norm),
        8 * scales * eps * np.einsum("...nc,...n->...c", np.abs(grad), phi_norm),
    )

    inputs = [
        torch.from_numpy(x).to(device=device, dtype=dtype).requires_grad_()
        for x in (phi, weight, bias)
    ]
    logits, shift = ssanet_ops.scale_align(*inputs)
    assert torch.equal(shift, torch.zeros_like(shift))
    assert torch.equal(reference.scale_align(*inputs)[1], shift)
    assert_within(logits, expected_logits, tolerance + eps * np.abs(expected_logits))
    actual_grads = grads(logits, inputs[:2], torch.from_numpy(grad).to(device=device, dtype=dtype))
    for actual, expected, bound in zip(actual_grads, expected_grads, grad_bounds, strict=True):
        assert_within(actual, expected, bound[..., None, None])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tie_tolerance_separates_ties_from_differences(device, dtype):
    # S = 2 and weight [[1], [0]]: corr = (phi[n, 0], phi[n, 1]). phi[n, 1] above phi[n, 0] by a
    # quarter of the tolerance (even rows) ties, shift 0; by four times it (odd rows) wins,
    # shift 1. The expected shifts come from numpy on the values the op sees.
    eps = torch.finfo(dtype).eps
    first = 1 + np.random.default_rng(0).random(20)
    tolerance = 8 * 2 * eps * np.sqrt(2) * first  # ||phi[n]|| ~ sqrt(2) * first, ||weight|| = 1
    second = first + np.where(np.arange(20) % 2 == 0, 0.25, 4.0) * tolerance
    phi = torch.from_numpy(np.stack([first, second], axis=-1)[..., None]).to(dtype)  # [20, 2, 1]
    values = phi.double().numpy()[..., 0]
    exact_tolerance = 8 * 2 * eps * np.linalg.norm(values, axis=-1)
    expected = (values[:, 1] - values[:, 0] > exact_tolerance).astype(np.int64)
    assert expected.tolist() == [0, 1] * 10
    weight = torch.tensor([[[1.0], [0.0]]], dtype=dtype)
    _, shift = ssanet_ops.scale_align(phi.to(device), weight.to(device))
    assert shift[:, 0].tolist() == expected.tolist()
    assert reference.scale_align(phi, weight)[1][:, 0].tolist() == expected.tolist()


def test_bias_takes_no_part_in_the_argmax(device):
    # corr = (0, 1) for every class (S = 2, phi = [[0], [1]], weight [[1], [0]]): shift 1 whatever
    # the bias (issue 12): a NaN or infinite bias must not force shift 0, nor a bias of 1e8, at
    # which 0 + 1e8 and 1 + 1e8 round to one float32.
    bias = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e8, -1e8, 0.0], device=device)
    phi = torch.tensor([[[0.0], [1.0]]], device=device)
    weight = torch.tensor([[1.0], [0.0]], device=device).repeat(6, 1, 1)
    for align in (ssanet_ops.scale_align, reference.scale_align):
        logits, shift = align(phi, weight, bias)
        assert torch.equal(shift, torch.ones_like(shift))
        torch.testing.assert_close(logits, (1 + bias).unsqueeze(0), equal_nan=True)
    # Random responses: the shifts with huge or non-finite biases are those without a bias.
    phi, weight, _ = make_inputs(5, proposals=20, classes=6, dtype=torch.float32, device=device)
    _, expected_shift = ssanet_ops.scale_align(phi, weight)
    _, shift = ssanet_ops.scale_align(phi, weight, bias * 1e22)
    assert torch.equal(shift, expected_shift)


def test_nan_propagates(device):
    phi, weight, _ = make_inputs(5, device=device)
    phi = phi.detach().clone()
    phi[0, 2, 3] = float("nan")
    logits, shift = ssanet_ops.scale_align(phi, weight)
    assert torch.isnan(logits[0]).all() and torch.equal(shift[0], torch.zeros_like(shift[0]))
    assert not torch.isnan(logits[1:]).any()


# ---- the logit is the maximum as computed (issue 20): near-ties and accuracy ----


def tie_tolerance(phi: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """tol [G?, N, C] of docs/operators.md section 3 for inputs of `dtype`, in float64."""
    norms = [torch.linalg.vector_norm(x.detach().double(), dim=(-2, -1)) for x in (phi, weight)]
    eps = torch.finfo(dtype).eps
    return 8 * phi.shape[-2] * eps * norms[0].unsqueeze(-1) * norms[1].unsqueeze(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logit_is_the_maximum_near_ties(device, dtype):
    # phi[n, j] = u[n] + t * e[n, j]: every shift responds <u[n], sum_m weight[c, m]> plus t times
    # the correlation of e[n] with weight[c], t set so that the responses spread over about half
    # the tie tolerance. So a lower shift is often tied with the best without being the best:
    # the shift reported is that lower one, while the logit must be the maximum (the old rule
    # returned the lower shift's response, up to tol below it) and the gradient that of the
    # reported shift's response. Checked against the float64 direct form.
    scales, proposals, classes, features = 5, 30, 40, 23
    generator = torch.Generator().manual_seed(5)
    common = torch.randn(proposals, 1, features, generator=generator, dtype=torch.float64)
    spread = torch.randn(proposals, scales, features, generator=generator, dtype=torch.float64)
    weight = torch.randn(classes, scales, features, generator=generator, dtype=torch.float64)
    bias = torch.randn(classes, generator=generator, dtype=torch.float64)
    phi_common = common.expand(proposals, scales, features)
    spread_corr = reference.scale_correlation(spread, weight)
    tolerance = tie_tolerance(phi_common, weight, dtype)
    scale = 0.5 * tolerance / (spread_corr.amax(-1) - spread_corr.amin(-1))
    phi = phi_common + scale.median() * spread
    phi, weight, bias = (
        x.to(device=device, dtype=dtype).requires_grad_() for x in (phi, weight, bias)
    )

    corr = reference.scale_correlation(phi.double(), weight.double())  # exact enough: float64
    best = corr.detach().amax(dim=-1)
    gaps = best - corr.detach()[..., 0]
    tolerance = tie_tolerance(phi, weight, dtype)
    # The premise: many (n, c) whose shift 0 is tied but below the maximum by twice the bound
    # checked below, or more.
    assert ((gaps > tolerance / 4) & (gaps < tolerance / 2)).sum() >= 50
    for align in (ssanet_ops.scale_align, reference.scale_align):
        logits, shift = align(phi, weight, bias)
        # The value: the float64 maximum, within a rounding well below the tolerance (about
        # tol / 30 in float64, where the direct form's own rounding is as large; the old rule
        # missed it by up to tol).
        error = (logits.detach().double() - bias.detach().double() - best).abs()
        assert (error <= tolerance / 8).all(), f"largest error / tol: {(error / tolerance).max()}"
        # The shift: the lowest tied one (up to the rounding of the op's own responses).
        tied = corr.detach() >= (best - tolerance).unsqueeze(-1)
        expected_shift = tied.byte().argmax(dim=-1)
        assert (shift != expected_shift).float().mean() < 0.02
        # The gradient: that of the response at the reported shift (eq. 8).
        corr = reference.scale_correlation(phi.double(), weight.double())
        at_shift = corr.gather(-1, shift.unsqueeze(-1)).squeeze(-1)
        grad = torch.randn_like(logits)
        expected_grads = grads(at_shift, (phi, weight), grad.double())
        for a, e in zip(grads(logits, (phi, weight), grad), expected_grads, strict=True):
            torch.testing.assert_close(
                a.double(), e.double(), rtol=0, atol=1e-4 if dtype == torch.float32 else 1e-12
            )
    # The README's check: scale_align's logits are scale_correlation's maximum, plus the bias.
    torch.testing.assert_close(
        ssanet_ops.scale_correlation(phi, weight).amax(dim=-1) + bias,
        ssanet_ops.scale_align(phi, weight, bias)[0],
    )


def float32_inputs(proposals: int, features: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The issue's case: random phi [N, 5, D] and weight [200, 5, D] / sqrt(D), float32."""
    phi = torch.randn(proposals, 5, features, device=device)
    weight = torch.randn(200, 5, features, device=device) / features**0.5
    return phi, weight


def largest_errors(phi, weight, exact) -> tuple[float, float]:
    """Largest |logit - exact| of ssanet_ops.scale_align and of the same maximum computed with
    torch.fft (reference.scale_correlation_fft) in the inputs' dtype."""
    logits, _ = ssanet_ops.scale_align(phi, weight)
    fft = reference.scale_correlation_fft(phi, weight).amax(dim=-1)
    return tuple((x.double().cpu() - exact).abs().max().item() for x in (logits, fft))


@pytest.mark.parametrize(
    ("proposals", "features"),
    [(96, 2048), pytest.param(8, 100_352, marks=pytest.mark.slow)],
)
def test_float32_logits_as_accurate_as_torch_fft(device, proposals, features):
    # Issue 20: the logits' error against the float64 computation (on the same float32 values)
    # within 10x that of torch.fft in float32; it was 346x at D = 2,048 and 692x at 100,352.
    phi, weight = float32_inputs(proposals, features, device)
    exact = reference.scale_correlation(phi.cpu().double(), weight.cpu().double()).amax(dim=-1)
    ours, fft = largest_errors(phi, weight, exact)
    assert ours <= 10 * fft, f"scale_align {ours:.3g}, torch.fft {fft:.3g}"


def exact_correlation(phi_int: torch.Tensor, weight_int: torch.Tensor) -> torch.Tensor:
    """corr of integer-valued float64 tensors, exactly: every partial sum of the direct form is
    an integer below 2**53 (checked on the sums of absolute products), so no step rounds,
    whatever order the GEMM adds in."""
    largest = torch.einsum("nsd,csd->nc", phi_int.abs(), weight_int.abs()).amax(dim=-1)
    assert (largest < 2**53).all()
    return reference.scale_correlation(phi_int, weight_int)


@pytest.mark.parametrize(
    ("proposals", "features"),
    [(32, 2048), pytest.param(8, 100_352, marks=pytest.mark.slow)],
)
def test_float64_logits_as_accurate_as_torch_fft(device, proposals, features):
    # The same in float64, against the exact maximum: inputs on a grid (phi a multiple of 2**-12,
    # weight of 2**-16), whose responses exact_correlation computes exactly; the kernels see them
    # as any values. At D = 100,352 the CUDA code's single GEMM over D was 15x torch.fft.
    phi, weight = (x.double() for x in float32_inputs(proposals, features, "cpu"))
    phi_int, weight_int = torch.round(phi * 2**12), torch.round(weight * 2**16)
    exact = exact_correlation(phi_int, weight_int).amax(dim=-1) / 2**28
    phi, weight = phi_int / 2**12, weight_int / 2**16
    ours, fft = largest_errors(phi.to(device), weight.to(device), exact)
    assert ours <= 10 * fft, f"scale_align {ours:.3g}, torch.fft {fft:.3g}"


@pytest.mark.parametrize("groups", [None, 2])
def test_empty_proposals(device, groups):
    phi, weight, bias = make_inputs(5, proposals=0, groups=groups, device=device, bias=True)
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    lead = () if groups is None else (groups,)
    assert logits.shape == (*lead, 0, 3) and shift.shape == (*lead, 0, 3)
    assert ssanet_ops.scale_correlation(phi, weight).shape == (*lead, 0, 3, 5)
    grad_phi, grad_weight, grad_bias = grads(logits, (phi, weight, bias), torch.ones_like(logits))
    assert grad_phi.shape == phi.shape
    # No proposal: the weight and bias gradients are sums over nothing.
    assert torch.equal(grad_weight, torch.zeros_like(weight))
    assert torch.equal(grad_bias, torch.zeros_like(bias))


def test_empty_features_and_classes(device):
    phi, weight, bias = make_inputs(3, features=0, device=device, bias=True)
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    torch.testing.assert_close(logits, bias.detach().expand(4, 3))
    assert torch.equal(shift, torch.zeros_like(shift))
    phi, weight, _ = make_inputs(3, classes=0, device=device)
    logits, _ = ssanet_ops.scale_align(phi, weight)
    assert logits.shape == (4, 0)
    (grad_phi,) = grads(logits, (phi,), torch.ones_like(logits))
    assert torch.equal(grad_phi, torch.zeros_like(phi))


# ---- autograd machinery ----


def tie_free_inputs(scales, groups=None, proposals=3, classes=4, features=5):
    """Small float64 inputs whose best and second-best shifts differ by more than gradcheck's
    perturbations can bridge, so the argmax is locally constant."""
    for _ in range(20):
        phi, weight, bias = make_inputs(scales, proposals, classes, features, groups, bias=True)
        top = reference.scale_correlation(phi, weight).detach().topk(min(2, scales), dim=-1)
        if scales == 1 or (top.values[..., 0] - top.values[..., 1]).min() > 1e-2:
            return phi, weight, bias
    raise AssertionError("no tie-free inputs found")


@pytest.mark.parametrize("scales", [1, 2, 5])
@pytest.mark.parametrize("groups", [None, 2])
def test_gradcheck(scales, groups):
    phi, weight, bias = tie_free_inputs(scales, groups)
    assert torch.autograd.gradcheck(
        lambda p, w, b: ssanet_ops.scale_align(p, w, b)[0], (phi, weight, bias)
    )
    assert torch.autograd.gradcheck(ssanet_ops.scale_correlation, (phi, weight))


def test_opcheck():
    phi, weight, bias = tie_free_inputs(5)
    ops = torch.ops.ssanet_ops
    torch.library.opcheck(ops.scale_correlation, (phi, weight))
    torch.library.opcheck(ops.scale_align, (phi, weight, bias))
    torch.library.opcheck(ops.scale_align, (phi, weight, None))
    phi4, weight4, bias4 = tie_free_inputs(3, groups=2)
    torch.library.opcheck(ops.scale_align, (phi4, weight4, bias4))
    _, shift = ops.scale_align(phi, weight, bias)
    grad = torch.randn(3, 4, dtype=torch.float64)
    grad_corr = torch.randn(3, 4, 5, dtype=torch.float64)
    detached = phi.detach(), weight.detach()
    for op, args in [
        (ops._scale_align_backward, (grad, shift, *detached, True, True, True)),
        (ops._scale_align_backward, (grad, shift, *detached, False, True, False)),
        (ops._scale_correlation_backward_phi, (grad_corr, detached[1])),
        (ops._scale_correlation_backward_weight, (grad_corr, detached[0])),
    ]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def loss_and_shift(phi, weight, bias):
        logits, shift = ssanet_ops.scale_align(phi, weight, bias)
        corr = ssanet_ops.scale_correlation(phi, weight)
        return (logits.square().sum() + corr.sum()), shift

    phi, weight, bias = make_inputs(5, groups=2, device=device, bias=True)
    loss, shift = loss_and_shift(phi, weight, bias)
    loss.backward()
    logits, expected_shift = reference.scale_align(phi, weight, bias)
    expected_loss = logits.square().sum() + reference.scale_correlation(phi, weight).sum()
    expected_grads = torch.autograd.grad(expected_loss, (phi, weight, bias))
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(shift, expected_shift)
    assert_close_tuple((phi.grad, weight.grad, bias.grad), expected_grads)


def test_torch_export(device):
    module = ScaleAlign(12, 7, 5, groups=2, device=device)
    phi = torch.randn(2, 3, 5, 12, device=device)
    exported = torch.export.export(module, (phi,))
    assert_close_tuple(exported.module()(phi), module(phi))


def test_frozen_weight_gets_no_gradient(device):
    phi, weight, _ = make_inputs(5, device=device)
    weight = weight.detach()
    logits, _ = ssanet_ops.scale_align(phi, weight)
    logits.sum().backward()
    assert weight.grad is None and phi.grad is not None


@pytest.mark.parametrize("scales", [5, 9])  # CUDA's direct form (S <= 8) and its Fourier form
@pytest.mark.parametrize("groups", [None, 2])
# (N, C, D): one tile of CUDA's direct backward kernel per gradient, and several partial ones
@pytest.mark.parametrize("size", [(4, 3, 13), (37, 53, 80)])
def test_backward_op_gives_each_gradient_asked_for(device, scales, groups, size):
    # scale_align's one backward op: d phi, d weight and d bias as the reference's autograd gives
    # them (d bias the sum of grad over the proposals), each only where its flag asks for it.
    proposals, classes, features = size
    phi, weight, bias = make_inputs(
        scales, proposals, classes, features, groups, device=device, bias=True
    )
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    grad = torch.randn_like(logits)
    expected_logits, _ = reference.scale_align(phi, weight, bias)
    torch.testing.assert_close(logits, expected_logits)
    expected = torch.autograd.grad(expected_logits, (phi, weight, bias), grad)
    torch.testing.assert_close(expected[2], grad.sum(dim=-2))
    inputs = (phi.detach(), weight.detach())
    for needs in [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]:
        actual = torch.ops.ssanet_ops._scale_align_backward(grad, shift, *inputs, *needs)
        for result, reference_grad, need in zip(actual, expected, needs, strict=True):
            if need:
                torch.testing.assert_close(result, reference_grad)
            else:
                assert result.shape == (0,)


# ---- errors ----


@pytest.mark.parametrize(
    ("phi_shape", "weight_shape", "bias_shape", "error", "match"),
    [
        ((4, 5, 8), (3, 4, 8), None, ValueError, "agree in S and D"),
        ((4, 5, 8), (3, 5, 9), None, ValueError, "agree in S and D"),
        ((4, 8), (3, 5, 8), None, ValueError, "phi must be a 3-d"),
        ((1, 2, 4, 5, 8), (3, 5, 8), None, ValueError, "phi must be a 3-d"),
        ((4, 5, 8), (2, 3, 5, 8), None, ValueError, "weight must be"),
        ((2, 4, 5, 8), (3, 3, 5, 8), None, ValueError, "group count"),
        ((4, 5, 8), (3, 5, 8), (4,), ValueError, "bias must have shape"),
        ((2, 4, 5, 8), (2, 3, 5, 8), (3,), ValueError, "bias must have shape"),
        ((4, 0, 8), (3, 0, 8), None, ValueError, "at least 1"),
    ],
)
def test_bad_shapes(phi_shape, weight_shape, bias_shape, error, match):
    phi = torch.randn(phi_shape)
    weight = torch.randn(weight_shape)
    bias = None if bias_shape is None else torch.randn(bias_shape)
    with pytest.raises(error, match=match):
        ssanet_ops.scale_align(phi, weight, bias)
    if bias is None:
        with pytest.raises(error, match=match):
            ssanet_ops.scale_correlation(phi, weight)


def test_bad_dtypes_and_devices():
    phi, weight = torch.randn(4, 5, 8), torch.randn(3, 5, 8)
    with pytest.raises(TypeError, match="phi must have one of the dtypes"):
        ssanet_ops.scale_align(phi.long(), weight)
    with pytest.raises(TypeError, match="weight must have one of the dtypes"):
        ssanet_ops.scale_correlation(phi, weight.int())
    with pytest.raises(TypeError, match="one dtype"):
        ssanet_ops.scale_align(phi, weight.double())
    with pytest.raises(ValueError, match="one device"):
        ssanet_ops.scale_align(phi, weight.to("meta"))
    with pytest.raises(ValueError, match="one device"):
        ssanet_ops.scale_align(phi, weight, torch.randn(3, device="meta"))


def test_dispatcher_checks_direct_calls():
    # torch.ops.* skips the Python checks; the kernels check again.
    ops = torch.ops.ssanet_ops
    phi, weight = torch.randn(4, 5, 8), torch.randn(3, 5, 8)
    with pytest.raises(RuntimeError, match="agree in S and D"):
        ops.scale_align(phi, weight[:, :4], None)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.scale_correlation(phi, weight.double())
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        ops.scale_correlation(phi.long(), weight.long())
    backward = ops._scale_align_backward
    with pytest.raises(RuntimeError, match="shift values must be in"):
        backward(torch.ones(4, 3), torch.full((4, 3), 5), phi, weight, True, False, False)
    zeros = torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="grad has 2 classes"):
        backward(torch.ones(4, 2), zeros, phi, weight, True, False, False)
    with pytest.raises(RuntimeError, match="grad has 3 proposals"):
        backward(torch.ones(3, 3), zeros[:3, :1].expand(3, 3), phi, weight, False, False, True)


@pytest.mark.parametrize("for_weight", [False, True])
@pytest.mark.parametrize("scales", [5, 9])  # CUDA's direct form (S <= 8) and its Fourier form
def test_backward_shift_out_of_range(device, for_weight, scales):
    # Only a direct call of the private backward ops can pass a shift outside [0, S). The CPU
    # refuses it; CUDA, which checks no values on the host (docs/operators.md section 4), gives
    # it no contribution, and reads nothing out of bounds (a NaN gradient there reaches nothing).
    phi, weight, _ = make_inputs(scales, device=device)

    def op(grad, shift):
        grads = torch.ops.ssanet_ops._scale_align_backward(
            grad, shift, phi.detach(), weight.detach(), not for_weight, for_weight, False
        )
        return grads[1 if for_weight else 0]

    grad = torch.randn(4, 3, dtype=torch.float64, device=device)
    shift = torch.randint(0, scales, (4, 3), device=device)
    shift[0, 0], shift[1, 2], shift[3, 1] = -1, scales, 2**40
    if device.type == "cpu" and not simulating():
        with pytest.raises(RuntimeError, match=rf"shift values must be in \[0, {scales}\)"):
            op(grad, shift)
        return
    in_range = (shift >= 0) & (shift < scales)
    expected = op(torch.where(in_range, grad, 0), torch.where(in_range, shift, 0))
    actual = op(torch.where(in_range, grad, float("nan")), shift)
    torch.testing.assert_close(actual, expected)


def test_direct_calls_refuse_sizes_that_overflow():
    # Expanded tensors pass any sizes at no cost: the C++ checks count in checked arithmetic
    # (issue 12), and bound S, which costs S*S/2 multiply-adds per feature column.
    ops = torch.ops.ssanet_ops
    rows = torch.zeros(1).expand(2**40, 5, 1)  # [2^40, 5, 1], one float of memory
    match = "the correlation .G, N, C, S. .* would take more bytes than int64 can count"
    with pytest.raises(RuntimeError, match="scale_align: " + match):
        ops.scale_align(rows, rows, None)
    with pytest.raises(RuntimeError, match="scale_correlation: " + match):
        ops.scale_correlation(rows, rows)
    # torch itself refuses a tensor of more than 2^63 elements: N * C fits, N * C * S * 8 not.
    grad = torch.zeros(1).expand(2**31, 2**31)
    shift = torch.zeros(1, dtype=torch.long).expand(2**31, 2**31)
    with pytest.raises(RuntimeError, match="scale_align backward: " + match):
        ops._scale_align_backward(grad, shift, rows[: 2**31], rows[: 2**31], True, False, False)
    grad_corr = torch.zeros(1).expand(2**30, 2**30, 5)
    with pytest.raises(RuntimeError, match="scale_correlation backward: " + match):
        ops._scale_correlation_backward_weight(grad_corr, rows[: 2**30])

    long = torch.zeros(1).expand(1, MAX_SCALES + 1, 1)
    with pytest.raises(RuntimeError, match=f"S of phi and weight must be at most {MAX_SCALES}"):
        ops.scale_correlation(long, long)
    with pytest.raises(RuntimeError, match=f"S of weight must be in .1, {MAX_SCALES}."):
        ops._scale_correlation_backward_phi(torch.zeros(1, 1, MAX_SCALES + 1), long)
    longest = torch.ones(1).expand(1, MAX_SCALES, 1)
    torch.testing.assert_close(
        ops.scale_correlation(longest, longest),
        torch.full((1, 1, MAX_SCALES), float(MAX_SCALES)),
        rtol=1e-4,
        atol=0,
    )


def test_too_many_scales_raise_a_value_error():
    # docs/operators.md section 4 (issue 20): S is a shape, checked before any kernel, so the
    # public functions raise a ValueError (also a RuntimeError, as the kernels raise it).
    long = torch.zeros(1).expand(1, MAX_SCALES + 1, 1)
    for function in (ssanet_ops.scale_correlation, ssanet_ops.scale_align):
        with pytest.raises(ValueError, match=f"S of phi and weight must be at most {MAX_SCALES}"):
            function(long, long)


# ---- deterministic mode on CUDA (issue 20) ----


@pytest.fixture
def deterministic_mode():
    """Sets torch.use_deterministic_algorithms for the test: call it with (enabled, warn_only)."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield lambda enabled, warn_only=False: torch.use_deterministic_algorithms(
        enabled, warn_only=warn_only
    )
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_mode_names_cublas_workspace_config(monkeypatch, deterministic_mode):
    # In deterministic mode torch refuses cuBLAS, which the CUDA products use at larger S, unless
    # CUBLAS_WORKSPACE_CONFIG is :4096:8 or :16:8; the ops say so before the kernel, where
    # torch 2.11's stable ABI would lose torch's message. Checked here on the device alone
    # (meta tensors standing for CUDA ones), for a call that takes cuBLAS (S = 10).
    check = _scale_align_arguments.check_cublas_determinism
    phi, weight = torch.empty(4, 10, 8), torch.empty(3, 10, 8)
    cuda = _OnDevice("cuda")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic_mode(True)
    with pytest.raises(RuntimeError, match="scale_align: .*CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        check(cuda(phi), weight, "scale_align")
    check(phi, weight, "scale_align")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2")  # not one torch accepts
    with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG"):
        check(cuda(phi), weight, "scale_align")
    for config in (":4096:8", ":16:8"):
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", config)
        check(cuda(phi), weight, "scale_align")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    deterministic_mode(True, warn_only=True)  # torch warns, and runs
    check(cuda(phi), weight, "scale_align")
    deterministic_mode(False)
    check(cuda(phi), weight, "scale_align")


class _OnDevice:
    """Wraps a tensor so that its ``device`` reads as another device's (the check reads only
    the device type, the shapes, dtypes and requires_grad)."""

    def __init__(self, device: str):
        self.device = torch.device(device)

    def __call__(self, tensor: torch.Tensor):
        return SimpleNamespace(
            device=self.device,
            shape=tensor.shape,
            dtype=tensor.dtype,
            requires_grad=tensor.requires_grad,
        )


@pytest.mark.parametrize(
    "op, S, N, dtype, grad, expected",
    [
        # The forward's own kernel: S <= 9 (float64 while its planes fit 48 KiB of shared
        # memory: S <= 6, or 7 with N > 8); cuBLAS beyond.
        ("scale_align", 9, 4, torch.float32, False, False),
        ("scale_align", 10, 4, torch.float32, False, True),
        ("scale_align", 6, 4, torch.float64, False, False),
        ("scale_align", 7, 9, torch.float64, False, False),
        ("scale_align", 7, 8, torch.float64, False, True),
        ("scale_align", 8, 16, torch.float64, False, True),
        ("scale_correlation", 9, 4, torch.bfloat16, False, False),
        # The backward: scale_align's own kernel at S <= 8, the Fourier form on cuBLAS beyond;
        # scale_correlation's backward is the Fourier form at every S.
        ("scale_align", 8, 4, torch.float32, True, False),
        ("scale_align", 9, 4, torch.float32, True, True),
        ("scale_correlation", 5, 4, torch.float32, True, True),
    ],
)
def test_deterministic_mode_needs_the_variable_only_where_cublas_runs(
    monkeypatch, deterministic_mode, op, S, N, dtype, grad, expected
):
    # The operators' own kernels are deterministic without cuBLAS (docs/operators.md section
    # 4): the variable is asked for only by the calls whose products run on cuBLAS.
    phi = torch.empty(N, S, 16, dtype=dtype, device="meta", requires_grad=grad)
    weight = torch.empty(3, S, 16, dtype=dtype, device="meta")
    assert _scale_align_arguments.uses_cublas(phi, weight, op) == expected
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic_mode(True)
    check = _scale_align_arguments.check_cublas_determinism
    if expected:
        with pytest.raises(RuntimeError, match=f"{op}: .*CUBLAS_WORKSPACE_CONFIG"):
            check(_OnDevice("cuda")(phi), weight, op)
    else:
        check(_OnDevice("cuda")(phi), weight, op)
    with torch.no_grad():  # no gradient: only the forward's (own kernel in every grad case)
        assert _scale_align_arguments.uses_cublas(phi, weight, op) == (expected and not grad)


def test_deterministic_mode_on_the_cpu_needs_no_cublas_config(monkeypatch, deterministic_mode):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    phi, weight, _ = make_inputs(5)
    deterministic_mode(True)
    logits, shift = ssanet_ops.scale_align(phi, weight)
    expected_logits, expected_shift = reference.scale_align(phi, weight)
    torch.testing.assert_close(logits, expected_logits)
    assert torch.equal(shift, expected_shift)


@requires_cuda
@pytest.mark.parametrize("S", [5, 10])
def test_deterministic_mode_on_cuda(deterministic_mode, S):
    # scale_align at S = 5 runs on the operators' own kernels (forward and backward) and repeats
    # to the bit without any cuBLAS workspace; at S = 10 (and scale_correlation's backward) its
    # products run on cuBLAS: with a deterministic workspace they run and repeat to the bit,
    # without one they raise, naming the variable, in the forward.
    phi, weight, bias = make_inputs(S, dtype=torch.float32, device="cuda", bias=True)
    deterministic_mode(True)
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8"):
            ssanet_ops.scale_correlation(phi, weight)
        if S > 9:
            with pytest.raises(RuntimeError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8"):
                ssanet_ops.scale_align(phi, weight, bias)
            return
    runs = []
    for _ in range(2):
        logits, shift = ssanet_ops.scale_align(phi, weight, bias)
        grads = torch.autograd.grad(logits, (phi, weight, bias), torch.ones_like(logits))
        runs.append((logits, shift, *grads))
    for first, second in zip(*runs, strict=True):
        assert torch.equal(first, second)


# ---- autocast ----


@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
def test_autocast_like_linear(device, autocast_dtype):
    # On both devices the inputs are cast to the autocast dtype, as a linear layer's are.
    phi, weight, bias = make_inputs(5, dtype=torch.float32, device=device, bias=True)
    with torch.autocast(device.type, dtype=autocast_dtype):
        logits, _ = ssanet_ops.scale_align(phi, weight, bias)
        corr = ssanet_ops.scale_correlation(phi, weight)
        linear = torch.nn.functional.linear(phi[:, 0], weight[:, 0], bias)
    assert logits.dtype == corr.dtype == linear.dtype == autocast_dtype
    rounded = [t.to(autocast_dtype).float() for t in (phi, weight, bias)]
    expected, _ = reference.scale_align(*rounded)
    torch.testing.assert_close(logits.float(), expected, atol=0.1, rtol=2e-2)
    expected_corr = reference.scale_correlation(*rounded[:2])
    torch.testing.assert_close(corr.float(), expected_corr, atol=0.1, rtol=2e-2)
    (grad_phi, grad_weight, grad_bias) = grads(logits, (phi, weight, bias), torch.ones_like(logits))
    assert grad_phi.dtype == grad_weight.dtype == grad_bias.dtype == torch.float32


def test_autocast_leaves_float64_and_reaches_direct_calls(device):
    # The autocast kernels are dispatcher registrations (ssanet_ops/_autocast.py), so direct
    # calls of torch.ops get them too; float64 inputs stay float64, as a linear layer's do.
    phi, weight, bias = make_inputs(5, dtype=torch.float64, device=device, bias=True)
    phi32, weight32 = phi.detach().float(), weight.detach().float()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits, _ = torch.ops.ssanet_ops.scale_align(phi, weight, bias)
        corr = torch.ops.ssanet_ops.scale_correlation(phi, weight)
        linear = torch.nn.functional.linear(phi[:, 0], weight[:, 0], bias)
        corr_bf16 = torch.ops.ssanet_ops.scale_correlation(phi32, weight32)
    assert logits.dtype == corr.dtype == linear.dtype == torch.float64
    torch.testing.assert_close(logits, reference.scale_align(phi, weight, bias)[0])
    torch.testing.assert_close(corr, reference.scale_correlation(phi, weight))
    assert corr_bf16.dtype == torch.bfloat16
    rounded = [t.to(torch.bfloat16).double() for t in (phi32, weight32)]
    expected = reference.scale_correlation(*rounded)
    torch.testing.assert_close(corr_bf16.double(), expected, atol=0.1, rtol=2e-2)


# ---- CUDA: reduced precision, TF32, autocast ----


@pytest.fixture
def allow_tf32():
    """Sets torch.backends.cuda.matmul.allow_tf32 for the test and restores it after (pytest's
    monkeypatch cannot: torch's __setattr__ keeps the flag out of the module's __dict__, so its
    undo deletes an attribute that is not there)."""
    previous = torch.backends.cuda.matmul.allow_tf32

    def set_allow_tf32(enabled: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = enabled

    yield set_allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = previous


def through_chosen_shift(phi, weight, bias, shift, dtype, slack):
    """The float64 reference's logits (the maximum) differentiated at the shifts the op chose:
    what the op computes, free of near-ties that its rounding may resolve the other way. Checks
    first that the shifts follow the tie rule of docs/operators.md section 3 for inputs of
    `dtype` on the float64 responses (the lowest r with corr[r] >= max - tol), up to `slack` for
    the rounding of the op's own responses."""
    corr = reference.scale_correlation(phi.double(), weight.double())
    values = corr.detach()
    reduced = dtype in (torch.float16, torch.bfloat16)
    eps = torch.finfo(torch.float32 if reduced else dtype).eps
    norms = [torch.linalg.vector_norm(x.detach().double(), dim=(-2, -1)) for x in (phi, weight)]
    tolerance = 8 * phi.shape[-2] * eps * norms[0].unsqueeze(-1) * norms[1].unsqueeze(-2)
    threshold = (values.max(dim=-1).values - tolerance).unsqueeze(-1)
    assert (values.gather(-1, shift.unsqueeze(-1)) >= threshold - slack).all()
    lower = torch.arange(values.shape[-1], device=shift.device) < shift.unsqueeze(-1)
    assert (values < threshold + slack)[lower].all()
    # The logit is the maximum, its gradient that of the response at the chosen shift.
    at_shift = corr.gather(-1, shift.unsqueeze(-1)).squeeze(-1)
    logits = at_shift + (values.max(dim=-1).values - at_shift.detach())
    return logits + bias.double().unsqueeze(-2)


@pytest.mark.parametrize("scales", [1, 4, 5])
@pytest.mark.parametrize("groups", [None, 2])
def test_cuda_float32_and_float64(cuda_device, allow_tf32, scales, groups):
    allow_tf32(False)
    for dtype, slack, tolerance in [
        (torch.float64, 1e-9, {}),
        (torch.float32, 1e-3, {"atol": 1e-3, "rtol": 1e-4}),
    ]:
        phi, weight, bias = make_inputs(
            scales,
            proposals=70,
            classes=90,
            features=300,
            groups=groups,
            dtype=dtype,
            device=cuda_device,
            bias=True,
        )
        logits, shift = ssanet_ops.scale_align(phi, weight, bias)
        expected_logits = through_chosen_shift(phi, weight, bias, shift, dtype, slack)
        torch.testing.assert_close(logits, expected_logits.to(dtype), **tolerance)
        grad = torch.randn_like(logits)
        inputs = (phi, weight, bias)
        expected_grads = grads(expected_logits, inputs, grad.double())
        actual_grads = grads(logits, inputs, grad)
        for a, e in zip(actual_grads, expected_grads, strict=True):
            torch.testing.assert_close(a, e.to(dtype), **tolerance)


@pytest.mark.parametrize(
    ("dtype", "scales", "proposals", "features"),
    [
        # The fused products (product_kernel, csrc/scale_align/kernels.cuh's fused_products),
        # whose blocks add up 4 chunks of the feature axis: D = 1500 makes K = 6 chunks of 250
        # (blocks of 4 and 2), D = 2300 9 of 256 (4, 4 and 1), D = 700 3 of 234 (one block of
        # 3); a chunk's last step of 16 columns lies partly past it unless W = 256.
        (torch.float32, 9, 20, 1500),  # its most planes, T = 13; two proposal tiles of 16
        (torch.float64, 7, 20, 2300),  # float64's planes of tiles of 16 proposals in shared memory
        (torch.bfloat16, 5, 8, 700),  # tiles of 8 proposals and 32 classes
        # The planes through memory and a bmm:
        (torch.float32, 10, 20, 700),  # T = 14 planes, beyond the fused kernel's 13
        (torch.float64, 7, 8, 700),  # float64's planes of 8 + 32 rows exceed 48 KiB
    ],
)
def test_cuda_forward_paths(cuda_device, allow_tf32, dtype, scales, proposals, features):
    # C = 37: a partial class tile.
    allow_tf32(False)
    tolerance = {
        torch.float64: {},
        torch.float32: {"atol": 1e-3, "rtol": 1e-4},  # as test_cuda_float32_and_float64
        torch.bfloat16: {"rtol": torch.finfo(dtype).eps, "atol": 1e-3},  # and ..._reduced_...
    }[dtype]
    phi, weight, bias = make_inputs(
        scales, proposals, 37, features, dtype=dtype, device=cuda_device, bias=True
    )
    phi64, weight64, bias64 = float64_leaves(phi, weight, bias)
    corr = ssanet_ops.scale_correlation(phi, weight)
    expected = reference.scale_correlation(phi64, weight64)
    torch.testing.assert_close(corr.double(), expected, **tolerance)
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    expected_logits = through_chosen_shift(phi64, weight64, bias64, shift, dtype, slack=1e-3)
    torch.testing.assert_close(logits.double(), expected_logits, **tolerance)


def float64_leaves(*tensors):
    """float64 copies of `tensors` that autograd differentiates on their own (not through a
    cast back to the originals' dtype)."""
    return [tensor.detach().double().requires_grad_() for tensor in tensors]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_precision(cuda_device, allow_tf32, dtype):
    # float16/bfloat16 keep float32 planes, gradient planes and products (docs/operators.md
    # section 4): every result is the float32 computation on the rounded inputs, rounded once to
    # dtype, a relative error of at most eps(dtype) / 2 (rtol allows eps). atol covers the
    # float32 arithmetic on sums of S*D = 1280 unit terms. Planes rounded to dtype exceed both.
    allow_tf32(False)
    tolerance = {"rtol": torch.finfo(dtype).eps, "atol": 1e-3}
    phi, weight, bias = make_inputs(
        5, proposals=64, classes=96, features=256, dtype=dtype, device=cuda_device, bias=True
    )
    phi64, weight64, bias64 = float64_leaves(phi, weight, bias)
    corr = ssanet_ops.scale_correlation(phi, weight)
    assert corr.dtype == dtype
    expected = reference.scale_correlation(phi64, weight64)
    torch.testing.assert_close(corr.double(), expected, **tolerance)
    grad = torch.randn_like(corr)
    actual_grads = grads(corr, (phi, weight), grad)
    expected_grads = grads(expected, (phi64, weight64), grad.double())
    for a, e in zip(actual_grads, expected_grads, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), e, **tolerance)

    # scale_align: its one-hot gradient planes, at the shifts it chose.
    logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    expected_logits = through_chosen_shift(phi64, weight64, bias64, shift, dtype, slack=1e-3)
    torch.testing.assert_close(logits.double(), expected_logits, **tolerance)
    grad = torch.randn_like(logits)
    actual_grads = grads(logits, (phi, weight, bias), grad)
    expected_grads = grads(expected_logits, (phi64, weight64, bias64), grad.double())
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a.double(), e, **tolerance)


def test_cuda_float16_sums_beyond_its_range(cuda_device):
    # Inputs from 1e4 to 2e4: their sums over the S = 5 scales (the f = 0 plane) pass float16's
    # largest value, 65504, which float16 planes would turn into inf; the results fit (the
    # gradient is scaled so that d weight, a sum of 8 of phi's values, does too).
    phi = (1e4 * (1 + torch.rand(8, 5, 64, device=cuda_device))).half().requires_grad_()
    weight = (1e-3 * torch.randn(6, 5, 64, device=cuda_device)).half().requires_grad_()
    phi64, weight64 = float64_leaves(phi, weight)
    bias = torch.zeros(6, device=cuda_device)
    tolerance = {"rtol": torch.finfo(torch.float16).eps, "atol": 1e-2}
    corr = ssanet_ops.scale_correlation(phi, weight)
    expected = reference.scale_correlation(phi64, weight64)
    torch.testing.assert_close(corr.double(), expected, **tolerance)
    logits, shift = ssanet_ops.scale_align(phi, weight)
    expected_logits = through_chosen_shift(phi64, weight64, bias, shift, phi.dtype, slack=1e-2)
    torch.testing.assert_close(logits.double(), expected_logits, **tolerance)
    grad = 0.1 * torch.randn_like(logits)
    actual_grads = grads(logits, (phi, weight), grad)
    expected_grads = grads(expected_logits, (phi64, weight64), grad.double())
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a.double(), e, **tolerance)


def test_cuda_tf32(cuda_device, allow_tf32):
    allow_tf32(True)
    phi, weight, _ = make_inputs(
        5, proposals=64, classes=96, features=256, dtype=torch.float32, device=cuda_device
    )
    corr = ssanet_ops.scale_correlation(phi, weight)
    expected = reference.scale_correlation(phi.double(), weight.double()).float()
    torch.testing.assert_close(corr, expected, atol=0.1, rtol=2e-2)


@requires_cuda

# ---- the module ----


def test_module_shapes_and_gradients(device):
    module = ScaleAlign(12, 7, 5, device=device, dtype=torch.float64)
    assert module.weight.shape == (7, 5, 12) and module.bias.shape == (7,)
    phi = torch.randn(3, 5, 12, dtype=torch.float64, device=device)
    logits, shift = module(phi)
    expected_logits, expected_shift = reference.scale_align(phi, module.weight, module.bias)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(shift, expected_shift)
    logits.sum().backward()
    assert module.weight.grad is not None and module.bias.grad is not None

    grouped = ScaleAlign(12, 7, 5, groups=4, bias=False, device=device)
    assert grouped.weight.shape == (4, 7, 5, 12) and grouped.bias is None
    logits, shift = grouped(torch.randn(4, 3, 5, 12, device=device))
    assert logits.shape == shift.shape == (4, 3, 7)
    assert "groups=4" in repr(grouped)


def test_module_keeps_the_group_dimension_of_one_group():
    grouped = ScaleAlign(12, 7, 5, groups=1)
    assert grouped.weight.shape == (1, 7, 5, 12) and grouped.bias.shape == (1, 7)
    phi = torch.randn(1, 4, 5, 12)
    assert grouped(phi)[0].shape == (1, 4, 7)
    # A state dict of a one-group module from before groups=None (stored without the group
    # dimension) still loads.
    ungrouped = ScaleAlign(12, 7, 5)
    grouped.load_state_dict(ungrouped.state_dict())
    torch.testing.assert_close(grouped.weight[0], ungrouped.weight)
    torch.testing.assert_close(grouped(phi)[0][0], ungrouped(phi[0])[0])


@pytest.mark.parametrize("scales", [1, 3, 5])
def test_module_initialisation_gives_unit_variance_logits(scales):
    # The variance of the logits over proposals and classes, for unit-variance features.
    torch.manual_seed(1)
    module = ScaleAlign(256, 128, scales)
    phi = torch.randn(512, scales, 256)
    with torch.no_grad():
        logits, _ = module(phi)
    assert 0.85 < logits.var().item() < 1.15


def test_module_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_scales must be a positive int"):
        ScaleAlign(8, 3, 0)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        ScaleAlign(8, 3, 5, groups=1.5)
