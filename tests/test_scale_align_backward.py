"""scale_align's backward op on CUDA (and the host simulator): the direct form of eq. 8
(docs/operators.md section 3) in one kernel, csrc/scale_align/kernels.cuh's
align_backward_kernel (S <= 8), against the sums of eq. 8 computed in float64 by gathering, and
against torch.autograd on the plain reference."""

from __future__ import annotations

import pytest
import torch

from ssanet_ops import reference

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Every dtype's result is the float64 sum of its rounded inputs, accumulated in float32 (float64
# for float64) and rounded once to the dtype: a relative error of eps(dtype) / 2 from the final
# rounding, and an absolute one from the float32 sums of up to 37 unit terms.
TOLERANCE = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 2e-6, "atol": 1e-5},
    torch.bfloat16: {"rtol": torch.finfo(torch.bfloat16).eps, "atol": 1e-5},
    torch.float16: {"rtol": torch.finfo(torch.float16).eps, "atol": 1e-5},
}


def eq8(grad, shift, phi, weight):
    """d phi, d weight and d bias of eq. 8 in float64, by gathering the shifted rows:
    d phi[n, s] = sum over c of grad[n, c] * weight[c, (s + shift[n, c]) mod S],
    d weight[c, m] = sum over n of grad[n, c] * phi[n, (m - shift[n, c]) mod S]."""
    grad, phi, weight = (x.double() for x in (grad, phi, weight))
    scales = phi.shape[-2]
    steps = torch.arange(scales, device=shift.device)
    classes = torch.arange(weight.shape[-3], device=shift.device)
    proposals = torch.arange(phi.shape[-3], device=shift.device)
    lead = [torch.arange(n, device=shift.device).view(-1, 1, 1, 1) for n in grad.shape[:-2]]
    # [G?, N, C, S, D]: weight[g, c, (s + shift) mod S] and phi[g, n, (m - shift) mod S].
    weight_rows = weight[(*lead, classes.view(1, -1, 1), (steps + shift.unsqueeze(-1)) % scales)]
    phi_rows = phi[(*lead, proposals.view(-1, 1, 1), (steps - shift.unsqueeze(-1)) % scales)]
    grad_phi = torch.einsum("...nc,...ncsd->...nsd", grad, weight_rows)
    grad_weight = torch.einsum("...nc,...ncsd->...csd", grad, phi_rows)
    return grad_phi, grad_weight, grad.sum(dim=-2)


def backward_op(grad, shift, phi, weight, needs=(True, True, True)):
    return torch.ops.ssanet_ops._scale_align_backward(grad, shift, phi, weight, *needs)


def inputs(scales, proposals, classes, features, groups=None, dtype=torch.float32, device="cpu"):
    lead = () if groups is None else (groups,)
    phi = torch.randn(*lead, proposals, scales, features, device=device).to(dtype)
    weight = torch.randn(*lead, classes, scales, features, device=device).to(dtype)
    grad = torch.randn(*lead, proposals, classes, device=device).to(dtype)
    shift = torch.randint(0, scales, (*lead, proposals, classes), device=device)
    return grad, shift, phi, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scales", range(1, 9))
