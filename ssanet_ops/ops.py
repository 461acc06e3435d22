"""The public operators: argument checks and conversions, then torch.ops.ssanet_ops.*."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import testing
from ._validation import (
    CPU_DTYPES,
    CUDA_DTYPES,
    check_floating,
    check_rank,
    check_same_device,
    pair,
)

# Grid indices are stored as uint8 for the backward (csrc/oriented_pool/arguments.h).
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


# ---- Multi-scale candidates and cropping (SPEC.md section 2) ----

# The CUDA kernels take the factors by value (csrc/roi_crop/roi_crop.h).
MAX_SCALES = 64

BoxesArg = torch.Tensor | Sequence[torch.Tensor]


def scale_factors(alpha: float, S: int) -> list[float]:
    """The paper's S scale factors ``[alpha^-(S//2), ..., alpha^-1, 1, alpha, ..., alpha^(S//2)]``
    (section 3.2: S odd, the original in the middle, (S-1)/2 shrunk and (S-1)/2 expanded).

    >>> scale_factors(2.0, 5)
    [0.25, 0.5, 1.0, 2.0, 4.0]
    """
    if isinstance(S, bool) or not isinstance(S, int) or S < 1 or S % 2 == 0:
        raise ValueError(
            f"S must be a positive odd int (one original scale in the middle), got {S!r}"
        )
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    middle = S // 2
    return [alpha ** (j - middle) for j in range(S)]


def scale_list(scales: Sequence[float] | torch.Tensor) -> list[float]:
    """The scale factors as a list of floats; raises unless they are 1 to MAX_SCALES positive
    finite numbers. A tensor is read with .tolist() (a graph break under torch.compile)."""
    if isinstance(scales, torch.Tensor):
        if scales.dim() != 1:
            raise ValueError(f"scales must be a 1-d tensor [S], got shape {tuple(scales.shape)}")
        scales = scales.tolist()
    if not isinstance(scales, Sequence) or isinstance(scales, str):
        raise TypeError(f"scales must be a sequence of S positive numbers, got {scales!r}")
    values = [float(scale) for scale in scales]
    if not 1 <= len(values) <= MAX_SCALES:
        raise ValueError(f"scales must hold 1 to {MAX_SCALES} factors, got {len(values)}")
    if not all(math.isfinite(scale) and scale > 0 for scale in values):
        raise ValueError(f"scales must be positive finite factors, got {values}")
    return values


def boxes_as_rois(boxes: BoxesArg, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Boxes as roi_align takes them, a ``[K, 5]`` tensor or a list of ``[K_b, 4]`` tensors
    (one per image), to one ``[K, 5]`` tensor of rows (batch_index, x1, y1, x2, y2) in `dtype`
    (default: float64 stays, any other type becomes float32)."""
    if isinstance(boxes, torch.Tensor):
        check_rank(boxes, 2, "boxes", "[K, 5]")
        if boxes.shape[1] != 5:
            raise ValueError(
                "boxes must be a [K, 5] tensor of (batch_index, x1, y1, x2, y2) or a list of "
                f"[K_b, 4] tensors, got shape {tuple(boxes.shape)}"
            )
        rois = boxes
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) == 0:
            raise ValueError("boxes: an empty list names no images; pass a [0, 5] tensor instead")
        for index, image_boxes in enumerate(boxes):
            check_rank(image_boxes, 2, f"boxes[{index}]", "[K_b, 4]")
            if image_boxes.shape[1] != 4:
                raise ValueError(
                    f"boxes[{index}] must be a [K_b, 4] tensor of (x1, y1, x2, y2), got shape "
                    f"{tuple(image_boxes.shape)}"
                )
        check_same_device({f"boxes[{index}]": b for index, b in enumerate(boxes)})
        rois = torch.cat(
            [
                torch.cat([torch.full_like(image_boxes[:, :1], index), image_boxes], dim=1)
                for index, image_boxes in enumerate(boxes)
            ]
        )
    else:
        raise TypeError(
            "boxes must be a [K, 5] tensor or a list of [K_b, 4] tensors, got "
            f"{type(boxes).__name__}"
        )
    if dtype is None:
        dtype = torch.float64 if rois.dtype == torch.float64 else torch.float32
    return rois.to(dtype)


def _centers_tensor(
    centers: torch.Tensor | None, batch: int | None, dtype: torch.dtype
) -> torch.Tensor | None:
    if centers is None:
        return None
    check_rank(centers, 2, "centers", "[B, 2]")
    if centers.shape[1] != 2 or (batch is not None and centers.shape[0] != batch):
        expected = "B" if batch is None else str(batch)
        raise ValueError(
            f"centers must be a [{expected}, 2] tensor of (x, y), got shape {tuple(centers.shape)}"
        )
    return centers.to(dtype)


