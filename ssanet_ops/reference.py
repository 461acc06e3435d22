"""Plain PyTorch versions of every ssanet_ops operator, written for clarity and differentiable
by autograd. The tests check the compiled kernels against these, and the benchmarks time them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._torchvision import import_torchvision
from ._validation import BoxesArg, boxes_as_rois, oriented_pool_geometry, pair, scale_list

__all__ = [
    "multiscale_roi_crop",
    "oriented_pool",
    "scale_align",
    "scale_align_fft",
    "scale_candidates",
    "scale_correlation",
    "scale_correlation_fft",
]


def oriented_pool(
    x: torch.Tensor,
    patch_size: int | Sequence[int] = 3,
    grid_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.oriented_pool` (docs/operators.md section 1):
    ``[B, 4, G*L]``.

    All G*G patches are gathered at once with one advanced index, then reduced with
    ``max(dim).values``, whose gradient goes to the first maximal element, the contract's tie rule
    (``amax`` would split it between tied elements).

    Example: 1x1 patches on a 3x3 grid of a 3x3 map: the rows' maxima, the columns', and both
    reversed.

    >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
    >>> ssanet_ops.reference.oriented_pool(x, patch_size=1, grid_size=3)
    tensor([[[2., 5., 8.],
             [6., 7., 8.],
             [8., 5., 2.],
             [8., 7., 6.]]])
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


def _twice_mean_centers(rois: torch.Tensor, batch: int) -> torch.Tensor:
    """[B, 2] float64: 2c of every image for docs/operators.md section 2's default centre, the
    mean over its boxes of (x1 + x2, y1 + y2) in float64; (0, 0) without boxes. Summed on the
    CPU, where index_add_ adds in box order, as the kernels do, so the means agree to the bit."""
    rois = rois.detach().cpu().double()
    index = rois[:, 0].long()
    sums = torch.stack([rois[:, 1] + rois[:, 3], rois[:, 2] + rois[:, 4]], 1)
    totals = sums.new_zeros(batch, 2).index_add_(0, index, sums)
    counts = torch.bincount(index, minlength=batch).clamp(min=1)
    return totals / counts[:, None]


def scale_candidates(
    boxes: BoxesArg,
    scales: Sequence[float] | torch.Tensor,
    image_size: Sequence[float],
    centers: torch.Tensor | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.scale_candidates` (docs/operators.md section 2):
    ``[K, S, 4]``.

    The anchor corners by docs/operators.md section 2's rule, per axis in float64: psi's x is x1
    when ``x1 + x2 <= 2*cx``, eta's x is x1 when ``x1 + x2 >= 2*cx`` (likewise for y); then every
    candidate at once by broadcasting boxes [K, 1] against factors [S].

    >>> boxes = torch.tensor([[0, 40.0, 60.0, 200.0, 220.0], [0, 250.0, 100.0, 400.0, 300.0]])
    >>> scales = ssanet_ops.scale_factors(1.25, 5)
    >>> expected = ssanet_ops.reference.scale_candidates(boxes, scales, (448, 448))
    >>> torch.testing.assert_close(ssanet_ops.scale_candidates(boxes, scales, (448, 448)), expected)
    """
    rois = boxes_as_rois(boxes)
    index = rois[:, 0].long()
    if centers is None:
        if isinstance(boxes, (list, tuple)):
            batch = len(boxes)
        else:
            batch = int(index.max()) + 1 if rois.shape[0] > 0 else 0
        twice_centers = _twice_mean_centers(rois, batch).to(rois.device)
    else:
        twice_centers = 2 * centers.to(rois.dtype).double()
    twice_center = twice_centers[index]  # [K, 2]
    x1, y1, x2, y2 = (rois[:, i, None] for i in range(1, 5))  # each [K, 1]
    sum_x = x1.double() + x2.double()
    sum_y = y1.double() + y2.double()
    # Whether psi (the farthest corner) and eta (the nearest) sit at x2 (y2), [K, 1] each.
    psi_at_x2, eta_at_x2 = sum_x > twice_center[:, :1], sum_x < twice_center[:, :1]
    psi_at_y2, eta_at_y2 = sum_y > twice_center[:, 1:], sum_y < twice_center[:, 1:]
    factor = torch.tensor(scale_list(scales), dtype=rois.dtype, device=rois.device)  # [S]
    # Growing keeps psi fixed, shrinking keeps eta fixed: [K, S].
    at_x2 = torch.where(factor >= 1, psi_at_x2, eta_at_x2)
    at_y2 = torch.where(factor >= 1, psi_at_y2, eta_at_y2)
    width = factor * (x2 - x1)
    height = factor * (y2 - y1)
    candidates = torch.stack(
        [
            torch.where(at_x2, x2 - width, x1),
            torch.where(at_y2, y2 - height, y1),
            torch.where(at_x2, x2, x1 + width),
            torch.where(at_y2, y2, y1 + height),
        ],
        dim=-1,
    )
    # Factor 1 is the box itself, to the bit.
    candidates = torch.where((factor == 1)[None, :, None], rois[:, None, 1:], candidates)
    if clip:
        image_height, image_width = (float(v) for v in image_size)
        candidates = torch.stack(
            [
                candidates[..., 0].clamp(0, image_width),
                candidates[..., 1].clamp(0, image_height),
                candidates[..., 2].clamp(0, image_width),
                candidates[..., 3].clamp(0, image_height),
            ],
            dim=-1,
        )
    return candidates


