"""oriented_pool (docs/operators.md section 1) against the plain PyTorch reference, autograd, the
dispatcher tooling and every error case."""

from __future__ import annotations

import pytest
import torch

import ssanet_ops
from ssanet_ops import reference
from ssanet_ops.testing import simulate_cuda

from .conftest import requires_cuda, requires_simulator

# (input shape, keyword arguments): the paper's 7x7 maps with 3x3 patches on a 3x3 grid,
# non-square maps and patches, C = 1, G = 1, 1x1 patches, explicit strides, stride 0.
SHAPES = [
    ((2, 3, 7, 7), {}),
    ((3, 70, 9, 11), {"patch_size": (3, 5), "grid_size": 3}),
    ((2, 1, 8, 7), {"patch_size": (2, 1), "grid_size": 4}),
    ((2, 4, 7, 7), {"patch_size": 3, "grid_size": 1}),
    ((2, 6, 5, 5), {"patch_size": 1, "grid_size": 5}),
    ((1, 5, 6, 6), {"patch_size": 2, "grid_size": 3, "stride": 1}),
    ((2, 3, 4, 4), {"patch_size": 4, "grid_size": 2, "stride": 0}),
    ((1, 130, 3, 3), {"patch_size": 1, "grid_size": 3}),
]


def assert_matches_reference(x: torch.Tensor, **kwargs) -> None:
    """Forward and backward of the op equal the reference on `x` (which may be non-contiguous)."""
    x_op = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    x_ref = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    out = ssanet_ops.oriented_pool(x_op, **kwargs)
    expected = reference.oriented_pool(x_ref, **kwargs)
    # A max selects an element: the forward is exact.
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x_op.grad, x_ref.grad)


@pytest.mark.parametrize(("shape", "kwargs"), SHAPES)
def test_matches_reference(device, shape, kwargs):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(shape, device=device, dtype=dtype)
        assert_matches_reference(x, **kwargs)


def test_output_shape_and_layout(device):
    x = torch.randn(2, 5, 7, 7, device=device)
    out = ssanet_ops.oriented_pool(x)
    grid, length = 3, 5 * 3 * 3
    assert out.shape == (2, 4, grid * length)
    # Orientations 2 and 3 are 0 and 1 with the patches in reverse order.
    rows = out[:, 0].reshape(2, grid, length)
    columns = out[:, 1].reshape(2, grid, length)
    torch.testing.assert_close(out[:, 2].reshape(2, grid, length), rows.flip(1))
    torch.testing.assert_close(out[:, 3].reshape(2, grid, length), columns.flip(1))
    # p_0 by hand: the max over the first row of patches, flattened in (C, h, w) order.
    patches = [x[:, :, 0:3, j * 2 : j * 2 + 3] for j in range(grid)]
    torch.testing.assert_close(rows[:, 0], torch.stack(patches).amax(0).reshape(2, -1))


def test_non_contiguous_and_channels_last(device):
    base = torch.randn(2, 6, 9, 14, device=device)
    non_contiguous = base[:, ::2, :, ::2]  # [2, 3, 9, 7], strided in C and W
    assert not non_contiguous.is_contiguous()
    assert_matches_reference(non_contiguous, patch_size=3, grid_size=3)
    channels_last = torch.randn(3, 8, 7, 7, device=device).to(memory_format=torch.channels_last)
    assert_matches_reference(channels_last)
    torch.testing.assert_close(
        ssanet_ops.oriented_pool(channels_last),
        ssanet_ops.oriented_pool(channels_last.contiguous()),
        rtol=0,
        atol=0,
    )
    transposed = torch.randn(2, 4, 7, 7, device=device).transpose(2, 3)
    assert_matches_reference(transposed)


def test_empty_inputs(device):
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    out = ssanet_ops.oriented_pool(x)
    assert out.shape == (0, 4, 3 * 4 * 9)
    out.sum().backward()
    assert x.grad.shape == x.shape
    no_channels = torch.randn(2, 0, 7, 7, device=device, requires_grad=True)
    out = ssanet_ops.oriented_pool(no_channels)
    assert out.shape == (2, 4, 0)
    out.sum().backward()
    assert no_channels.grad.shape == no_channels.shape


