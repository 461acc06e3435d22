"""Shared fixtures: every op test runs on the CPU, on CUDA where a GPU is present, and on the
host simulator of the CUDA kernels (ssanet_ops.testing.simulate_cuda) always.

- ``device`` (cpu, cuda, sim): a torch.device for the test's tensors. For ``sim`` it is the CPU,
  and the whole test runs inside ``simulate_cuda()``.
- ``cuda_device`` (cuda, sim): the same for tests of the CUDA kernels only.
- ``cuda_target`` (cuda, sim): for tests that compare CPU results with the CUDA kernels' in one
  test: ``cuda_target.device`` is where the CUDA kernels' tensors live, and ``with cuda_target:``
  runs the ops on the CUDA kernels (a no-op on a GPU).

Every cuda and sim variant carries the marker ``cuda_kernels`` (``-m cuda_kernels`` selects the
tests that run CUDA kernel code), and the sim variants ``cuda_simulator``. A simulated test of an
op whose kernels are not simulated yet is reported as skipped.

torchvision is optional (the operators need only torch): tests that compare with its roi_align
carry ``requires_torchvision`` (marker ``torchvision``) and skip without it; the modules of the
model layer, which needs it throughout, skip as a whole (``pytest.importorskip`` of
``ssanet._vision``, whose ImportError says why in one line). A torchvision that is installed
but is not the build made for this torch (PyPI's CUDA build beside a CPU-only torch) counts as
missing, the reason saying so.

Skipped tests are summed up in one line per reason (``-rs`` lists them one by one).

torch.compile's on-disk caches go to a folder of this test session (unless
TORCHINDUCTOR_CACHE_DIR is set): a graph cached by another build of ssanet_ops may call an op
with an older schema (README, Troubleshooting).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

import ssanet_ops
from ssanet_ops._torchvision import torchvision_problem
from ssanet_ops.testing import NotSimulatedError, simulate_cuda, simulator_available

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ssanet-ops-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

CUDA_AVAILABLE = torch.cuda.is_available() and ssanet_ops.build_info()["cuda"]
SIMULATOR_BUILT = simulator_available()

_CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda_kernels,
        pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a GPU and the CUDA kernels"),
    ],
)
_SIM = pytest.param(
    "sim",
    marks=[
        pytest.mark.cuda_kernels,
        pytest.mark.cuda_simulator,
        pytest.mark.skipif(not SIMULATOR_BUILT, reason="the CUDA simulator is not built"),
    ],
)


def requires_cuda(test):
    """For tests that need a real GPU (two devices at once, CUDA-only APIs)."""
    test = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a GPU and the CUDA kernels")(test)
    return pytest.mark.cuda_kernels(test)


@functools.cache
def torchvision_missing() -> str | None:
    """Why torchvision cannot be used here, or None; it is imported on the first call."""
    return torchvision_problem()


def requires_torchvision(test):
    """For tests that compare with torchvision (roi_align, reference.multiscale_roi_crop):
    skipped where it cannot be used (pytest_runtest_setup)."""
    return pytest.mark.torchvision(test)


def requires_simulator(test):
    """For tests of the simulator itself, or of what only the simulator can do."""
    test = pytest.mark.skipif(not SIMULATOR_BUILT, reason="the CUDA simulator is not built")(test)
    return pytest.mark.cuda_simulator(pytest.mark.cuda_kernels(test))


class CudaTarget(contextlib.AbstractContextManager):
    """Where the CUDA kernels run: a GPU, or the simulator on CPU tensors."""

    def __init__(self, name: str):
        self.name = name
        self.device = torch.device("cpu" if name == "sim" else name)
        self._contexts: list[contextlib.AbstractContextManager] = []

    def __enter__(self) -> CudaTarget:
        context = simulate_cuda() if self.name == "sim" else contextlib.nullcontext()
        context.__enter__()
        self._contexts.append(context)
        return self

    def __exit__(self, *exc_info) -> bool | None:
        return self._contexts.pop().__exit__(*exc_info)

    def __repr__(self) -> str:
        return f"CudaTarget({self.name!r})"


def _run_on(name: str) -> Iterator[torch.device]:
    target = CudaTarget(name)
    if name == "cpu":
        yield target.device
    else:
        with target:
            yield target.device


@pytest.fixture(params=["cpu", _CUDA, _SIM])
def device(request) -> Iterator[torch.device]:
    yield from _run_on(request.param)


@pytest.fixture(params=[_CUDA, _SIM])
def cuda_device(request) -> Iterator[torch.device]:
    yield from _run_on(request.param)


@pytest.fixture(params=[_CUDA, _SIM])
def cuda_target(request) -> CudaTarget:
    return CudaTarget(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes most of a minute on a small CPU (deselect with -m 'not slow')"
    )
    config.addinivalue_line(
        "markers", "cuda_kernels: runs CUDA kernel code, on a GPU or in the simulator"
    )
    config.addinivalue_line(
        "markers", "cuda_simulator: runs the CUDA kernels in the host simulator"
    )
    config.addinivalue_line(
        "markers", "torchvision: compares with torchvision, skipped where it is not installed"
    )


def pytest_runtest_setup(item):
    if item.get_closest_marker("torchvision") is not None:
        problem = torchvision_missing()
        if problem is not None:
            pytest.skip(f"needs torchvision (the 'vision' extra): {problem}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None:
        return
    # Not a failure of the op: its kernels have not been moved onto the simulator yet. The
    # error may come wrapped (opcheck re-raises what it caught).
    error = call.excinfo.value
    while error is not None and not isinstance(error, NotSimulatedError):
        error = error.__cause__ or error.__context__
    if error is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"Skipped: {error}")


def pytest_terminal_summary(terminalreporter):
    _summarize_skips(terminalreporter)
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        nodes = {
            report.nodeid
            for report in terminalreporter.stats.get(outcome, [])
            if "cuda_simulator" in getattr(report, "keywords", {})
        }
        if nodes:
            counts[outcome] = len(nodes)
    if counts:
        listed = ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
        terminalreporter.write_line(f"simulated CUDA tests: {listed}")


def _summarize_skips(terminalreporter) -> None:
    """One line per reason, with the number of tests skipped for it: where there is no GPU,
    the GPU-only tests alone would fill a screen with ``-rs``'s line per test."""
    if "s" in terminalreporter.reportchars:  # -rs asked for the lines one by one
        return
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:5d} {reason}")
