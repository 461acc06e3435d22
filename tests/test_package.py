"""The package around the kernels: build_info, and the errors when _C cannot be used."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import ssanet_ops
from ssanet_ops import _extension
from ssanet_ops.testing import NotSimulatedError, simulate_cuda

from .conftest import requires_simulator


def test_build_info_describes_this_build():
    info = ssanet_ops.build_info()
    assert info["version"] == ssanet_ops.__version__
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool)
    assert info["cxx_compiler"]
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_compiler"]
        assert all(arch[:2].isdigit() for arch in info["cuda_architectures"])
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] is None
    assert isinstance(info["cuda_simulator"], bool)


def test_ops_are_registered_with_the_dispatcher():
    assert hasattr(torch.ops.ssanet_ops, "oriented_pool")
    assert hasattr(torch.ops.ssanet_ops, "_oriented_pool_backward")


def test_torch_version_mismatch_names_both_versions(monkeypatch):
    monkeypatch.setattr(
        _extension, "_read_build_config", lambda: {"torch_version": "1.2.3+elsewhere"}
    )
    with pytest.raises(ImportError) as error:
        _extension.load()
    message = str(error.value)
    assert "1.2.3+elsewhere" in message and torch.__version__ in message
    assert _extension.REBUILD_COMMAND in message


def test_missing_extension_says_how_to_build(tmp_path):
    # A copy of the Python sources without the compiled _C and its build record, imported in
    # a fresh interpreter that sees torch but not the installed ssanet_ops.
    package_dir = Path(ssanet_ops.__file__).parent
    copy = tmp_path / "ssanet_ops"
    shutil.copytree(
        package_dir, copy, ignore=shutil.ignore_patterns("_C*", "_build_config.json", "__pycache__")
    )
    torch_site = str(Path(torch.__file__).parent.parent)
    paths = [str(tmp_path), torch_site, sysconfig.get_paths()["purelib"]]
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import ssanet_ops"],
        env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "ImportError: the compiled extension ssanet_ops._C is missing from" in result.stderr
    assert str(copy) in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def test_ops_run_under_inference_mode():
    # The CPU kernels call ATen ops from worker threads; under inference mode those threads
    # must see the caller's mode, or writing inference tensors fails. Sizes large enough that
    # every kernel splits its work across threads.
    phi = torch.randn(8, 5, 16 * 7 * 7 * 64)
    weight = torch.randn(200, 5, 16 * 7 * 7 * 64)
    maps = torch.randn(16, 256, 7, 7)
    images = torch.randn(2, 32, 64, 64)
    boxes = torch.tensor([[0, 4.0, 4.0, 40.0, 40.0], [1, 10.0, 0.0, 60.0, 30.0]])
    with torch.no_grad():
        logits, shift = ssanet_ops.scale_align(phi, weight)
        pooled = ssanet_ops.oriented_pool(maps)
        crops = ssanet_ops.multiscale_roi_crop(images, boxes, 7, [0.8, 1.0, 1.25])
    with torch.inference_mode():
        torch.testing.assert_close(ssanet_ops.scale_align(phi, weight)[0], logits)
        assert torch.equal(ssanet_ops.scale_align(phi, weight)[1], shift)
        assert torch.equal(ssanet_ops.oriented_pool(maps), pooled)
        assert torch.equal(
            ssanet_ops.multiscale_roi_crop(images, boxes, 7, [0.8, 1.0, 1.25]), crops
        )


# --- the host simulator of the CUDA kernels (ssanet_ops.testing) ------------------------------


@requires_simulator
@pytest.mark.parametrize(
    "count",
    [1, 255, 257, 2**28, 2**28 + 1, 1_879_048_192, 1_879_048_193, 2_147_483_646, 2**31, 2**40],
)
def test_grid_stride_index_type_covers_the_step_that_ends_the_loop(count):
    # Issue 9, defect 4: the oriented_pool backward chose int32 from the element count alone,
    # and its loop index wrapped negative for 1,879,048,193 to 2,147,483,646 elements.
    blocks, threads, index_bits = ssanet_ops.testing.load_simulator().grid_stride(count)
    assert threads == 256 and 1 <= blocks <= 2**20
    stride = blocks * threads
    assert stride >= count or blocks == 2**20  # one pass, or the most blocks
    # The loop `for (i = thread; i < count; i += stride)` run in int32 (two's complement): the
    # thread that takes item count - 1 steps to count - 1 + stride, which must not wrap.
    step_past_the_end = (count - 1 + stride + 2**31) % 2**32 - 2**31
    int32_is_safe = count <= 2**31 - 1 and step_past_the_end >= count
    assert index_bits == (32 if int32_is_safe else 64)


@requires_simulator
def test_grid_stride_index_type_boundary_of_the_review():
    grid_stride = ssanet_ops.testing.load_simulator().grid_stride
    assert grid_stride(1_879_048_192)[2] == 32
    assert grid_stride(1_879_048_193)[2] == 64
    # grad_input [60, 2048, 128, 128], the review's example.
    assert grid_stride(60 * 2048 * 128 * 128)[2] == 64


@requires_simulator
@pytest.mark.parametrize(("blocks", "threads"), [(1, 1), (3, 64), (2, 1024), (5, 96)])
def test_simulated_syncthreads_waits_for_the_whole_block(blocks, threads):
    simulator = ssanet_ops.testing.load_simulator()
    values, poison = simulator.barrier_exchange(blocks, threads)
    # Each thread read what its neighbour (in the block) wrote before the barrier.
    expected = [b * threads + (t + 1) % threads for b in range(blocks) for t in range(threads)]
    assert values == expected
    # Dynamic shared memory starts poisoned (all bytes 0xFF), as uninitialised memory would be.
    assert poison == [-1] * (blocks * threads)


@requires_simulator
def test_simulated_barrier_errors_and_launch_limits():
    simulator = ssanet_ops.testing.load_simulator()
    with pytest.raises(RuntimeError, match=r"1 of 32 threads of block .* exited while the others"):
        simulator.barrier_exchange(2, 32, divergent=True)
    with pytest.raises(RuntimeError, match=r"invalid grid \(0, 1, 1\)"):
        simulator.barrier_exchange(0, 32)
    with pytest.raises(RuntimeError, match=r"invalid block \(2048, 1, 1\)"):
        simulator.barrier_exchange(1, 2048)
    # The simulator recovers from each error.
    assert simulator.barrier_exchange(1, 4)[0] == [1, 2, 3, 0]


@requires_simulator
def test_simulated_threads_run_in_a_shuffled_order():
    simulator = ssanet_ops.testing.load_simulator()
    first = simulator.atomic_order(4, 256)
    second = simulator.atomic_order(4, 256)
    # Every thread added once; the order is neither the index order nor the same twice, so
    # results that depend on the order of atomics differ as they do on a GPU.
    assert sorted(first) == list(range(4 * 256)) == sorted(second)
    assert first != sorted(first) and first != second


@requires_simulator
def test_simulate_cuda_routes_cpu_calls_and_restores_them():
    x = torch.randn(1, 2, 7, 7).half()
    with pytest.raises(TypeError, match="float32, float64 on cpu"):
        ssanet_ops.oriented_pool(x)
    assert not ssanet_ops.testing.simulating()
    with simulate_cuda():
        # The CUDA kernels take float16; the CPU kernels do not.
        out = ssanet_ops.oriented_pool(x)
        with simulate_cuda():  # blocks nest
            assert ssanet_ops.testing.simulating()
        assert ssanet_ops.testing.simulating()
        out_again, _ = torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    assert not ssanet_ops.testing.simulating()
    torch.testing.assert_close(out, out_again, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="x must be float32 or float64 on the CPU"):
        torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    assert "oriented_pool" in ssanet_ops.testing.simulated_ops()


@requires_simulator
def test_ops_without_simulated_kernels_raise_inside_simulate_cuda():
    with torch.library._scoped_library("ssanet_ops", "FRAGMENT") as library:
        library.define("_only_on_cpu(Tensor x) -> Tensor")
        library.impl("_only_on_cpu", lambda x: x + 1, "CPU")
        x = torch.zeros(3)
        torch.testing.assert_close(torch.ops.ssanet_ops._only_on_cpu(x), x + 1)
        with simulate_cuda(), pytest.raises(NotSimulatedError, match="not simulated yet"):
            torch.ops.ssanet_ops._only_on_cpu(x)
        torch.testing.assert_close(torch.ops.ssanet_ops._only_on_cpu(x), x + 1)
