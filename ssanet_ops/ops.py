"""The public operators: argument checks and conversions, then torch.ops.ssanet_ops.*."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import (
    CPU_DTYPES,
    CUDA_DTYPES,
    check_floating,
    check_rank,
    check_same_device,
    pair,
)

# Grid indices are stored as uint8 for the backward (csrc/oriented_pool/oriented_pool.h).
MAX_GRID_SIZE = 256


def oriented_pool_geometry(
    input_shape: Sequence[int],
    patch_size: int | Sequence[int],
    grid_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
) -> tuple[tuple[int, int], int, tuple[int, int]]:
    """Checks oriented_pool's arguments against an input of `input_shape` [B, C, H, W] and
    returns (patch (h, w), G, stride (sh, sw)), the stride resolved per SPEC.md section 1."""
    _, _, height, width = input_shape
    patch_h, patch_w = pair(patch_size, "patch_size")
    if patch_h < 1 or patch_w < 1:
        raise ValueError(f"patch_size must be positive, got {(patch_h, patch_w)}")
    grid_rows, grid_columns = pair(grid_size, "grid_size")
    if grid_rows != grid_columns:
        raise ValueError(
            f"grid_size must be square (G rows and G columns, so the four orientations have one "
            f"length), got {(grid_rows, grid_columns)}"
        )
    grid = grid_rows
    if not 1 <= grid <= MAX_GRID_SIZE:
        raise ValueError(f"grid_size must be in [1, {MAX_GRID_SIZE}], got {grid}")
    if patch_h > height or patch_w > width:
        raise ValueError(
            f"patch_size {(patch_h, patch_w)} does not fit in the {height}x{width} input x"
        )
    if stride is None:
        if grid == 1:
            stride_h = stride_w = 0
        else:
            if (height - patch_h) % (grid - 1) or (width - patch_w) % (grid - 1):
                raise ValueError(
                    f"the default stride ((H - h) / (G - 1), (W - w) / (G - 1)) = "
                    f"({(height - patch_h) / (grid - 1):g}, {(width - patch_w) / (grid - 1):g}) "
                    f"is not whole for x of {height}x{width}, patch_size {(patch_h, patch_w)} "
                    f"and grid_size {grid}; pass stride explicitly"
                )
            stride_h = (height - patch_h) // (grid - 1)
            stride_w = (width - patch_w) // (grid - 1)
    else:
        stride_h, stride_w = pair(stride, "stride")
        if stride_h < 0 or stride_w < 0:
            raise ValueError(f"stride must be non-negative, got {(stride_h, stride_w)}")
    if (grid - 1) * stride_h + patch_h > height or (grid - 1) * stride_w + patch_w > width:
        raise ValueError(
            f"a {grid}x{grid} grid of {patch_h}x{patch_w} patches at stride "
            f"{(stride_h, stride_w)} does not fit in the {height}x{width} input x "
            "(patches outside x are an error, not padding)"
        )
    return (patch_h, patch_w), grid, (stride_h, stride_w)


def oriented_pool(
    x: torch.Tensor,
    patch_size: int | Sequence[int] = 3,
    grid_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Oriented pooling (SPEC.md section 1; paper section 3.3, eqs. 9-12).

    Cuts ``x`` into a G x G grid of h x w patches (patch (i, j) starts at (i*sh, j*sw)), takes
    the elementwise maximum of every grid row (p_i) and column (q_j) of flattened patches, and
    concatenates them in four orientations.

    Args:
        x: ``[B, C, H, W]`` feature maps (float32/float64; on CUDA also float16/bfloat16).
        patch_size: (h, w) of a patch, or one int for both.
        grid_size: G, patches per row and per column (an int, or a square pair).
        stride: (sh, sw) between patches; default ``((H-h)/(G-1), (W-w)/(G-1))``, which must
            then be whole (0 when G = 1).

    Returns:
        ``[B, 4, G*L]`` with ``L = C*h*w``: orientation 0 is ``[p_0, ..., p_{G-1}]``, 1 is
        ``[q_0, ..., q_{G-1}]``, 2 and 3 the same in reverse order of patches.
    """
    check_rank(x, 4, "x", "[B, C, H, W]")
    check_floating(x, "x")
    patch, grid, resolved_stride = oriented_pool_geometry(x.shape, patch_size, grid_size, stride)
    out, _ = torch.ops.ssanet_ops.oriented_pool(x, list(patch), grid, list(resolved_stride))
    return out


