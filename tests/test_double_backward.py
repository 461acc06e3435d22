"""Second-order gradients through every op (issue 12, item 4): gradgradcheck in float64, and
Hessian-vector products against the plain PyTorch references, which autograd differentiates
twice on its own."""

from __future__ import annotations

import pytest
import torch

import ssanet_ops
from ssanet_ops import reference

from .conftest import requires_torchvision


def distinct(*shape: int) -> torch.Tensor:
    """float64 values with gaps (0.1) far above gradcheck's steps: no ties, no argmax flips."""
    count = torch.Size(shape).numel()
    return (torch.randperm(count, dtype=torch.float64) / 10).reshape(shape).requires_grad_()


def tie_free_scale_inputs(groups=None, proposals=3, classes=4, scales=5, features=6):
    """phi, weight, bias in float64 whose best and second-best shifts differ by more than
    gradcheck's perturbations can bridge, so the argmax is locally constant."""
    lead = () if groups is None else (groups,)
    for _ in range(50):
        phi = torch.randn(*lead, proposals, scales, features, dtype=torch.float64)
        weight = torch.randn(*lead, classes, scales, features, dtype=torch.float64)
        top = reference.scale_correlation(phi, weight).topk(2, dim=-1).values
        if (top[..., 0] - top[..., 1]).min() > 0.05:
            bias = torch.randn(*lead, classes, dtype=torch.float64)
            return phi.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()
    raise AssertionError("no tie-free inputs found")


BOXES = torch.tensor(
    [[0, 0.5, 1.2, 4.7, 5.1], [1, 2.2, 0.1, 6.3, 3.9], [1, -1.0, 2.0, 3.0, 7.5]],
    dtype=torch.float64,
)


def crop(x: torch.Tensor, sampling_ratio: int = 2) -> torch.Tensor:
    return ssanet_ops.multiscale_roi_crop(
        x, BOXES, (3, 2), [0.7, 1.0, 1.4], sampling_ratio=sampling_ratio
    )


# ---- gradgradcheck ----


def test_oriented_pool_gradgradcheck():
    # Overlapping patches (stride 2 < patch 3), and non-square patches with a gap between them.
    assert torch.autograd.gradgradcheck(
        lambda t: ssanet_ops.oriented_pool(t, patch_size=3, grid_size=2, stride=2),
        (distinct(2, 2, 5, 5),),
        fast_mode=True,  # a random projection of the Jacobians: fewer evaluations
    )
    assert torch.autograd.gradgradcheck(
        lambda t: ssanet_ops.oriented_pool(t, patch_size=(2, 1), grid_size=3, stride=(2, 3)),
        (distinct(1, 2, 6, 7),),
        fast_mode=True,
    )


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_multiscale_roi_crop_gradgradcheck(sampling_ratio):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: crop(t, sampling_ratio), (x,))


@pytest.mark.parametrize("groups", [None, 2])
def test_scale_correlation_gradgradcheck(groups):
    phi, weight, _ = tie_free_scale_inputs(groups)
    assert torch.autograd.gradgradcheck(ssanet_ops.scale_correlation, (phi, weight))


@pytest.mark.parametrize("groups", [None, 2])
def test_scale_align_gradgradcheck(groups):
    phi, weight, bias = tie_free_scale_inputs(groups)
    assert torch.autograd.gradgradcheck(
        lambda p, w, b: ssanet_ops.scale_align(p, w, b)[0], (phi, weight, bias)
    )


def test_third_order_through_scale_correlation():
    # The backward ops' own backwards are ops of the same family, so any order works.
    phi, weight, _ = tie_free_scale_inputs()

    def grad_phi(p, w):
        corr = ssanet_ops.scale_correlation(p, w)
        return torch.autograd.grad(corr.pow(2).sum(), p, create_graph=True)[0]

    assert torch.autograd.gradcheck(grad_phi, (phi, weight))  # second order
    assert torch.autograd.gradgradcheck(grad_phi, (phi, weight))  # third order