def test_ties_route_to_lowest_index(device):
    # Few distinct values: most maxima are ties. The contract routes each to the lowest index (the
    # reference's max(dim) does the same), so the gradients must agree exactly.
    x = torch.randint(0, 3, (2, 4, 7, 7), device=device).float()
    assert_matches_reference(x)
    # All equal: every gradient goes to patch 0 of its line.
    ones = torch.ones(1, 1, 3, 3, device=device, requires_grad=True)
    ssanet_ops.oriented_pool(ones, patch_size=1, grid_size=3).sum().backward()
    # p_i routes to (i, 0) and q_j to (0, j), each through two orientations.
    expected = torch.zeros(3, 3, device=device)
    expected[:, 0] += 2
    expected[0, :] += 2
    torch.testing.assert_close(ones.grad[0, 0], expected)


def test_nan_propagates_like_amax(device):
    x = torch.randn(2, 3, 7, 7, device=device)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    out = ssanet_ops.oriented_pool(x)
    expected = reference.oriented_pool(x)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert out.isnan().any()


def test_rotation_example_from_spec(device):
    # docs/operators.md section 1: with h = w = 1 and G = H = W = 2, orientation 1 of
    # [[a, b], [c, d]] equals orientation 0 of its clockwise rotation [[c, a], [d, b]]:
    # [max(a, c), max(b, d)].
    a, b, c, d = 1.0, 4.0, 3.0, 2.0
    x = torch.tensor([[[[a, b], [c, d]]]], device=device)
    rotated = torch.tensor([[[[c, a], [d, b]]]], device=device)
    assert torch.equal(torch.rot90(x, k=-1, dims=(2, 3)), rotated)
    out = ssanet_ops.oriented_pool(x, patch_size=1, grid_size=2)
    out_rotated = ssanet_ops.oriented_pool(rotated, patch_size=1, grid_size=2)
    expected = torch.tensor([max(a, c), max(b, d)], device=device)
    torch.testing.assert_close(out[0, 1], expected)
    torch.testing.assert_close(out_rotated[0, 0], expected)


def test_gradcheck(device):
    # Distinct values with gaps far above gradcheck's step: no ties, no argmax flips.
    values = torch.randperm(2 * 3 * 7 * 7, device=device).double() / 10
    x = values.reshape(2, 3, 7, 7).requires_grad_()
    assert torch.autograd.gradcheck(ssanet_ops.oriented_pool, (x,))
    y = (torch.randperm(2 * 2 * 5 * 6, device=device).double() / 10).reshape(2, 2, 5, 6)
    assert torch.autograd.gradcheck(
        lambda t: ssanet_ops.oriented_pool(t, patch_size=(2, 3), grid_size=2, stride=(3, 3)),
        (y.requires_grad_(),),
    )


def test_backward_is_deterministic(device):
    x = torch.randint(0, 4, (4, 16, 7, 7), device=device).float().requires_grad_()
    grad = torch.randn(4, 4, 3 * 16 * 9, device=device)
    (first,) = torch.autograd.grad(ssanet_ops.oriented_pool(x), x, grad)
    (second,) = torch.autograd.grad(ssanet_ops.oriented_pool(x), x, grad)
    assert torch.equal(first, second)


def test_opcheck(device):
    x = torch.randn(2, 3, 7, 7, device=device, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.ssanet_ops.oriented_pool.default, (x, [3, 3], 3, [2, 2]))
    y = torch.randn(2, 2, 5, 8, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.ssanet_ops.oriented_pool.default, (y, [1, 2], 2, [4, 6]))
    out, argmax = torch.ops.ssanet_ops.oriented_pool(x.detach(), [3, 3], 3, [2, 2])
    torch.library.opcheck(
        torch.ops.ssanet_ops._oriented_pool_backward.default,
        (torch.randn_like(out), argmax, [3, 3], 3, [2, 2], 2, 3, 7, 7),
    )


def test_torch_compile_fullgraph_matches_eager(device):
    module = ssanet_ops.nn.OrientedPool(patch_size=3, grid_size=3)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(3, 8, 7, 7, device=device, requires_grad=True)
    x_compiled = x.detach().clone().requires_grad_()
    out = module(x)
    out_compiled = compiled(x_compiled)
    torch.testing.assert_close(out_compiled, out, rtol=0, atol=0)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_compiled.backward(grad)
    torch.testing.assert_close(x_compiled.grad, x.grad, rtol=0, atol=0)


def test_torch_export(device):
    x = torch.randn(2, 4, 7, 7, device=device)
    exported = torch.export.export(ssanet_ops.nn.OrientedPool(), (x,))
    torch.testing.assert_close(exported.module()(x), ssanet_ops.oriented_pool(x))