@pytest.mark.parametrize(
    ("groups", "proposals", "classes", "features"),
    [
        # Ragged everywhere: tiles of 32 / S rows (64 / S in float32) hold 13 proposals and 37
        # classes in partial tiles, the staged chunks of 256 / rows classes end partly, and
        # D = 300 is a slice of 256 columns and one of 44.
        (None, 13, 37, 300),
        # D below a warp: blocks of 32 threads, 5 of them past D; two groups.
        (2, 5, 9, 5),
    ],
)
def test_matches_the_sums_of_eq8(cuda_device, dtype, scales, groups, proposals, classes, features):
    grad, shift, phi, weight = inputs(
        scales, proposals, classes, features, groups, dtype, cuda_device
    )
    actual = backward_op(grad, shift, phi, weight)
    expected = eq8(grad, shift, phi, weight)
    for result, wanted in zip(actual, expected, strict=True):
        assert result.dtype == dtype and result.shape == wanted.shape
        torch.testing.assert_close(result.double(), wanted, **TOLERANCE[dtype])
    # One thread's sum in a fixed order per value: the same bits on every call.
    for first, second in zip(actual, backward_op(grad, shift, phi, weight), strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize("scales", [3, 8])
def test_matches_autograd_of_the_reference(cuda_device, scales):
    # The gradient of the reference's correlation at the given shifts (float64).
    grad, shift, phi, weight = inputs(scales, 11, 30, 70, dtype=torch.float64, device=cuda_device)
    phi.requires_grad_()
    weight.requires_grad_()
    at_shift = reference.scale_correlation(phi, weight).gather(-1, shift.unsqueeze(-1))
    expected = torch.autograd.grad(at_shift.squeeze(-1), (phi, weight), grad)
    actual = backward_op(grad, shift, phi.detach(), weight.detach())
    torch.testing.assert_close(actual[:2], expected)
    torch.testing.assert_close(actual[2], grad.sum(dim=0))


ALONE = [(True, False, False), (False, True, False), (False, False, True)]


@pytest.mark.parametrize("needs", ALONE)
@pytest.mark.parametrize("scales", [4, 9])  # the direct form, and the Fourier form's d bias
def test_each_gradient_alone(cuda_device, needs, scales):
    grad, shift, phi, weight = inputs(scales, 13, 37, 40, device=cuda_device)
    actual = backward_op(grad, shift, phi, weight, needs)
    expected = eq8(grad, shift, phi, weight)
    for result, wanted, need in zip(actual, expected, needs, strict=True):
        if need:
            torch.testing.assert_close(result.double(), wanted, **TOLERANCE[torch.float32])
        else:
            assert result.shape == (0,)


def test_strided_inputs(cuda_device):
    # grad transposed, phi every other feature column, weight with the feature axis outermost:
    # read in place through their strides.
    grad, shift, phi, weight = inputs(6, 13, 37, 90, device=cuda_device)
    strided = (
        grad.t().contiguous().t(),
        shift,
        torch.stack([phi, -phi], dim=-1).flatten(-2)[..., ::2],
        weight.transpose(0, -1).contiguous().transpose(0, -1),
    )
    assert not any(strided[i].is_contiguous() for i in (0, 2, 3))
    actual = backward_op(*strided)
    for result, wanted in zip(actual, eq8(grad, shift, phi, weight), strict=True):
        torch.testing.assert_close(result.double(), wanted, **TOLERANCE[torch.float32])


def test_float16_sums_accumulate_in_float32(cuda_device):
    # Partial sums of 1e5, beyond float16's 65504, and results of 4e4 that fit: d phi's over
    # the classes (grad [1, 3]), d weight's and d bias's over the proposals (grad [3, 1]).
    values = torch.tensor([5e4, 5e4, -6e4], device=cuda_device).half()
    ones = torch.ones(3, 3, 8, device=cuda_device).half()
    shift = torch.tensor([0, 1, 2], device=cuda_device)
    grad_phi, _, _ = backward_op(values.view(1, 3), shift.view(1, 3), ones[:1], ones)
    torch.testing.assert_close(grad_phi, torch.full_like(grad_phi, 4e4))
    _, grad_weight, grad_bias = backward_op(values.view(3, 1), shift.view(3, 1), ones, ones[:1])
    torch.testing.assert_close(grad_weight, torch.full_like(grad_weight, 4e4))
    torch.testing.assert_close(grad_bias, torch.full_like(grad_bias, 4e4))


def test_empty_sums_give_zeros(cuda_device):
    # d phi sums over no classes, d weight over no proposals: zeros of the right shape.
    grad, shift, phi, weight = inputs(5, 4, 3, 20, device=cuda_device)
    no_classes = backward_op(grad[:, :0], shift[:, :0], phi, weight[:0])
    assert torch.equal(no_classes[0], torch.zeros_like(phi))
    no_proposals = backward_op(grad[:0], shift[:0], phi[:0], weight)
    assert torch.equal(no_proposals[1], torch.zeros_like(weight))
    assert torch.equal(no_proposals[2], torch.zeros(3, device=cuda_device))
