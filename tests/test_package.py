"""The package around the kernels: build_info, and the errors when _C cannot be used."""

from __future__ import annotations

import re
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

from .conftest import CUDA_AVAILABLE, requires_simulator


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def test_build_info_describes_this_build():
    info = ssanet_ops.build_info()
    assert info["version"] == ssanet_ops.__version__
    # Built with some torch's headers for the stable ABI of an older or equal one, which the
    # torch running now is at least.
    assert _major_minor(info["target_torch_version"]) <= _major_minor(info["torch_version"])
    assert _major_minor(info["target_torch_version"]) <= _major_minor(torch.__version__)
    assert isinstance(info["cuda"], bool)
    assert info["cxx_compiler"]
    assert info["cpu_library"].endswith(".so")
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_compiler"] and info["cuda_library"]
        assert all(arch[:2].isdigit() for arch in info["cuda_architectures"])
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] is None
        assert info["cuda_library"] is None
    assert info["cuda_simulator"] == (info["simulator_library"] is not None)


def test_ops_are_registered_with_the_dispatcher():
    assert hasattr(torch.ops.ssanet_ops, "oriented_pool")
    assert hasattr(torch.ops.ssanet_ops, "_oriented_pool_backward")


_BUILD = {
    "torch_version": "2.14.1+cu130",
    "target_torch_version": "2.11",
    "cuda": True,
    "cuda_version": "13.0.88",
}


@pytest.mark.parametrize(
    ("torch_version", "torch_cuda"),
    [("2.11.0+cu130", "13.0"), ("2.13.0+cpu", None), ("2.20.0", "13.2"), ("3.0.0", "13.0")],
)
def test_one_build_serves_every_later_torch_of_its_cuda_major(torch_version, torch_cuda):
    _extension.check_torch(_BUILD, torch_version, torch_cuda)  # no error


def test_torch_older_than_the_target_names_both_versions():
    with pytest.raises(ImportError) as error:
        _extension.check_torch(_BUILD, "2.10.1+cu130", "13.0")
    message = str(error.value)
    assert "torch >= 2.11" in message and "2.10.1+cu130" in message
    assert _extension.REBUILD_COMMAND in message


def test_cuda_major_mismatch_names_both_versions():
    with pytest.raises(ImportError) as error:
        _extension.check_torch(_BUILD, "2.14.0+cu126", "12.6")
    message = str(error.value)
    assert "CUDA 13.0.88" in message and "CUDA 12.6" in message and "2.14.0+cu126" in message
    assert "CPU-only torch" in message
    # A CPU-only build serves any torch, a CUDA one too.
    _extension.check_torch({**_BUILD, "cuda": False, "cuda_version": None}, "2.14.0", "12.6")


def _needed_libraries(path: str) -> list[str]:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not installed")
    dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True)
    return [
        line.split("[")[1].split("]")[0] for line in dynamic.stdout.splitlines() if "NEEDED" in line
    ]


def test_python_module_links_against_no_torch_library():
    # Issue 11: _C must import under any torch; only the op libraries reach torch, through the
    # stable ABI's C functions of libtorch_cpu (and libtorch_cuda), whose names carry no version.
    needed = _needed_libraries(ssanet_ops._C.__file__)
    assert not [name for name in needed if "torch" in name or "c10" in name], needed
    folder = Path(ssanet_ops._C.__file__).parent
    info = ssanet_ops.build_info()
    for library in (info["cpu_library"], info["cuda_library"], info["simulator_library"]):
        if library is not None:
            needed = _needed_libraries(str(folder / library))
            assert "libtorch_cpu.so" in needed
            assert not [name for name in needed if "c10" in name or "python" in name], needed


def test_no_kernel_source_includes_aten_or_c10():
    # Issue 11: every kernel file is on the stable API only.
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    if not csrc.is_dir():
        pytest.skip("the sources are not next to the tests")
    forbidden = (
        "#include <ATen/",
        "#include <c10/",
        "#include <torch/extension.h>",
        "#include <torch/library.h>",
        "#include <torch/torch.h>",
    )
    offending = [
        f"{path.relative_to(csrc)}: {line.strip()}"
        for path in sorted(csrc.rglob("*"))
        if path.suffix in {".h", ".cuh", ".cpp", ".cu"}
        for line in path.read_text().splitlines()
        if line.strip().startswith(forbidden)
    ]
    assert not offending


