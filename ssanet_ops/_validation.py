"""Argument checks shared by the public ops and their fake kernels (SPEC.md section 4: errors
name the argument and what was expected)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import testing

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair; anything else raises naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_floating(tensor: torch.Tensor, name: str) -> None:
    """Raises unless `tensor` has a floating dtype its device's kernels support."""
    # Inside ssanet_ops.testing.simulate_cuda() CPU tensors run the CUDA kernels.
    runs_cuda_kernels = tensor.device.type == "cuda" or testing.simulating()
    allowed = CUDA_DTYPES if runs_cuda_kernels else CPU_DTYPES
    if tensor.dtype not in allowed:
        names = ", ".join(str(dtype).removeprefix("torch.") for dtype in allowed)
        raise TypeError(
            f"{name} must have one of the dtypes {names} on {tensor.device.type}, "
            f"got {tensor.dtype}"
        )


def check_rank(tensor: torch.Tensor, rank: int, name: str, shape: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise ValueError(
            f"{name} must be a {rank}-d tensor {shape}, got shape {tuple(tensor.shape)}"
        )


def check_same_device(tensors: dict[str, torch.Tensor]) -> None:
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")
