"""Every argument check and conversion of the public operators, in one place (docs/operators.md
section 4: errors name the argument and what was expected).

``ops.py`` calls these before ``torch.ops.ssanet_ops.*``; ``_fake.py`` and ``reference.py``
reuse the geometry and box conversions so the three agree by construction.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence

import torch

# On both devices; float16 and bfloat16 accumulate in float32 (docs/operators.md section 4).
FLOATING_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Grid indices are stored as uint8 for the backward (csrc/oriented_pool/arguments.h).
MAX_GRID_SIZE = 256

# The CUDA kernels take the factors by value (csrc/roi_crop/roi_crop.h).
MAX_SCALES = 64

# The most samples per bin and axis (csrc/common/bilinear.h, kMaxSamplingRatio): an explicit
# sampling_ratio above it is refused, and roi_align's adaptive grid, ceil(box size / output
# size), is capped at it, so that a box costs at most MAX_SAMPLING_RATIO**2 samples per output
# cell. The crop equals roi_align below the cap; a box reaches it only when it spans more than
# MAX_SAMPLING_RATIO map pixels per output cell on an axis.
MAX_SAMPLING_RATIO = 512

# The largest S of scale_correlation and scale_align (csrc/scale_align/arguments.h, kMaxScales).
MAX_ALIGN_SCALES = 2048

BoxesArg = torch.Tensor | Sequence[torch.Tensor]


class InvalidArgumentError(ValueError, RuntimeError):
    """An argument value out of its range that the kernels check, or used to: a ValueError, as
    docs/operators.md section 4 promises, and a RuntimeError, as the kernels raise it when
    ``torch.ops.ssanet_ops.*`` is called directly (and as these checks raised before)."""


# ---- Generic checks ----


def integral(value: object) -> int | None:
    """`value` as an int when it is an integral number (an int, a numpy integer, anything with
    ``__index__``, as ``roi_align`` takes them), else None. A bool is not a number here. A
    value without ``__index__`` (a tuple, a float) is told apart before operator.index: the
    TypeError it would raise is caught, but torch.compile on torch 2.11 cannot trace a caught
    exception (an output_size pair failed there). Arrays and tensors have ``__index__`` and
    refuse in it unless they hold one integer."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def as_list(value: object) -> list | None:
    """A sequence or a 1-d array (numpy or torch) as a list; None for anything else."""
    if isinstance(value, (str, bytes)):
        return None
    if isinstance(value, Sequence):
        return list(value)
    if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):
        return value.tolist()
    return None


def as_int(value: object, name: str) -> int:
    """`value` as an int; raises naming `name` unless it is an integral number."""
    result = integral(value)
    if result is None:
        raise TypeError(f"{name} must be an int, got {value!r}")
    return result


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An integral number or a pair of them (a sequence or 1-d array) as a pair of ints;
    anything else raises naming `name`.

    >>> from ssanet_ops.utils import pair
    >>> pair(7, "output_size"), pair([7, 5], "output_size")
    ((7, 7), (7, 5))
    >>> pair(7.5, "output_size")
    Traceback (most recent call last):
    ...
    TypeError: output_size must be an int or a pair of ints, got 7.5
    """
    single = integral(value)
    if single is not None:
        return single, single
    items = as_list(value)
    if items is not None and len(items) == 2:
        first, second = integral(items[0]), integral(items[1])
        if first is not None and second is not None:
            return first, second
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def check_floating(tensor: torch.Tensor, name: str) -> None:
    """Raises unless `tensor` has a floating dtype the kernels take."""
    check_dtype(tensor.dtype, name)


def check_dtype(dtype: torch.dtype, name: str) -> None:
    """Raises unless the kernels take `dtype`."""
    if dtype not in FLOATING_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in FLOATING_DTYPES)
        raise TypeError(f"{name} must have one of the dtypes {names}, got {dtype}")


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


def positive_finite(value: float, name: str) -> float:
    """`value` as a float; raises unless it is a positive finite real number."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype boxes and candidates are computed in for inputs of `dtype`
    (docs/operators.md section 2): float64 stays, anything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- oriented_pool (docs/operators.md section 1) ----


