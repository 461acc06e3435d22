"""The public operators: argument checks and conversions, then torch.ops.ssanet_ops.*."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import check_floating, check_rank, pair

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