def scale_candidates(
    boxes: BoxesArg,
    scales: Sequence[float] | torch.Tensor,
    image_size: Sequence[float],
    centers: torch.Tensor | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """The S scale candidates of every box (SPEC.md section 2; paper section 3.2).

    For a box and its image's centre c, psi is the corner farthest from c and eta the nearest
    (corners in the order (x1, y1), (x2, y1), (x1, y2), (x2, y2); on a tie the first). The
    candidate for factor s has width s*w and height s*h and keeps psi fixed when s >= 1 (it
    grows towards c), eta when s < 1 (it shrinks towards the corner nearest c); s = 1 gives the
    box itself.

    Args:
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2), or a list of ``[K_b, 4]`` tensors,
            one per image, as ``torchvision.ops.roi_align`` takes them. Computed in float64 for
            float64 boxes, else in float32. CPU or CUDA.
        scales: S positive factors, e.g. ``scale_factors(alpha, S)``.
        image_size: (height, width) of the image, the bounds of ``clip``.
        centers: ``[B, 2]`` (x, y) per image, the point candidates grow towards. Default: for
            each image, the mean of the centres of its boxes.
        clip: clip every candidate to ``[0, width] x [0, height]``.

    Returns:
        ``[K, S, 4]`` candidate boxes (x1, y1, x2, y2). Not differentiable (boxes get no
        gradient, as in roi_align).
    """
    rois = boxes_as_rois(boxes).detach()
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in image_size)
    ):
        raise TypeError(f"image_size must be a (height, width) pair of numbers, got {image_size!r}")
    image_height, image_width = float(image_size[0]), float(image_size[1])
    if (
        not (math.isfinite(image_height) and math.isfinite(image_width))
        or min(image_height, image_width) <= 0
    ):
        raise ValueError(f"image_size must be positive and finite, got {tuple(image_size)}")
    centers = _centers_tensor(centers, None, rois.dtype)
    if centers is not None:
        check_same_device({"boxes": rois, "centers": centers})
        centers = centers.detach()
    return torch.ops.ssanet_ops.scale_candidates(
        rois, scale_list(scales), centers, image_height, image_width, bool(clip)
    )


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
    """Crops the S scale candidates of every box from ``input`` (SPEC.md section 2), all
    K*S candidates in one kernel, forward and backward.

    Each candidate (see :func:`scale_candidates`; ``clip`` bounds are the image,
    ``(H / spatial_scale, W / spatial_scale)``) is sampled exactly as
    ``torchvision.ops.roi_align(input, candidates, output_size, spatial_scale,
    sampling_ratio, aligned)`` samples it, so the result equals that composition
    (``ssanet_ops.reference.multiscale_roi_crop``) to float rounding.

    Args:
        input: ``[B, C, H, W]`` images or feature maps (float32/float64; on CUDA also
            float16/bfloat16, which accumulate in float32).
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2) in image coordinates, or a list of
            B ``[K_b, 4]`` tensors, as ``roi_align`` takes them; on ``input``'s device. Any real
            dtype: they are computed in float64 for float64 input, else in float32.
        output_size: (oh, ow) of every crop, or one int for both.
        scales: S positive factors, e.g. ``scale_factors(alpha, S)``.
        centers: ``[B, 2]`` (x, y) per image; default: each image's mean box centre.
        spatial_scale: map coordinates per image coordinate (1/32 for a stride-32 feature map).
        sampling_ratio: samples per output cell and axis; <= 0 takes
            ``ceil(candidate size / output size)``, as roi_align does.
        aligned: shift the boxes by -0.5 pixel (roi_align's ``aligned=True``).
        clip: clip the candidates to the image.

    Returns:
        ``[K, S, C, oh, ow]``, differentiable with respect to ``input`` (not to boxes, scales
        or centres). The backward is deterministic on the CPU; on CUDA it uses atomics unless
        ``torch.are_deterministic_algorithms_enabled()``, which selects a gather kernel with a
        fixed summation order.
    """
    check_rank(input, 4, "input", "[B, C, H, W]")
    check_floating(input, "input")
    if isinstance(boxes, (list, tuple)) and len(boxes) != input.shape[0]:
        raise ValueError(
            f"boxes: a list needs one [K_b, 4] tensor per image of input, got {len(boxes)} "
            f"tensors for a batch of {input.shape[0]}"
        )
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    tensors = {"input": input}
    if isinstance(boxes, torch.Tensor):
        tensors["boxes"] = boxes
    else:
        tensors.update({f"boxes[{index}]": b for index, b in enumerate(boxes)})
    if centers is not None:
        tensors["centers"] = centers
    check_same_device(tensors)
    rois = boxes_as_rois(boxes, compute_dtype).detach()
    centers = _centers_tensor(centers, input.shape[0], compute_dtype)
    if centers is not None:
        centers = centers.detach()
    out_h, out_w = pair(output_size, "output_size")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output_size must be positive, got {(out_h, out_w)}")
    spatial_scale = float(spatial_scale)
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be positive and finite, got {spatial_scale}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
    return torch.ops.ssanet_ops.multiscale_roi_crop(
        input,
        rois,
        scale_list(scales),
        centers,
        [out_h, out_w],
        spatial_scale,
        sampling_ratio,
        bool(aligned),
        bool(clip),
    )


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
    # Inside ssanet_ops.testing.simulate_cuda() CPU tensors run the CUDA kernels.
    runs_cuda_kernels = phi.device.type == "cuda" or testing.simulating()
    allowed = CUDA_DTYPES if runs_cuda_kernels else CPU_DTYPES
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

    float32/float64 on the CPU; also float16/bfloat16 on CUDA (planes and products in
    float32). Under autocast the op behaves like a linear layer: on CUDA the inputs are cast to
    the autocast dtype; on the CPU reduced-precision inputs run in float32. On CUDA the plane
    products run on cuBLAS (``torch.bmm``): TF32 for float32 when
    ``torch.backends.cuda.matmul.allow_tf32`` is on. S is at most 2048.
    """
    check_scale_align_inputs(phi, weight)
    return torch.ops.ssanet_ops.scale_correlation(phi, weight)


def scale_align(
    phi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circulant scale alignment (SPEC.md section 3; paper eqs. 6-8).

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

    Dtypes, autocast and the CUDA products as for :func:`scale_correlation`.
    """
    check_scale_align_inputs(phi, weight, bias)
    return torch.ops.ssanet_ops.scale_align(phi, weight, bias)
