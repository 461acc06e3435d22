"""The public operators: each checks and converts its arguments (``_validation.py``), then
calls ``torch.ops.ssanet_ops.*``.

Each is a leaf of torch.fx.symbolic_trace (``torch.fx.wrap`` below and in ``__init__.py``, as
torchvision wraps ``roi_align``): a traced model records one call of the function, and the
checks run when the graph runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx

from . import _tensor_scales
from ._scale_align_arguments import check_cublas_determinism, check_scale_align_inputs
from ._validation import (
    BoxesArg,
    call_checking_box_values,
    multiscale_roi_crop_arguments,
    oriented_pool_arguments,
    power_factors,
    scale_candidates_arguments,
)

__all__ = [
    "multiscale_roi_crop",
    "oriented_pool",
    "scale_align",
    "scale_candidates",
    "scale_correlation",
    "scale_factors",
]


def oriented_pool(
    x: torch.Tensor,
    patch_size: int | Sequence[int] = 3,
    grid_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Oriented pooling (docs/operators.md section 1; paper section 3.3, eqs. 9-12).

    Cuts ``x`` into a G x G grid of h x w patches (patch (i, j) starts at (i*sh, j*sw)), takes
    the elementwise maximum of every grid row (p_i) and column (q_j) of flattened patches, and
    concatenates them in four orientations.

    Args:
        x: ``[B, C, H, W]`` feature maps (float32, float64, float16 or bfloat16).
        patch_size: (h, w) of a patch, or one int for both.
        grid_size: G, patches per row and per column (an int, or a square pair).
        stride: (sh, sw) between patches; default ``((H-h)/(G-1), (W-w)/(G-1))``, which must
            then be whole (0 when G = 1).

    Returns:
        ``[B, 4, G*L]`` with ``L = C*h*w``: orientation 0 is ``[p_0, ..., p_{G-1}]``, 1 is
        ``[q_0, ..., q_{G-1}]``, 2 and 3 the same in reverse order of patches.

    Example: the paper's 7x7 part maps, 3x3 patches on a 3x3 grid (stride 2).

    >>> parts = torch.randn(8, 512, 7, 7, requires_grad=True)
    >>> pooled = ssanet_ops.oriented_pool(parts)
    >>> pooled.shape
    torch.Size([8, 4, 13824])
    >>> pooled.sum().backward()
    >>> torch.testing.assert_close(pooled, ssanet_ops.reference.oriented_pool(parts))
    """
    patch, grid, resolved_stride = oriented_pool_arguments(x, patch_size, grid_size, stride)
    out, _ = torch.ops.ssanet_ops.oriented_pool(x, patch, grid, resolved_stride)
    return out


# ---- Multi-scale candidates and cropping (docs/operators.md section 2) ----


def scale_factors(alpha: float, S: int) -> list[float]:
    """The paper's S scale factors ``[alpha^-(S//2), ..., alpha^-1, 1, alpha, ..., alpha^(S//2)]``
    (section 3.2: S odd, the original in the middle, (S-1)/2 shrunk and (S-1)/2 expanded).

    >>> ssanet_ops.scale_factors(2.0, 5)
    [0.25, 0.5, 1.0, 2.0, 4.0]
    """
    return power_factors(alpha, S)