def _oriented_pool_stride(
    height: int, width: int, patch: tuple[int, int], grid: int, stride
) -> tuple[int, int]:
    """The stride given (already checked), or the default ((H - h) / (G - 1), (W - w) / (G - 1)),
    0 when G = 1."""
    patch_h, patch_w = patch
    if stride is not None:
        return stride
    if grid == 1:
        return 0, 0
    if (height - patch_h) % (grid - 1) or (width - patch_w) % (grid - 1):
        raise ValueError(
            f"the default stride ((H - h) / (G - 1), (W - w) / (G - 1)) = "
            f"({(height - patch_h) / (grid - 1):g}, {(width - patch_w) / (grid - 1):g}) "
            f"is not whole for x of {height}x{width}, patch_size {patch} "
            f"and grid_size {grid}; pass stride explicitly"
        )
    return (height - patch_h) // (grid - 1), (width - patch_w) // (grid - 1)


def oriented_pool_settings(
    patch_size: int | Sequence[int],
    grid_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
) -> tuple[tuple[int, int], int, tuple[int, int] | None]:
    """Checks oriented_pool's settings on their own, without an input (for nn.OrientedPool's
    constructor too); returns (patch (h, w), G, stride (sh, sw) or None)."""
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
    if stride is not None:
        stride = pair(stride, "stride")
        if stride[0] < 0 or stride[1] < 0:
            raise ValueError(f"stride must be non-negative, got {stride}")
    return (patch_h, patch_w), grid, stride


def oriented_pool_geometry(
    input_shape: Sequence[int],
    patch_size: int | Sequence[int],
    grid_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
) -> tuple[tuple[int, int], int, tuple[int, int]]:
    """Checks oriented_pool's arguments against an input of `input_shape` [B, C, H, W] and
    returns (patch (h, w), G, stride (sh, sw)), the stride resolved per docs/operators.md
    section 1."""
    _, _, height, width = input_shape
    (patch_h, patch_w), grid, stride = oriented_pool_settings(patch_size, grid_size, stride)
    if patch_h > height or patch_w > width:
        raise ValueError(
            f"patch_size {(patch_h, patch_w)} does not fit in the {height}x{width} input x"
        )
    stride_h, stride_w = _oriented_pool_stride(height, width, (patch_h, patch_w), grid, stride)
    if (grid - 1) * stride_h + patch_h > height or (grid - 1) * stride_w + patch_w > width:
        raise ValueError(
            f"a {grid}x{grid} grid of {patch_h}x{patch_w} patches at stride "
            f"{(stride_h, stride_w)} does not fit in the {height}x{width} input x "
            "(patches outside x are an error, not padding)"
        )
    return (patch_h, patch_w), grid, (stride_h, stride_w)


def oriented_pool_arguments(
    x: torch.Tensor,
    patch_size: int | Sequence[int],
    grid_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
) -> tuple[list[int], int, list[int]]:
    """Checks every argument of oriented_pool; returns the schema's (patch, G, stride)."""
    check_rank(x, 4, "x", "[B, C, H, W]")
    check_floating(x, "x")
    patch, grid, resolved_stride = oriented_pool_geometry(x.shape, patch_size, grid_size, stride)
    return list(patch), grid, list(resolved_stride)


# ---- scale_candidates / multiscale_roi_crop (docs/operators.md section 2) ----


def scale_count(S: int) -> int:
    """S as an int; raises unless it is a positive odd integral number of at most MAX_SCALES
    (paper section 3.2: one original scale in the middle, (S-1)/2 shrunk and (S-1)/2
    expanded; the ops take at most MAX_SCALES)."""
    count = integral(S)
    if count is None or count < 1 or count % 2 == 0:
        raise ValueError(
            f"S must be a positive odd int (one original scale in the middle), got {S!r}"
        )
    if count > MAX_SCALES:
        raise ValueError(f"S must be at most {MAX_SCALES}, the ops' limit, got {count}")
    return count


def power_factors(alpha: float, S: int) -> list[float]:
    """``[alpha^-(S//2), ..., alpha^(S//2)]``, checked to be positive finite factors."""
    count = scale_count(S)
    alpha = positive_finite(alpha, "alpha")
    middle = count // 2
    try:
        factors = [alpha ** (j - middle) for j in range(count)]
    except OverflowError:
        factors = [math.inf]
    if not all(0 < factor < math.inf for factor in factors):
        raise ValueError(
            f"alpha = {alpha!r} gives scale factors alpha^-{middle} .. alpha^{middle} outside "
            f"the positive finite floats for S = {count}"
        )
    return factors


def _scale_values(values: list) -> list[float]:
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise TypeError(f"scales must be a sequence of S positive numbers, got {values!r}")
    values = [float(scale) for scale in values]
    if not 1 <= len(values) <= MAX_SCALES:
        raise ValueError(f"scales must hold 1 to {MAX_SCALES} factors, got {len(values)}")
    if not all(math.isfinite(scale) and scale > 0 for scale in values):
        raise ValueError(f"scales must be positive finite factors, got {values}")
    return values