def _roi_align():
    """``torchvision.ops.roi_align``, imported on first use: torchvision is an optional
    dependency (the ``vision`` extra), since each of its releases requires one exact torch and
    the operators run on any torch >= 2.11 (issue 11). Where it cannot be imported, the error
    says why in one line (missing, or not the build made for this torch)."""
    try:
        from torchvision.ops import roi_align
    except Exception:
        import_torchvision("ssanet_ops.reference.multiscale_roi_crop (its roi_align)", "vision")
        raise
    return roi_align


def multiscale_roi_crop(
    input: torch.Tensor,
    boxes: BoxesArg,
    output_size: int | Sequence[int],
    scales: Sequence[float] | torch.Tensor,
    centers: torch.Tensor | None = None,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    clip: bool = True,
) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.multiscale_roi_crop` (docs/operators.md section 2):
    ``torchvision.ops.roi_align`` on the flattened :func:`scale_candidates`, reshaped to
    ``[K, S, C, oh, ow]``. The candidates are computed in float64 for float64 input, else in
    float32, then handed to roi_align in input's dtype. Needs torchvision (the ``vision``
    extra).

    >>> import torchvision  # the reference is torchvision.ops.roi_align on the candidates
    >>> features = torch.randn(2, 64, 14, 14)
    >>> boxes = torch.tensor([[0, 40.0, 60.0, 200.0, 220.0], [1, 10.0, 10.0, 150.0, 300.0]])
    >>> options = {"scales": [0.8, 1.0, 1.25], "spatial_scale": 1 / 32, "sampling_ratio": 2}
    >>> expected = ssanet_ops.reference.multiscale_roi_crop(features, boxes, 7, **options)
    >>> expected.shape
    torch.Size([2, 3, 64, 7, 7])
    >>> crops = ssanet_ops.multiscale_roi_crop(features, boxes, 7, **options)
    >>> torch.testing.assert_close(crops, expected)
    """
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    rois = boxes_as_rois(boxes, compute_dtype)
    _, channels, height, width = input.shape
    image_size = (height / spatial_scale, width / spatial_scale)
    candidates = scale_candidates(rois, scales, image_size, centers, clip)
    count, S = candidates.shape[:2]
    flat = torch.cat([rois[:, :1].repeat_interleave(S, dim=0), candidates.reshape(-1, 4)], dim=1)
    out = _roi_align()(
        input,
        flat.to(input.dtype),
        pair(output_size, "output_size"),
        spatial_scale,
        sampling_ratio,
        aligned,
    )
    return out.reshape(count, S, channels, *out.shape[-2:])


def scale_correlation(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`ssanet_ops.scale_correlation` (docs/operators.md section 3, eq. 7),
    in the direct form: ``corr[.., n, c, r] = <torch.roll(phi[.., n], r, dims=0), weight[.., c]>``,
    since the rolled phi holds ``phi[(j - r) mod S]`` at scale j. ``[G?, N, C, S]``.

    Example: a proposal seen at its first scale only: shift r reads the filter's scale r.

    >>> phi = torch.tensor([[[1.0], [0.0], [0.0]]])  # N = 1 proposal, S = 3 scales, D = 1
    >>> weight = torch.tensor([[[1.0], [2.0], [3.0]]])  # C = 1 class
    >>> ssanet_ops.reference.scale_correlation(phi, weight)
    tensor([[[1., 2., 3.]]])
    """
    scales = phi.shape[-2]
    return torch.stack(
        [
            torch.einsum("...nsd,...csd->...nc", torch.roll(phi, shifts=r, dims=-2), weight)
            for r in range(scales)
        ],
        dim=-1,
    )


def scale_correlation_fft(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`scale_correlation` in the Fourier form of docs/operators.md section 3:
    ``irfft(sum over d of conj(rfft(phi)) * rfft(weight), n=S)`` with the FFTs over the scale
    axis. ``[G?, N, C, S]``. torch.fft has no bfloat16 and takes float16 only at power-of-two
    sizes, so reduced-precision inputs run in float32 and the result is cast back.

    >>> phi, weight = torch.randn(8, 5, 64), torch.randn(10, 5, 64)
    >>> fourier = ssanet_ops.reference.scale_correlation_fft(phi, weight)
    >>> direct = ssanet_ops.reference.scale_correlation(phi, weight)
    >>> torch.testing.assert_close(fourier, direct, atol=1e-4, rtol=1e-4)  # float32 sums of 320
    """
    if phi.dtype in (torch.float16, torch.bfloat16):
        return scale_correlation_fft(phi.float(), weight.float()).to(phi.dtype)
    scales = phi.shape[-2]
    phi_spectrum = torch.fft.rfft(phi, dim=-2)  # [G?, N, S//2 + 1, D]
    weight_spectrum = torch.fft.rfft(weight, dim=-2)  # [G?, C, S//2 + 1, D]
    spectrum = torch.einsum("...nfd,...cfd->...ncf", phi_spectrum.conj(), weight_spectrum)
    return torch.fft.irfft(spectrum, n=scales, dim=-1)


def _align(
    corr: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # docs/operators.md section 3: the shift is the lowest r with corr[r] >= max - tol, where
    # tol = 8 * S * eps * ||phi[n]|| * ||weight[c]|| absorbs the rounding that the Fourier form
    # leaves on exact ties; when nothing compares so (a NaN maximum or tolerance), the first
    # maximum (max(dim) propagates NaN). The bias is added after: it takes no part in the argmax.
    # The logits are the maximum, and their gradient that of corr at the shift (eq. 8): the two
    # differ by less than tol, a constant to autograd.
    scales = phi.shape[-2]
    # float16/bfloat16 accumulate in float32 (docs/operators.md section 3).
    dtype = torch.float32 if corr.dtype in (torch.float16, torch.bfloat16) else corr.dtype
    eps = torch.finfo(dtype).eps
    with torch.no_grad():
        phi_norm = torch.linalg.vector_norm(phi, dim=(-2, -1), dtype=dtype)
        weight_norm = torch.linalg.vector_norm(weight, dim=(-2, -1), dtype=dtype)
        tolerance = 8 * scales * eps * phi_norm.unsqueeze(-1) * weight_norm.unsqueeze(-2)
        best, first = corr.max(dim=-1)
        tied = corr >= (best - tolerance).unsqueeze(-1)
        # argmax of a 0/1 tensor is its first 1.
        shift = torch.where(tied.any(dim=-1), tied.byte().argmax(dim=-1), first)
    at_shift = corr.gather(-1, shift.unsqueeze(-1)).squeeze(-1)
    # torch.where, not best - at_shift alone: an infinite maximum at the shift stays infinite.
    logits = at_shift + torch.where(at_shift == best, 0, best - at_shift).detach()
    if bias is not None:
        logits = logits + bias.unsqueeze(-2)
    return logits, shift


def scale_align(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for :func:`ssanet_ops.scale_align` (docs/operators.md section 3), on the direct
    form :func:`scale_correlation`: ``(logits [G?, N, C], shift [G?, N, C])``.

    >>> phi = torch.tensor([[[1.0], [0.0], [0.0]]])  # as in scale_correlation's example
    >>> weight = torch.tensor([[[1.0], [2.0], [3.0]]])
    >>> ssanet_ops.reference.scale_align(phi, weight, bias=torch.tensor([0.5]))
    (tensor([[3.5000]]), tensor([[2]]))
    """
    return _align(scale_correlation(phi, weight), phi, weight, bias)


def scale_align_fft(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scale_align` on the Fourier form :func:`scale_correlation_fft`.

    >>> phi = torch.tensor([[[1.0], [0.0], [0.0]]])  # as in scale_correlation's example
    >>> weight = torch.tensor([[[1.0], [2.0], [3.0]]])
    >>> logits, shift = ssanet_ops.reference.scale_align_fft(phi, weight)
    >>> shift
    tensor([[2]])
    """
    return _align(scale_correlation_fft(phi, weight), phi, weight, bias)