def test_module(device):
    module = ssanet_ops.nn.OrientedPool(patch_size=(3, 3), grid_size=3)
    assert "grid_size=3" in repr(module)
    x = torch.randn(2, 4, 7, 7, device=device)
    torch.testing.assert_close(module(x), reference.oriented_pool(x))


# --- errors: each names the argument and what was expected ------------------------------------


@pytest.mark.parametrize(
    ("shape", "kwargs", "error", "message"),
    [
        ((2, 3, 7), {}, ValueError, r"x must be a 4-d tensor"),
        ((2, 3, 7, 7), {"grid_size": (3, 2)}, ValueError, r"grid_size must be square"),
        ((2, 3, 7, 7), {"patch_size": 8}, ValueError, r"patch_size \(8, 8\) does not fit"),
        ((2, 3, 7, 7), {"stride": 3}, ValueError, r"does not fit in the 7x7 input x"),
        ((2, 3, 8, 8), {}, ValueError, r"default stride .* is not whole"),
        ((2, 3, 7, 7), {"patch_size": 0}, ValueError, r"patch_size must be positive"),
        ((2, 3, 7, 7), {"stride": -1}, ValueError, r"stride must be non-negative"),
        ((2, 3, 7, 7), {"grid_size": 0}, ValueError, r"grid_size must be in \[1, 256\]"),
        (
            (2, 3, 7, 7),
            {"patch_size": (1, 2, 3)},
            TypeError,
            r"patch_size must be an int or a pair",
        ),
        ((2, 3, 7, 7), {"stride": 1.5}, TypeError, r"stride must be an int or a pair"),
    ],
)
def test_argument_errors(shape, kwargs, error, message):
    with pytest.raises(error, match=message):
        ssanet_ops.oriented_pool(torch.randn(shape), **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_dtype_raises(dtype):
    x = torch.zeros(1, 2, 7, 7, dtype=dtype)
    with pytest.raises(TypeError, match=r"x must have one of the dtypes float32, float64, float16"):
        ssanet_ops.oriented_pool(x)


def test_direct_op_calls_check_their_arguments():
    # The dispatcher op itself (no Python wrapper) must reject bad input, not crash.
    x = torch.randn(2, 3, 7, 7)
    with pytest.raises(RuntimeError, match=r"does not fit in the 7x7 input x"):
        torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [3, 3])
    with pytest.raises(RuntimeError, match=r"x must be a 4-d tensor"):
        torch.ops.ssanet_ops.oriented_pool(x[0], [3, 3], 3, [2, 2])
    with pytest.raises(RuntimeError, match=r"x must be float32, float64, float16 or bfloat16"):
        torch.ops.ssanet_ops.oriented_pool(x.long(), [3, 3], 3, [2, 2])
    with pytest.raises(RuntimeError, match=r"grid_size must be in \[1, 256\]"):
        torch.ops.ssanet_ops.oriented_pool(torch.randn(1, 1, 300, 300), [1, 1], 300, [1, 1])
    out, argmax = torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    with pytest.raises(RuntimeError, match=r"grad_output must have shape \[2, 4, 81\]"):
        torch.ops.ssanet_ops._oriented_pool_backward(
            out[:, :2], argmax, [3, 3], 3, [2, 2], 2, 3, 7, 7
        )


@pytest.mark.parametrize("stride", [2**62 + 12345, 3 * 2**61 + 7, 2**63 - 1])
def test_direct_calls_with_overflowing_strides_raise(device, stride):
    # Issue 12 item 7: the fit check (G - 1) * stride + h overflowed int64. 2**62 + 12345
    # crashed; 3 * 2**61 + 7 wrapped to a negative value that passed, and the kernels read out
    # of bounds.
    x = torch.randn(1, 2, 7, 7, device=device)
    with pytest.raises(RuntimeError, match=r"oriented_pool: a 3x3 grid .* does not fit"):
        torch.ops.ssanet_ops.oriented_pool(x, [1, 1], 3, [stride, stride])
    with pytest.raises(RuntimeError, match=r"oriented_pool: a 3x3 grid .* does not fit"):
        torch.ops.ssanet_ops.oriented_pool(x, [1, 1], 3, [0, stride])
    grad = torch.randn(1, 4, 3 * 2, device=device)
    argmax = torch.zeros(1, 2, 3, 2, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match=r"oriented_pool backward: a 3x3 grid .* does not fit"):
        torch.ops.ssanet_ops._oriented_pool_backward(
            grad, argmax, [1, 1], 3, [stride, stride], 1, 2, 7, 7
        )


