"""Plain PyTorch versions of every ssanet_ops operator, written for clarity and differentiable
by autograd. The tests check the compiled kernels against these, and the benchmarks time them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .ops import oriented_pool_geometry

__all__ = [
    "oriented_pool",
    "scale_align",
    "scale_align_fft",
    "scale_correlation",
    "scale_correlation_fft",
]


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
    rows = torch.arange(grid, device=device)[:, None] * stride_h + torch.arange(patch_h, device=device)
    columns = torch.arange(grid, device=device)[:, None] * stride_w + torch.arange(patch_w, device=device)
    # patches[b, c, i, j, dy, dx] = x[b, c, i*sh + dy, j*sw + dx]
    patches = x[:, :, rows[:, None, :, None], columns[None, :, None, :]]
    # [B, G(i), G(j), L] with L flattened in (C, h, w) order.
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, grid, grid, -1)
    row_max = patches.max(dim=2).values  # p_i: [B, G, L]
    column_max = patches.max(dim=1).values  # q_j: [B, G, L]
    orientations = [row_max, column_max, row_max.flip(1), column_max.flip(1)]
    return torch.stack([o.reshape(batch, -1) for o in orientations], dim=1)


def scale_correlation(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.scale_correlation` (SPEC.md section 3, eq. 7), in the
    direct form: ``corr[.., n, c, r] = <torch.roll(phi[.., n], r, dims=0), weight[.., c]>``,
    since the rolled phi holds ``phi[(j - r) mod S]`` at scale j. ``[G?, N, C, S]``."""
    scales = phi.shape[-2]
    return torch.stack(
        [
            torch.einsum("...nsd,...csd->...nc", torch.roll(phi, shifts=r, dims=-2), weight)
            for r in range(scales)
        ],
        dim=-1,
    )


def scale_correlation_fft(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`scale_correlation` in the Fourier form of SPEC.md section 3:
    ``irfft(sum over d of conj(rfft(phi)) * rfft(weight), n=S)`` with the FFTs over the scale
    axis. ``[G?, N, C, S]``. torch.fft has no bfloat16 and takes float16 only at power-of-two
    sizes, so reduced-precision inputs run in float32 and the result is cast back."""
    if phi.dtype in (torch.float16, torch.bfloat16):
        return scale_correlation_fft(phi.float(), weight.float()).to(phi.dtype)
    scales = phi.shape[-2]
    phi_spectrum = torch.fft.rfft(phi, dim=-2)  # [G?, N, S//2 + 1, D]
    weight_spectrum = torch.fft.rfft(weight, dim=-2)  # [G?, C, S//2 + 1, D]
    spectrum = torch.einsum("...nfd,...cfd->...ncf", phi_spectrum.conj(), weight_spectrum)
    return torch.fft.irfft(spectrum, n=scales, dim=-1)


def _align(corr: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    # max(dim) returns the first maximal index and sends the gradient to it alone: the SPEC's
    # lowest shift on ties and the one-hot gradient of eq. 8.
    logits, shift = corr.max(dim=-1)
    if bias is not None:
        logits = logits + bias.unsqueeze(-2)
    return logits, shift


def scale_align(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`ssanet_ops.scale_align` (SPEC.md section 3), on the direct form
    :func:`scale_correlation`: ``(logits [G?, N, C], shift [G?, N, C])``."""
    return _align(scale_correlation(phi, weight), bias)


def scale_align_fft(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scale_align` on the Fourier form :func:`scale_correlation_fft`."""
    return _align(scale_correlation_fft(phi, weight), bias)
