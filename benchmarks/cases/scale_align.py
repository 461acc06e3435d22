"""scale_align workloads (issue 4): the pooled part features and the paper's flattened maps.

Each size is timed for the op, its torch.fft reference (the baseline) and its direct reference
(torch.roll + einsum), forward and forward+backward, and a torch.mm of the same arithmetic
(``[N, T*D] x [T*D, C]``) gives the machine's matrix-product rate in the same run.

GFLOP/s count the useful arithmetic of the Fourier form: the T real plane products of
csrc/common/scale_dft.h (T = 7 at S = 5), ``2 * T * N * C * D`` flops per forward, the same
count for every implementation (so the column is proportional to speed).
"""

from __future__ import annotations

import torch

import ssanet_ops
from ssanet_ops import reference

from . import Case


def plane_count(scales: int) -> int:
    """T of csrc/common/scale_dft.h: one plane per real frequency, three per complex one."""
    return (2 if scales % 2 == 0 else 1) + 3 * ((scales - 1) // 2)


def _align_inputs(proposals: int, scales: int, features: int, classes: int):
    def make_inputs(device: torch.device, dtype: torch.dtype) -> dict:
        phi = torch.randn(proposals, scales, features, device=device, dtype=dtype)
        # ScaleAlign's initialisation: unit-variance logits.
        weight = torch.randn(classes, scales, features, device=device, dtype=dtype)
        weight = weight / (scales * features * 0.45) ** 0.5
        bias = torch.zeros(classes, device=device, dtype=dtype)
        return {
            "phi": phi.requires_grad_(),
            "weight": weight.requires_grad_(),
            "bias": bias.requires_grad_(),
        }

    return make_inputs


def _mm_inputs(rows: int, inner: int, columns: int):
    def make_inputs(device: torch.device, dtype: torch.dtype) -> dict:
        return {
            "input": torch.randn(rows, inner, device=device, dtype=dtype),
            "mat2": torch.randn(inner, columns, device=device, dtype=dtype),
        }

    return make_inputs


def cases(quick: bool) -> list[Case]:
    # (N, S, D, C): pooled part features, and the paper's 7x7x2048 maps flattened.
    sizes = [(16, 5, 512, 50)] if quick else [(96, 5, 2048, 200), (8, 5, 7 * 7 * 2048, 200)]
    result = []
    for proposals, scales, features, classes in sizes:
        flops = 2 * plane_count(scales) * proposals * classes * features
        implementations = {
            "reference_fft": reference.scale_align_fft,
            "reference_direct": reference.scale_align,
            "ssanet_ops": ssanet_ops.scale_align,
        }
        size = f"N={proposals} S={scales} D={features} C={classes}"
        result.append(
            Case(
                op="scale_align",
                size=size,
                make_inputs=_align_inputs(proposals, scales, features, classes),
                implementations=implementations,
                baseline="reference_fft",
                flops={name: flops for name in implementations},
                # The direct reference takes tens of seconds per pass on the flattened maps.
                max_repeats=None if features < 10_000 else 3,
                targets={"cpu": {"forward+backward": 2.0}, "cuda": {"forward+backward": 3.0}},
            )
        )
        result.append(
            Case(
                op="scale_align",
                size=f"{size}: torch.mm [N, T*D] x [T*D, C], the same FLOPs",
                make_inputs=_mm_inputs(proposals, plane_count(scales) * features, classes),
                implementations={"torch.mm": torch.mm},
                baseline="torch.mm",
                passes=("forward",),
                flops={"torch.mm": flops},
            )
        )
    return result