# ---- Hessian-vector products against the references ----


def hessian_vector_product(function, inputs, vectors):
    """The gradient of <grad(function(inputs)), vectors> with respect to inputs."""
    value = function(*inputs)
    first = torch.autograd.grad(value, inputs, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(first, vectors, strict=True))
    return torch.autograd.grad(dot, inputs, allow_unused=True, materialize_grads=True)


def assert_same_hvp(op_function, reference_function, inputs):
    vectors = [torch.randn_like(t) for t in inputs]
    op_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    actual = hessian_vector_product(op_function, op_inputs, vectors)
    expected = hessian_vector_product(reference_function, ref_inputs, vectors)
    assert any(e.abs().max() > 0 for e in expected)  # a non-trivial check
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_gradient_penalty_of_oriented_pool_matches_reference():
    # A gradient penalty ||d out / d x||^2 style loss: the squared output makes it non-zero.
    x = distinct(2, 3, 7, 7)
    assert_same_hvp(
        lambda t: ssanet_ops.oriented_pool(t).pow(2).sum(),
        lambda t: reference.oriented_pool(t).pow(2).sum(),
        [x],
    )


@requires_torchvision
def test_hessian_vector_product_of_the_crop_matches_reference():
    # roi_align (the reference's sampler) has no double backward, but the crop is linear,
    # y = A x: for the loss sum(y^3) the product is H v = A^T (6 (A x) * (A v)), with A applied by
    # the reference and A^T by its first-order gradient.
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    vector = torch.randn_like(x)
    (actual,) = hessian_vector_product(lambda t: crop(t).pow(3).sum(), [x], [vector])

    def apply_reference(t):
        return reference.multiscale_roi_crop(t, BOXES, (3, 2), [0.7, 1.0, 1.4], sampling_ratio=2)

    weights = 6 * apply_reference(x.detach()) * apply_reference(vector)
    leaf = torch.zeros_like(x, requires_grad=True)
    (expected,) = torch.autograd.grad(apply_reference(leaf), leaf, weights)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("groups", [None, 2])
def test_hessian_vector_product_of_scale_align_matches_reference(groups):
    phi, weight, bias = tie_free_scale_inputs(groups)

    def loss(function):
        return lambda p, w, b: function(p, w, b)[0].pow(2).sum()

    assert_same_hvp(loss(ssanet_ops.scale_align), loss(reference.scale_align), [phi, weight, bias])
    assert_same_hvp(
        lambda p, w: ssanet_ops.scale_correlation(p, w).pow(2).sum(),
        lambda p, w: reference.scale_correlation(p, w).pow(2).sum(),
        [phi, weight],
    )


def test_backward_ops_pass_opcheck():
    # The double-backward registrations through the dispatcher tooling (autograd registration,
    # fake tensors, AOT dispatch).
    x = distinct(2, 3, 7, 7).detach()
    out, argmax = torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    grad = torch.randn_like(out, requires_grad=True)
    torch.library.opcheck(
        torch.ops.ssanet_ops._oriented_pool_backward.default,
        (grad, argmax, [3, 3], 3, [2, 2], 2, 3, 7, 7),
    )
    crop_grad = torch.randn(3, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.ssanet_ops._multiscale_roi_crop_backward.default,
        (crop_grad, BOXES, [0.7, 1.0, 1.4], None, [3, 2], 1.0, 2, True, True, 2, 3, 6, 7, True),
    )
    phi, weight, _ = tie_free_scale_inputs()
    _, shift = torch.ops.ssanet_ops.scale_align(phi, weight, None)
    logits_grad = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    corr_grad = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.ssanet_ops
    torch.library.opcheck(ops._scale_correlation_backward_phi.default, (corr_grad, weight))
    torch.library.opcheck(ops._scale_correlation_backward_weight.default, (corr_grad, phi))
    for needs in [(True, True, True), (True, False, False), (False, True, True)]:
        torch.library.opcheck(
            ops._scale_align_backward.default, (logits_grad, shift, phi, weight, *needs)
        )
