"""Benchmark cases of each operator, one module per op; bench_ops.py runs them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PASSES = ("forward", "forward+backward")


@dataclass
class Case:
    """One workload of one operator, timed for several implementations in the same run.

    make_inputs(device, dtype) returns the keyword arguments of every implementation; tensors
    with requires_grad=True are the ones differentiated in the forward+backward pass. Each
    implementation maps those arguments to a tensor or a tuple whose first element is the
    differentiable output. Ratios are baseline time / implementation time (above 1: faster).
    """

    op: str
    size: str
    make_inputs: Callable[[torch.device, torch.dtype], dict]
    implementations: dict[str, Callable[..., object]]
    baseline: str = "reference"
    passes: tuple[str, ...] = PASSES
    # Useful arithmetic of one forward, per implementation name, for a GFLOP/s column.
    flops: dict[str, float] = field(default_factory=dict)
    # Elements one forward must read and write at the least, for a 'x copy time' column.
    forward_elements: int | None = None
    # Minimum ratio of the "ssanet_ops" implementation against the baseline, per device type
    # ("cpu", "cuda") and pass, as the issues set them for the full sizes (--quick shows none).
    targets: dict[str, dict[str, float]] = field(default_factory=dict)
    # At most this many timed runs (and one warm-up) for slow workloads; None: the run's count.
    max_repeats: int | None = None