def test_direct_calls_with_an_overflowing_output_length_raise(device):
    # G*C*h*w = 256 * 2**60 overflows int64 for an empty batch of huge maps.
    x = torch.empty(0, 2**40, 1024, 1024, device=device)
    with pytest.raises(RuntimeError, match=r"output length G\*C\*h\*w overflows int64"):
        torch.ops.ssanet_ops.oriented_pool(x, [1024, 1024], 256, [0, 0])


def test_direct_backward_calls_check_the_geometry(device):
    # The backward op took the geometry on trust: a grid that does not fit the input shape it
    # is given, or a bad patch_size, stride or shape, must raise as in the forward.
    grad = torch.randn(1, 4, 3 * 2, device=device)
    argmax = torch.zeros(1, 2, 3, 2, dtype=torch.uint8, device=device)
    backward = torch.ops.ssanet_ops._oriented_pool_backward
    with pytest.raises(RuntimeError, match=r"backward: a 3x3 grid .* does not fit in the 4x4"):
        backward(grad, argmax, [1, 1], 3, [2, 2], 1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"backward: patch_size must be two positive ints"):
        backward(grad, argmax, [0, 1], 3, [2, 2], 1, 2, 5, 5)
    with pytest.raises(RuntimeError, match=r"backward: stride must be two non-negative ints"):
        backward(grad, argmax, [1, 1], 3, [-2, 2], 1, 2, 5, 5)
    with pytest.raises(RuntimeError, match=r"backward: grid_size must be in \[1, 256\]"):
        backward(grad, argmax, [1, 1], 0, [2, 2], 1, 2, 5, 5)
    with pytest.raises(RuntimeError, match=r"backward: the input shape .* has a negative size"):
        backward(grad, argmax, [1, 1], 3, [2, 2], 1, 2, -5, 5)
    # The same arguments with a grid that fits pass.
    assert backward(grad, argmax, [1, 1], 3, [2, 2], 1, 2, 5, 5).shape == (1, 2, 5, 5)


def test_mixed_devices_raise():
    # Only one tensor enters the forward; the backward op takes two, which must share a device.
    # A meta tensor stands in for a second device on machines without a GPU.
    grad = torch.randn(2, 4, 81)
    argmax = torch.zeros(2, 2, 3, 27, dtype=torch.uint8, device="meta")
    with pytest.raises(RuntimeError, match=r"grad_output and argmax must be on one device"):
        torch.ops.ssanet_ops._oriented_pool_backward(grad, argmax, [3, 3], 3, [2, 2], 2, 3, 7, 7)


@requires_cuda
def test_mixed_devices_raise_on_cuda():
    grad = torch.randn(2, 4, 81, device="cuda")
    argmax = torch.zeros(2, 2, 3, 27, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"must be on one device"):
        torch.ops.ssanet_ops._oriented_pool_backward(grad, argmax, [3, 3], 3, [2, 2], 2, 3, 7, 7)