def scale_candidates(
    boxes: BoxesArg,
    scales: Sequence[float] | torch.Tensor,
    image_size: Sequence[float],
    centers: torch.Tensor | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """The S scale candidates of every box (docs/operators.md section 2; paper section 3.2).

    For a box and its image's centre c, psi is the corner farthest from c and eta the nearest
    (corners in the order (x1, y1), (x2, y1), (x1, y2), (x2, y2); on a tie the first). The
    candidate for factor s has width s*w and height s*h and keeps psi fixed when s >= 1 (it
    grows towards c), eta when s < 1 (it shrinks towards the corner nearest c); s = 1 gives the
    box itself.

    Args:
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2), or a list of ``[K_b, 4]`` tensors,
            one per image, as ``torchvision.ops.roi_align`` takes them. Computed in float64 for
            float64 boxes, else in float32. CPU or CUDA.
        scales: S positive factors (a sequence, numpy array or CPU tensor), e.g.
            ``scale_factors(alpha, S)``. A tensor is read when the op runs, so torch.compile
            keeps it in the graph; a GPU tensor is refused (reading it would wait for the
            device).
        image_size: (height, width) of the image, the bounds of ``clip``.
        centers: ``[B, 2]`` (x, y) per image, the point candidates grow towards, finite.
            Default: for each image, the mean of the centres of its boxes.
        clip: clip every candidate to ``[0, width] x [0, height]``.

    Returns:
        ``[K, S, 4]`` candidate boxes (x1, y1, x2, y2). Not differentiable (boxes get no
        gradient, as in roi_align).

    Bad boxes and centres raise a ValueError on the CPU; on CUDA their candidates are zeros, as
    for :func:`multiscale_roi_crop`.

    Example: one box alone in its image (its centre is the image's centre of boxes, so the
    first corner is the one kept fixed), twice its size and half of it.

    >>> boxes = torch.tensor([[0, 100.0, 100.0, 200.0, 150.0]])
    >>> ssanet_ops.scale_candidates(boxes, [0.5, 1.0, 2.0], image_size=(448, 448))
    tensor([[[100., 100., 150., 125.],
             [100., 100., 200., 150.],
             [100., 100., 300., 200.]]])
    """
    arguments = scale_candidates_arguments(boxes, scales, image_size, centers, clip)
    if isinstance(arguments[1], torch.Tensor):
        return call_checking_box_values(_tensor_scales.scale_candidates_tensor_scales, *arguments)
    return call_checking_box_values(torch.ops.ssanet_ops.scale_candidates, *arguments)


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
    """Crops the S scale candidates of every box from ``input`` (docs/operators.md section 2), all
    K*S candidates in one kernel, forward and backward.

    Each candidate (see :func:`scale_candidates`; ``clip`` bounds are the image,
    ``(H / spatial_scale, W / spatial_scale)``) is sampled exactly as
    ``torchvision.ops.roi_align(input, candidates, output_size, spatial_scale,
    sampling_ratio, aligned)`` samples it, so the result equals that composition
    (``ssanet_ops.reference.multiscale_roi_crop``) to float rounding.

    Args:
        input: ``[B, C, H, W]`` images or feature maps (float32, float64, float16 or
            bfloat16; the reduced types accumulate in float32).
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in image coordinates, or a list of
            B ``[K_b, 4]`` tensors, as ``roi_align`` takes them; on ``input``'s device. Any real
            dtype: they are computed in float64 for float64 input, else in float32.
        output_size: (oh, ow) of every crop, or one int for both.
        scales: S positive factors (a sequence, numpy array or CPU tensor), e.g.
            ``scale_factors(alpha, S)``. A tensor is read when the op runs, so torch.compile
            keeps it in the graph; a GPU tensor is refused (reading it would wait for the
            device).
        centers: ``[B, 2]`` (x, y) per image; default: each image's mean box centre.
        spatial_scale: map coordinates per image coordinate (1/32 for a stride-32 feature map).
        sampling_ratio: samples per output cell and axis, at most ``MAX_SAMPLING_RATIO``
            (512); <= 0 takes ``ceil(candidate size / output size)``, as roi_align does,
            capped at ``MAX_SAMPLING_RATIO``.
        aligned: shift the boxes by -0.5 pixel (roi_align's ``aligned=True``).
        clip: clip the candidates to the image.

    Returns:
        ``[K, S, C, oh, ow]``, differentiable with respect to ``input`` (not to boxes, scales
        or centres). The backward is deterministic on the CPU; on CUDA it uses atomics unless
        ``torch.are_deterministic_algorithms_enabled()``, which selects a gather kernel with a
        fixed summation order.

    Bad boxes (a non-finite coordinate, a batch index out of ``[0, B)``) and non-finite
    centres raise a ValueError on the CPU; on CUDA, which never waits for the device, the
    candidates of such a box (of every box of an image whose centre is not finite) are zeros
    and get no gradient. :func:`ssanet_ops.check_boxes` checks on demand.

    Example: five scale candidates of each of two boxes, cropped at 224x224 from the images.

    >>> images = torch.randn(2, 3, 448, 448, requires_grad=True)
    >>> boxes = torch.tensor([[0, 40.0, 60.0, 200.0, 220.0], [1, 10.0, 10.0, 150.0, 300.0]])
    >>> scales = ssanet_ops.scale_factors(1.25, 5)  # [0.64, 0.8, 1.0, 1.25, 1.5625]
    >>> crops = ssanet_ops.multiscale_roi_crop(images, boxes, 224, scales)
    >>> crops.shape
    torch.Size([2, 5, 3, 224, 224])
    >>> crops.sum().backward()
    """
    arguments = multiscale_roi_crop_arguments(
        input, boxes, output_size, scales, centers, spatial_scale, sampling_ratio, aligned, clip
    )
    if isinstance(arguments[2], torch.Tensor):
        return call_checking_box_values(
            _tensor_scales.multiscale_roi_crop_tensor_scales, *arguments
        )
    return call_checking_box_values(torch.ops.ssanet_ops.multiscale_roi_crop, *arguments)


def scale_correlation(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Circulant scale correlation (docs/operators.md section 3; paper eq. 7).

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

    float32, float64, float16 or bfloat16 (the reduced types accumulate in float32 and keep
    their planes and products in float32). Under autocast the op behaves like a linear layer:
    the inputs are cast to the autocast dtype of their device type. On CUDA the forward's plane
    products run in the op's own kernel for S up to 9, in float32 (float64 for float64 inputs);
    beyond, and this op's backward, on cuBLAS (``torch.bmm``): TF32 for float32 when
    ``torch.backends.cuda.matmul.allow_tf32`` is on; under
    ``torch.use_deterministic_algorithms(True)`` such calls need
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) in the environment and raise naming it
    otherwise (docs/operators.md section 4). S is at most 2048.

    Example: 96 proposals' 5 scale candidates against 200 classes' filters.

    >>> phi, weight = torch.randn(96, 5, 512), torch.randn(200, 5, 512)
    >>> corr = ssanet_ops.scale_correlation(phi, weight)
    >>> corr.shape
    torch.Size([96, 200, 5])
    >>> direct = ssanet_ops.reference.scale_correlation(phi, weight)  # the direct form
    >>> torch.testing.assert_close(corr, direct, atol=1e-4, rtol=1e-4)  # sums of 2560 products
    """
    check_scale_align_inputs(phi, weight)
    check_cublas_determinism(phi, weight, "scale_correlation")
    return torch.ops.ssanet_ops.scale_correlation(phi, weight)


def scale_align(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circulant scale alignment (docs/operators.md section 3; paper eqs. 6-8).

    ``shift = argmax over r of corr[..., r]`` and ``logits = corr[..., shift] (+ bias)``, with
    ``corr`` as in :func:`scale_correlation`, fused so that corr is never written. Ties: every
    r with ``corr[r] >= max - tol``, ``tol = 8 * S * eps * ||phi[n]|| * ||weight[c]||``, counts
    as tied and the lowest wins, so ``phi[n]`` equal at every scale gives shift 0 (the bias
    takes no part). Gradients flow through the winning shift only (eq. 8). The candidate
    aligned with the filter's original scale ``m0 = (S - 1) // 2`` is ``(m0 - shift) mod S``.

    Args:
        phi: ``[N, S, D]`` or ``[G, N, S, D]``.
        weight: ``[C, S, D]`` or ``[G, C, S, D]``.
        bias: optional ``[C]`` (``[G, C]`` when grouped), added to every shift's response.

    Returns:
        ``(logits, shift)``: ``[N, C]`` (``[G, N, C]``) in the inputs' dtype, and int64.

    Dtypes, autocast and the CUDA forward's products as for :func:`scale_correlation`; the
    backward runs in the op's own kernel for S up to 8 (no cuBLAS), on cuBLAS beyond.

    Example: the K = 4 parts of a batch in one call, each with its own filter bank.

    >>> phi = torch.randn(4, 96, 5, 512, requires_grad=True)
    >>> weight, bias = torch.randn(4, 200, 5, 512), torch.zeros(4, 200)
    >>> logits, shift = ssanet_ops.scale_align(phi, weight, bias)
    >>> logits.shape, shift.dtype
    (torch.Size([4, 96, 200]), torch.int64)
    >>> logits.logsumexp(dim=-1).sum().backward()  # through the winning shifts only
    >>> aligned = (2 - shift) % 5  # the candidate aligned with the filters' original scale
    """
    check_scale_align_inputs(phi, weight, bias)
    check_cublas_determinism(phi, weight, "scale_align")
    return torch.ops.ssanet_ops.scale_align(phi, weight, bias)


# Leaves of torch.fx.symbolic_trace, when called through this module (ssanet_ops.nn does).
torch.fx.wrap("oriented_pool")
torch.fx.wrap("scale_candidates")
torch.fx.wrap("multiscale_roi_crop")
torch.fx.wrap("scale_correlation")
torch.fx.wrap("scale_align")
