"""pytest plugin of the GPU check (benchmarks/gpu_check.sh): writes the names of the CUDA
kernels the test session launches, one per line, to the file GPU_CHECK_KERNELS_FILE names, so
the summary can show that the sanitizer's test list launches every kernel of csrc/.

    GPU_CHECK_KERNELS_FILE=kernels.txt PYTHONPATH=benchmarks pytest -p gpu_check_kernels ...
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_profiler: torch.profiler.profile | None = None


def pytest_sessionstart(session):
    global _profiler
    # The CPU activity too: torch's profiler records CUDA kernels only alongside it.
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    _profiler = torch.profiler.profile(activities=activities)
    _profiler.start()


def pytest_sessionfinish(session, exitstatus):
    _profiler.stop()
    kernels = {
        event.name
        for event in _profiler.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    }
    Path(os.environ["GPU_CHECK_KERNELS_FILE"]).write_text(
        "".join(f"{k}\n" for k in sorted(kernels))
    )
