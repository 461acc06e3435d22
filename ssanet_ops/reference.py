"""Plain PyTorch versions of every ssanet_ops operator, written for clarity and differentiable
by autograd. The tests check the compiled kernels against these, and the benchmarks time them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .ops import oriented_pool_geometry

__all__ = ["oriented_pool"]


def oriented_pool(
    x: torch.Tensor,
    patch_size: int | Sequence[int] = 3,
    grid_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.oriented_pool` (SPEC.md section 1): ``[B, 4, G*L]``.

    All G*G patches are gathered at once with one advanced index, then reduced with
    ``max(dim).values``, whose gradient goes to the first maximal element, the SPEC's tie rule
    (``amax`` would split it between tied elements).
    """
    (patch_h, patch_w), grid, (stride_h, stride_w) = oriented_pool_geometry(
        x.shape, patch_size, grid_size, stride
    )
    batch = x.shape[0]
    device = x.device
    # rows[i, dy] = i*sh + dy and columns[j, dx] = j*sw + dx.
    grid_index = torch.arange(grid, device=device)[:, None]
    rows = grid_index * stride_h + torch.arange(patch_h, device=device)
    columns = grid_index * stride_w + torch.arange(patch_w, device=device)
    # patches[b, c, i, j, dy, dx] = x[b, c, i*sh + dy, j*sw + dx]
    patches = x[:, :, rows[:, None, :, None], columns[None, :, None, :]]
    # [B, G(i), G(j), L] with L flattened in (C, h, w) order.
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, grid, grid, -1)
    row_max = patches.max(dim=2).values  # p_i: [B, G, L]
    column_max = patches.max(dim=1).values  # q_j: [B, G, L]
    orientations = [row_max, column_max, row_max.flip(1), column_max.flip(1)]
    return torch.stack([o.reshape(batch, -1) for o in orientations], dim=1)
