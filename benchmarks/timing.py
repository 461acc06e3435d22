"""Timing helpers shared by the benchmarks: medians of repeated runs, CUDA events on a GPU."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls.

    On CUDA each call is timed with a pair of CUDA events on the current stream (the GPU's
    own clock, launch overhead included); on the CPU with time.perf_counter.
    """
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            start_time = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_time) * 1e3)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    """A readable name of the device: the GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file-name-safe short name: 'cpu' or the GPU's name, e.g. 'nvidia-h100-80gb-hbm3'."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def copy_bandwidth_gbs(device: torch.device, megabytes: int = 256) -> float:
    """The device's measured copy bandwidth in GB/s: bytes read plus bytes written by a
    device-to-device copy of `megabytes` MB, per second (median of repeated copies)."""
    count = megabytes * 2**20 // 4
    source = torch.empty(count, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device, repeats=20, warmup=3)
    return 2 * source.numel() * 4 / (ms * 1e-3) / 1e9