def test_missing_extension_says_how_to_build(tmp_path):
    # A copy of the Python sources without the compiled files, imported in a fresh interpreter
    # that sees torch but not the installed ssanet_ops.
    package_dir = Path(ssanet_ops.__file__).parent
    copy = tmp_path / "ssanet_ops"
    shutil.copytree(package_dir, copy, ignore=shutil.ignore_patterns("_C*", "*.so", "__pycache__"))
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
def test_simulated_kernels_contract_multiply_add_as_nvcc_does():
    simulator = ssanet_ops.testing.load_simulator()
    if not simulator.host_fma:
        pytest.skip("the host has no FMA instructions: the simulator rounds twice")
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24: rounded to float32 first, the 2**-24 is lost (a tie
    # to even); one fused rounding keeps it.
    a = 1 + 2**-12
    assert simulator.multiply_add(a, a, -(1 + 2**-11)) == 2**-24
    assert float(torch.tensor(a) * torch.tensor(a) - torch.tensor(1 + 2**-11)) == 0


@requires_simulator
def _ops_dispatched(call) -> set[str]:
    """The names of the ops that `call()` dispatched, as torch's profiler records them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return {event.name for event in profile.events()}


def test_simulate_cuda_routes_cpu_calls_and_restores_them():
    x = torch.randn(1, 2, 7, 7).half()
    assert "ssanet_ops_sim::oriented_pool" not in _ops_dispatched(
        lambda: ssanet_ops.oriented_pool(x)
    )
    assert not ssanet_ops.testing.simulating()
    with simulate_cuda():
        # The CPU call runs the simulated CUDA kernel.
        assert "ssanet_ops_sim::oriented_pool" in _ops_dispatched(
            lambda: ssanet_ops.oriented_pool(x)
        )
        out = ssanet_ops.oriented_pool(x)
        with simulate_cuda():  # blocks nest
            assert ssanet_ops.testing.simulating()
        assert ssanet_ops.testing.simulating()
        out_again, _ = torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    assert not ssanet_ops.testing.simulating()
    torch.testing.assert_close(out, out_again, rtol=0, atol=0)
    assert "ssanet_ops_sim::oriented_pool" not in _ops_dispatched(
        lambda: torch.ops.ssanet_ops.oriented_pool(x, [3, 3], 3, [2, 2])
    )
    assert "oriented_pool" in ssanet_ops.testing.simulated_ops()


@requires_simulator
def test_simulate_cuda_replaces_the_cpu_kernels_without_a_warning(tmp_path):
    # In a fresh interpreter: the dispatcher warns about an override once per process (torch
    # 2.13 does, beside which CI's CPU-only step runs this).
    code = (
        "import warnings\n"
        "import ssanet_ops\n"
        "from ssanet_ops.testing import simulate_cuda\n"
        "warnings.simplefilter('error')\n"
        "with simulate_cuda():\n"
        "    pass\n"
        "print('quiet')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0 and done.stdout == "quiet\n", done.stderr


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


@pytest.mark.skipif(CUDA_AVAILABLE, reason="with a GPU, the GPU tests run instead of skipping")
def test_skipped_tests_are_summed_up_one_line_per_reason():
    # Without a GPU, the GPU tests of one file skip at many places for one reason: one line,
    # with their number, not one line per place (issue 23: 87 lines buried the summary).
    repository = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "pytest"),
            "tests/test_oriented_pool.py",
            "-m",
            "cuda_kernels and not cuda_simulator",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        cwd=repository,  # the project's pytest settings
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    skipped = int(re.search(r"(\d+) skipped", done.stdout.splitlines()[-1]).group(1))
    assert skipped > 1
    assert not [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    section = done.stdout.split("skipped, by reason")[1].splitlines()[1:]
    reasons = [line for line in section if line.strip()]
    assert reasons[0].split() == [str(skipped), *"needs a GPU and the CUDA kernels".split()]
