"""The argument checks of scale_correlation and scale_align (docs/operators.md sections 3 and
4), beside ``_validation.py``'s checks of the other operators, whose helpers they use.
"""

from __future__ import annotations

import os

import torch

from ._validation import (
    MAX_ALIGN_SCALES,
    InvalidArgumentError,
    autocast_dtype,
    check_dtype,
    check_same_device,
)

# The values of CUBLAS_WORKSPACE_CONFIG that torch's deterministic mode accepts for cuBLAS
# (at::Context::checkCuBLASConfigDeterministic).
DETERMINISTIC_CUBLAS_CONFIGS = (":4096:8", ":16:8")


def uses_cublas(phi: torch.Tensor, weight: torch.Tensor, op: str) -> bool:
    """Whether a CUDA call of ``op`` ("scale_correlation" or "scale_align") on these inputs
    runs products on cuBLAS (docs/operators.md section 3), mirroring the kernels' choice
    (csrc/scale_align/kernels.cuh, ``fused_products`` and the backward's form). The forward
    takes its own kernel where S <= 9 and D > 0, in float64 only while its planes fit the
    default shared memory (S <= 6, or 7 with N > 8); the backward, when a gradient is
    needed, its own kernel in scale_align at S <= 8 and cuBLAS otherwise (the Fourier form,
    also scale_correlation's). float64 is judged before autocast's cast, which only lowers it,
    so the answer errs towards cuBLAS."""
    N, S, D = phi.shape[-3:]
    float64 = torch.float64 in (phi.dtype, weight.dtype)
    fused_forward = D > 0 and S <= 9 and (not float64 or S <= 6 or (S == 7 and N > 8))
    if not fused_forward:
        return True
    needs_grad = torch.is_grad_enabled() and (phi.requires_grad or weight.requires_grad)
    return needs_grad and (op == "scale_correlation" or S > 8)


def check_cublas_determinism(phi: torch.Tensor, weight: torch.Tensor, op: str) -> None:
    """Raises, naming CUBLAS_WORKSPACE_CONFIG, where torch's deterministic mode would refuse the
    cuBLAS products of scale_correlation and scale_align on CUDA (docs/operators.md section
    4): ``torch.use_deterministic_algorithms(True)`` without ``warn_only`` and without a
    deterministic cuBLAS workspace, for a call that uses cuBLAS (:func:`uses_cublas`). Torch
    raises there too, from inside the kernel, where the headers of torch 2.11 and 2.12 lose its
    message (common/stable.h, SSANET_SHIM_CHECK)."""
    if (
        phi.device.type == "cuda"
        and torch.are_deterministic_algorithms_enabled()
        and not torch.is_deterministic_algorithms_warn_only_enabled()
        and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DETERMINISTIC_CUBLAS_CONFIGS
        and uses_cublas(phi, weight, op)
    ):
        raise RuntimeError(
            f"{op}: torch.use_deterministic_algorithms(True) needs the environment variable "
            f"CUBLAS_WORKSPACE_CONFIG={DETERMINISTIC_CUBLAS_CONFIGS[0]} (or "
            f"{DETERMINISTIC_CUBLAS_CONFIGS[1]}) for the op's cuBLAS products on CUDA (this call's "
            "scales, dtype or gradients take them); set it before the process first uses "
            "cuBLAS, or pass warn_only=True"
        )


def _check_scale_align_shapes(phi: torch.Tensor, weight: torch.Tensor) -> None:
    for name, tensor in (("phi", phi), ("weight", weight)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if phi.dim() not in (3, 4):
        raise ValueError(
            "phi must be a 3-d tensor [N, S, D] or a 4-d one [G, N, S, D], "
            f"got shape {tuple(phi.shape)}"
        )
    if weight.dim() != phi.dim():
        raise ValueError(
            f"weight must be {'[G, C, S, D]' if phi.dim() == 4 else '[C, S, D]'} to match phi "
            f"of shape {tuple(phi.shape)}, got shape {tuple(weight.shape)}"
        )
    if phi.dim() == 4 and phi.shape[0] != weight.shape[0]:
        raise ValueError(
            f"phi and weight must have one group count G, got {phi.shape[0]} and {weight.shape[0]}"
        )
    if phi.shape[-2:] != weight.shape[-2:]:
        raise ValueError(
            "phi [.., N, S, D] and weight [.., C, S, D] must agree in S and D, got shapes "
            f"{tuple(phi.shape)} and {tuple(weight.shape)}"
        )
    if phi.shape[-2] < 1:
        raise ValueError("the scale dimension S must be at least 1")
    if phi.shape[-2] > MAX_ALIGN_SCALES:
        raise InvalidArgumentError(
            f"the scale dimension S of phi and weight must be at most {MAX_ALIGN_SCALES}, "
            f"got {phi.shape[-2]}"
        )


def _check_bias(bias: torch.Tensor | None, weight: torch.Tensor) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    expected = tuple(weight.shape[:-2])
    if tuple(bias.shape) != expected:
        shape = "[G, C]" if weight.dim() == 4 else "[C]"
        raise ValueError(f"bias must have shape {shape} = {expected}, got {tuple(bias.shape)}")


def check_scale_align_inputs(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    """Checks the arguments of scale_correlation / scale_align (docs/operators.md section 3):
    phi ``[G?, N, S, D]``, weight ``[G?, C, S, D]``, bias ``[G?, C]``, on one device, in one
    dtype the kernels take once autocast has cast them."""
    _check_scale_align_shapes(phi, weight)
    _check_bias(bias, weight)
    tensors = {"phi": phi, "weight": weight}
    if bias is not None:
        tensors["bias"] = bias
    check_same_device(tensors)
    dtypes = {name: autocast_dtype(tensor) for name, tensor in tensors.items()}
    for name, dtype in dtypes.items():
        check_dtype(dtype, name)
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"phi, weight and bias must have one dtype, got {listed}")