def scale_list(scales: Sequence[float] | torch.Tensor) -> list[float]:
    """The scale factors (a sequence, a numpy array or a tensor) as a list of floats; raises
    unless they are 1 to MAX_SCALES positive finite numbers."""
    if isinstance(scales, torch.Tensor):
        scales = scale_tensor(scales).tolist()
    values = as_list(scales)
    if values is None:
        raise TypeError(f"scales must be a sequence of S positive numbers, got {scales!r}")
    return _scale_values(values)


def scale_tensor(scales: torch.Tensor) -> torch.Tensor:
    """A tensor of scale factors checked for what can be checked without reading it (its
    device, shape and dtype), so that torch.compile traces it without a graph break; the ops
    read and check its values when they run (``_tensor_scales.py``).

    It must be on the CPU: the kernels take the factors by value (at most MAX_SCALES of them),
    so reading them from a GPU would make the op wait for the device, which the ops never do
    (docs/operators.md section 4: CUDA graph capture)."""
    if scales.dim() != 1 or not 1 <= scales.shape[0] <= MAX_SCALES:
        raise ValueError(
            f"scales must be a 1-d tensor of 1 to {MAX_SCALES} factors, got shape "
            f"{tuple(scales.shape)}"
        )
    if scales.dtype == torch.bool or scales.is_complex():
        raise TypeError(f"scales must hold real numbers, got {scales.dtype}")
    if scales.device.type != "cpu":
        raise ValueError(
            f"scales must be a sequence or a CPU tensor, got a tensor on {scales.device}: the "
            "kernels take the factors by value, and reading them from the device would wait "
            "for it; keep them on the CPU (they may scale CUDA boxes)"
        )
    return scales


def scale_argument(scales: Sequence[float] | torch.Tensor) -> list[float] | torch.Tensor:
    """The schema's scales: a checked list of floats, or a tensor left in the graph."""
    return scale_tensor(scales) if isinstance(scales, torch.Tensor) else scale_list(scales)


def _check_box_list(boxes: Sequence[torch.Tensor]) -> None:
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
        _check_box_list(boxes)
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
    return rois.to(compute_dtype(rois.dtype) if dtype is None else dtype)


def centers_tensor(
    centers: torch.Tensor | None, batch: int | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """`centers` checked to be ``[B, 2]`` (B = `batch` when given), detached, in `dtype`."""
    if centers is None:
        return None
    check_rank(centers, 2, "centers", "[B, 2]")
    if centers.shape[1] != 2 or (batch is not None and centers.shape[0] != batch):
        expected = "B" if batch is None else str(batch)
        raise ValueError(
            f"centers must be a [{expected}, 2] tensor of (x, y), got shape {tuple(centers.shape)}"
        )
    return centers.detach().to(dtype)


def image_size_pair(image_size: Sequence[float]) -> tuple[float, float]:
    """(height, width) (a sequence or a 1-d array of real numbers) as floats; raises unless
    they are two positive finite numbers."""
    items = as_list(image_size)
    if (
        items is None
        or len(items) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items)
    ):
        raise TypeError(f"image_size must be a (height, width) pair of numbers, got {image_size!r}")
    image_height, image_width = float(items[0]), float(items[1])
    if (
        not (math.isfinite(image_height) and math.isfinite(image_width))
        or min(image_height, image_width) <= 0
    ):
        raise ValueError(
            f"image_size must be positive and finite, got {(image_height, image_width)}"
        )
    return image_height, image_width


def scale_candidates_arguments(
    boxes: BoxesArg,
    scales: Sequence[float] | torch.Tensor,
    image_size: Sequence[float],
    centers: torch.Tensor | None,
    clip: bool,
) -> tuple:
    """Checks every argument of scale_candidates; returns the schema's (rois, scales, centers,
    image_height, image_width, clip)."""
    rois = boxes_as_rois(boxes).detach()
    image_height, image_width = image_size_pair(image_size)
    centers = centers_tensor(centers, None, rois.dtype)
    if centers is not None:
        check_same_device({"boxes": rois, "centers": centers})
    return rois, scale_argument(scales), centers, image_height, image_width, bool(clip)