# --- the CUDA kernels (on a GPU, or in the simulator) -----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("shape", "kwargs"), SHAPES[:4])
def test_cuda_reduced_precision(cuda_device, dtype, shape, kwargs):
    x32 = torch.randn(shape, device=cuda_device)
    x = x32.to(dtype).requires_grad_()
    out = ssanet_ops.oriented_pool(x, **kwargs)
    assert out.dtype == dtype
    # The forward selects elements, so it equals the float32 reference on the rounded input.
    reference_input = x.detach().float().requires_grad_()
    expected = reference.oriented_pool(reference_input, **kwargs)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0)
    grad = torch.randn_like(expected)
    out.backward(grad.to(dtype))
    expected.backward(grad.to(dtype).float())
    tolerance = (
        {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.float16 else {"atol": 5e-2, "rtol": 2e-2}
    )
    torch.testing.assert_close(x.grad.float(), reference_input.grad, **tolerance)


def test_cuda_matches_cpu_bitwise_in_float32(cuda_target):
    x = torch.randint(0, 5, (3, 20, 7, 7)).float()
    grad = torch.randn(3, 4, 3 * 20 * 9)
    out_cpu, argmax_cpu = torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    back_cpu = torch.ops.ssanet_ops._oriented_pool_backward(
        grad, argmax_cpu, [3, 3], 3, [2, 2], 3, 20, 7, 7
    )
    with cuda_target:
        out_gpu, argmax_gpu = torch.ops.ssanet_ops.oriented_pool(
            x.to(cuda_target.device), [3, 3], 3, [2, 2]
        )
        back_gpu = torch.ops.ssanet_ops._oriented_pool_backward(
            grad.to(cuda_target.device), argmax_gpu, [3, 3], 3, [2, 2], 3, 20, 7, 7
        )
    assert torch.equal(out_gpu.cpu(), out_cpu) and torch.equal(argmax_gpu.cpu(), argmax_cpu)
    # The same summation order on both devices (csrc/oriented_pool/cpu.cpp).
    assert torch.equal(back_gpu.cpu(), back_cpu)


@requires_simulator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_int64_indexed_kernels(dtype):
    # On a GPU the int64 (per-cell) kernels run from about 2**31 elements on, where the maps are
    # too large for the tiled kernels; the simulator runs them on small tensors when the int32
    # limit is lowered below every launch's indices (which rules out the tiles too).
    x = torch.randn(2, 5, 9, 11).to(dtype)
    with simulate_cuda(int32_index_limit=64):
        assert ssanet_ops.testing.load_simulator().grid_stride(x.numel())[2] == 64
        x_sim = x.clone().requires_grad_()
        out = ssanet_ops.oriented_pool(x_sim, patch_size=(3, 5), grid_size=3)
        grad = torch.randn_like(out)
        out.backward(grad)
    x_ref = x.float().requires_grad_()
    expected = reference.oriented_pool(x_ref, patch_size=(3, 5), grid_size=3)
    expected.backward(grad.float())
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=0)
    torch.testing.assert_close(x_sim.grad.float(), x_ref.grad, rtol=2e-2, atol=5e-2)


def _forward_backward(x, patch, grid, stride, grad):
    out, argmax = torch.ops.ssanet_ops.oriented_pool(x, patch, grid, stride)
    grad_x = torch.ops.ssanet_ops._oriented_pool_backward(
        grad, argmax, patch, grid, stride, *x.shape
    )
    return out, argmax, grad_x


@requires_simulator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tiled_kernels_match_the_per_cell_kernels_bitwise(dtype):
    # The CUDA kernels stage each (sample, block of channels) in shared memory (kernels.cuh);
    # the per-cell kernels, the only ones before issue 24, run where a tile does not fit or its
    # indices need int64, which a lowered int32 limit forces on every launch. Both must give the
    # same bits: ties (few distinct values), blocks of channels that do not divide C,
    # channels-last, strided input, strided grad_output, stride 0, a stride beyond the map.
    cases = [
        ((3, 70, 9, 11), [3, 5], 3, [3, 3]),
        ((2, 40, 7, 7), [3, 3], 3, [2, 2]),
        ((1, 130, 3, 3), [1, 1], 3, [1, 1]),
        ((2, 3, 4, 4), [4, 4], 2, [0, 0]),
        ((2, 5, 8, 7), [2, 1], 4, [2, 2]),
        ((2, 4, 7, 7), [3, 3], 1, [2**40 + 2**31, 9]),  # G = 1: any stride fits
    ]
    for shape, patch, grid, stride in cases:
        base = torch.randint(0, 4, shape).to(dtype)
        transposed = (base.transpose(2, 3), patch[::-1], stride[::-1])  # strided in H and W
        for x, patch_x, stride_x in [
            (base, patch, stride),
            (base.to(memory_format=torch.channels_last), patch, stride),
            transposed,
        ]:
            length = grid * shape[1] * patch[0] * patch[1]
            # Every other element of a wider tensor: a grad_output strided in its last dim.
            grad = torch.randn(shape[0], 4, 2 * length).to(dtype)[:, :, ::2]
            with simulate_cuda():
                tiled = _forward_backward(x, patch_x, grid, stride_x, grad)
            with simulate_cuda(int32_index_limit=64):
                per_cell = _forward_backward(x, patch_x, grid, stride_x, grad)
            for got, expected in zip(tiled, per_cell, strict=True):
                assert torch.equal(got, expected), (shape, x.stride())


def test_maps_too_large_for_a_tile(cuda_device):
    # One channel of 90x90 float64 (63 KiB) exceeds the 48 KiB of shared memory a tile may use:
    # the per-cell kernels run (kernels.cuh, plan_tiles).
    x = torch.randn(1, 2, 90, 90, device=cuda_device, dtype=torch.float64)
    assert_matches_reference(x, patch_size=30, grid_size=3)
