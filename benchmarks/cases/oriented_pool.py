"""oriented_pool workloads (issue "Start here", section 4): the paper's part maps and more."""

from __future__ import annotations

import torch

import ssanet_ops
from ssanet_ops import reference

from . import Case


def _maps(batch: int, channels: int, size: int):
    def make_inputs(device: torch.device, dtype: torch.dtype) -> dict:
        x = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
        return {"x": x.requires_grad_()}

    return make_inputs


def cases(quick: bool) -> list[Case]:
    sizes = [(8, 256)] if quick else [(96, 2048), (512, 2048)]
    result = []
    for batch, channels in sizes:
        # Read the input once, write the four orientations once: [B, 4, G*C*h*w], G = h = w = 3.
        forward_elements = batch * channels * (7 * 7 + 4 * 3 * 3 * 3)
        result.append(
            Case(
                op="oriented_pool",
                size=f"B={batch} {channels}x7x7, 3x3 patches, 3x3 grid",
                make_inputs=_maps(batch, channels, 7),
                implementations={
                    "reference": reference.oriented_pool,
                    "ssanet_ops": ssanet_ops.oriented_pool,
                },
                forward_elements=forward_elements,
                targets={"cpu": {"forward+backward": 3.0}, "cuda": {"forward+backward": 5.0}},
            )
        )
    return result
