"""The op calls the GPU model traces and the GPU check times, named once for both.

benchmarks/gpu_model.py writes one record per (op, case, direction) of these runs;
benchmarks/gpu_check_model.py times the same runs on a GPU and writes records under the same
keys, so that the check's report can set each measurement beside its prediction. A run is one
benchmark case of benchmarks/cases/ (its ssanet_ops implementation) in one variant: a dtype,
and NCHW or channels-last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import Case, oriented_pool, roi_crop, scale_align

MODULES = (oriented_pool, roi_crop, scale_align)
# (label, dtype, channels_last); the model's --quick runs only the first.
VARIANTS = (
    ("float32", torch.float32, False),
    ("bfloat16", torch.bfloat16, False),
    ("float32 channels-last", torch.float32, True),
)
# Ops whose CUDA backward takes another path under torch.use_deterministic_algorithms(True):
# the crop's gather instead of its atomics (docs/operators.md, "Deterministic mode").
DETERMINISTIC_BACKWARD_OPS = ("multiscale_roi_crop",)
DETERMINISTIC_BACKWARD = "backward (deterministic)"  # that backward's direction


def case_name(size: str, variant: str) -> str:
    """The `case` key of a record: the benchmark case's size and the variant's label."""
    return f"{size}, {variant}"


def directions(op: str) -> tuple[str, ...]:
    """The `direction` keys of an op's records: the forward, the backward, and for the ops of
    DETERMINISTIC_BACKWARD_OPS the backward under deterministic algorithms."""
    if op in DETERMINISTIC_BACKWARD_OPS:
        return ("forward", "backward", DETERMINISTIC_BACKWARD)
    return ("forward", "backward")


@dataclass(frozen=True)
class Run:
    op: str
    case: str  # case_name(source.size, variant)
    variant: str  # a label of VARIANTS
    source: Case
    dtype: torch.dtype
    channels_last: bool

    @property
    def function(self) -> Callable[..., object]:
        return self.source.implementations["ssanet_ops"]

    def make_inputs(self, device: torch.device) -> dict:
        """The case's inputs (seeded), 4-D tensors in channels-last memory where asked."""
        torch.manual_seed(0)
        inputs = self.source.make_inputs(device, self.dtype)
        if self.channels_last:
            for name, value in inputs.items():
                if isinstance(value, torch.Tensor) and value.dim() == 4:
                    inputs[name] = (
                        value.detach()
                        .to(memory_format=torch.channels_last)
                        .requires_grad_(value.requires_grad)
                    )
        return inputs


def model_runs(
    full_sizes: bool = False, all_variants: bool = True, ops: list[str] | None = None
) -> Iterator[Run]:
    """The runs, op by op: each case with an ssanet_ops implementation once (a size the
    benchmarks time against two peers is one run), at the cases' quick sizes (the model's) or
    full sizes, in float32 NCHW, or every variant (channels-last only for ops with a 4-D
    tensor)."""
    for module in MODULES:
        seen = set()
        for case in module.cases(quick=not full_sizes):
            if "ssanet_ops" not in case.implementations or (case.op, case.size) in seen:
                continue
            if ops and case.op not in ops:
                continue
            seen.add((case.op, case.size))
            for label, dtype, channels_last in VARIANTS if all_variants else VARIANTS[:1]:
                if channels_last and case.op == "scale_align":
                    continue  # no 4-D tensor
                yield Run(case.op, case_name(case.size, label), label, case, dtype, channels_last)