def _effective_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype `tensor` reaches the scale_align kernels with: under autocast (SPEC.md
    section 3 ops behave like a linear layer), floating tensors other than float64 are cast to
    the autocast dtype on CUDA and to float32 on the CPU (whose kernels take float32/float64)."""
    device_type = tensor.device.type
    if (
        device_type in ("cpu", "cuda")
        and torch.is_autocast_enabled(device_type)
        and tensor.is_floating_point()
        and tensor.dtype != torch.float64
    ):
        return torch.get_autocast_dtype(device_type) if device_type == "cuda" else torch.float32
    return tensor.dtype


def check_scale_align_inputs(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    """Checks the arguments of scale_correlation / scale_align (SPEC.md section 3):
    phi ``[G?, N, S, D]``, weight ``[G?, C, S, D]``, bias ``[G?, C]``."""
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
    tensors = {"phi": phi, "weight": weight}
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        expected = tuple(weight.shape[:-2])
        if tuple(bias.shape) != expected:
            shape = "[G, C]" if weight.dim() == 4 else "[C]"
            raise ValueError(f"bias must have shape {shape} = {expected}, got {tuple(bias.shape)}")
        tensors["bias"] = bias
    check_same_device(tensors)
    dtypes = {name: _effective_dtype(tensor) for name, tensor in tensors.items()}
    allowed = CUDA_DTYPES if phi.device.type == "cuda" else CPU_DTYPES
    for name, dtype in dtypes.items():
        if dtype not in allowed:
            names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(
                f"{name} must have one of the dtypes {names} on {phi.device.type}, got {dtype}"
            )
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name} {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"phi, weight and bias must have one dtype, got {listed}")


def scale_correlation(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Circulant scale correlation (SPEC.md section 3; paper eq. 7).

    ``corr[n, c, r] = sum over j, d of phi[n, j, d] * weight[c, (j + r) mod S, d]``: the response
    of every proposal's S scale candidates to every class filter under each of the S circulant
    shifts r, computed in the Fourier form (a real DFT over the scale axis, the products of its
    S//2 + 1 frequencies as real matrix products, the inverse DFT).

    Args:
        phi: ``[N, S, D]`` features of N proposals at S scales, or ``[G, N, S, D]`` with a
            leading group dimension (one group per part index).
        weight: ``[C, S, D]`` one filter per class and scale, or ``[G, C, S, D]``.

    Returns:
        ``[N, C, S]`` (``[G, N, C, S]`` when grouped), in the dtype of the inputs.

    float32/float64 on the CPU; also float16/bfloat16 on CUDA (accumulated in float32). Under
    autocast the op behaves like a linear layer: on CUDA the inputs are cast to the autocast
    dtype; on the CPU reduced-precision inputs run in float32.

    On CUDA the plane products run on cuBLAS (``torch.bmm``, the default) or, when the
    environment variable ``SSANET_OPS_SCALE_ALIGN_PRODUCTS`` is ``tiled`` (read at every call),
    on the package's own tiled kernel: tensor cores for float16/bfloat16, TF32 for float32
    when ``torch.backends.cuda.matmul.allow_tf32`` (fp32_precision ``"tf32"``) is on, FMA
    otherwise. Both accumulate in float32 (float64 for float64).
    """
    check_scale_align_inputs(phi, weight)
    return torch.ops.ssanet_ops.scale_correlation(phi, weight)


def scale_align(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circulant scale alignment (SPEC.md section 3; paper eqs. 6-8).

    ``logits = max over r of corr[..., r] (+ bias)`` and ``shift = argmax over r`` (the lowest r
    on ties), with ``corr`` as in :func:`scale_correlation`, fused so that corr is never
    written. Gradients flow through the winning shift only (eq. 8). The candidate aligned with
    the filter's original scale ``m0 = (S - 1) // 2`` is ``(m0 - shift) mod S``.

    Args:
        phi: ``[N, S, D]`` or ``[G, N, S, D]``.
        weight: ``[C, S, D]`` or ``[G, C, S, D]``.
        bias: optional ``[C]`` (``[G, C]`` when grouped), added to every shift's response.

    Returns:
        ``(logits, shift)``: ``[N, C]`` (``[G, N, C]``) in the inputs' dtype, and int64.

    Dtypes, autocast and the CUDA product kernel as for :func:`scale_correlation`.
    """
    check_scale_align_inputs(phi, weight, bias)
    return torch.ops.ssanet_ops.scale_align(phi, weight, bias)