# The messages of the CPU kernels' checks of box values (csrc/roi_crop/arguments.h,
# report_box_errors): the kernels raise RuntimeErrors, the public functions ValueErrors.
_BOX_VALUE_MESSAGES = (
    ": boxes must have finite coordinates",
    ": the batch index of each box",
    ": centers must be finite",
)


def call_checking_box_values(op: Callable, *arguments):
    """``op(*arguments)``, with the box-value errors of the CPU kernels (a non-finite box or
    centre, a batch index out of range) raised as :class:`InvalidArgumentError`
    (docs/operators.md section 4). The values are checked in the kernel, not here: a check in
    Python would read them, a graph break under torch.compile, whose graphs call the kernels
    directly and so raise their RuntimeError."""
    if torch.compiler.is_compiling():
        return op(*arguments)
    try:
        return op(*arguments)
    except RuntimeError as error:
        if isinstance(error, ValueError) or not any(
            message in str(error) for message in _BOX_VALUE_MESSAGES
        ):
            raise
        raise InvalidArgumentError(str(error)) from None


def _check_crop_devices(input: torch.Tensor, boxes: BoxesArg, centers: torch.Tensor | None) -> None:
    if isinstance(boxes, (list, tuple)) and len(boxes) != input.shape[0]:
        raise ValueError(
            f"boxes: a list needs one [K_b, 4] tensor per image of input, got {len(boxes)} "
            f"tensors for a batch of {input.shape[0]}"
        )
    tensors = {"input": input}
    if isinstance(boxes, torch.Tensor):
        tensors["boxes"] = boxes
    else:
        tensors.update({f"boxes[{index}]": b for index, b in enumerate(boxes)})
    if centers is not None:
        tensors["centers"] = centers
    check_same_device(tensors)


def multiscale_roi_crop_arguments(
    input: torch.Tensor,
    boxes: BoxesArg,
    output_size: int | Sequence[int],
    scales: Sequence[float] | torch.Tensor,
    centers: torch.Tensor | None,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clip: bool,
) -> tuple:
    """Checks every argument of multiscale_roi_crop; returns the schema's argument tuple
    (input, rois, scales, centers, [oh, ow], spatial_scale, sampling_ratio, aligned, clip)."""
    check_rank(input, 4, "input", "[B, C, H, W]")
    check_floating(input, "input")
    _check_crop_devices(input, boxes, centers)
    dtype = compute_dtype(input.dtype)
    rois = boxes_as_rois(boxes, dtype).detach()
    centers = centers_tensor(centers, input.shape[0], dtype)
    output_size, spatial_scale, sampling_ratio = crop_settings(
        output_size, spatial_scale, sampling_ratio
    )
    return (
        input,
        rois,
        scale_argument(scales),
        centers,
        list(output_size),
        spatial_scale,
        sampling_ratio,
        bool(aligned),
        bool(clip),
    )


def crop_settings(
    output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int
) -> tuple[tuple[int, int], float, int]:
    """Checks multiscale_roi_crop's settings on their own (for nn.MultiScaleRoICrop's
    constructor too); returns ((oh, ow), spatial_scale, sampling_ratio)."""
    out_h, out_w = pair(output_size, "output_size")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output_size must be positive, got {(out_h, out_w)}")
    if not isinstance(spatial_scale, numbers.Real) or isinstance(spatial_scale, bool):
        raise TypeError(f"spatial_scale must be a number, got {spatial_scale!r}")
    spatial_scale = float(spatial_scale)
    if not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be positive and finite, got {spatial_scale}")
    sampling_ratio = as_int(sampling_ratio, "sampling_ratio")
    if sampling_ratio > MAX_SAMPLING_RATIO:
        raise InvalidArgumentError(
            f"sampling_ratio must be at most {MAX_SAMPLING_RATIO} (samples per bin and axis; "
            f"<= 0 takes roi_align's adaptive grid, capped at the same bound), got {sampling_ratio}"
        )
    return (out_h, out_w), spatial_scale, sampling_ratio


# ---- scale_correlation / scale_align (docs/operators.md section 3) ----


def autocast_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype `tensor` reaches the scale_align kernels with. The one statement of the
    autocast policy; the Autocast kernels of ssanet_ops/_autocast.py apply it. Under autocast
    the ops behave like a linear layer: floating tensors other than float64 are cast to the
    autocast dtype of their device type."""
    device_type = tensor.device.type
    if (
        device_type in ("cpu", "cuda")
        and torch.is_autocast_enabled(device_type)
        and tensor.is_floating_point()
        and tensor.dtype != torch.float64
    ):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype
