"""The bounds of scale_candidates and multiscale_roi_crop, and the on-demand check of box
values (docs/operators.md section 4).

On CUDA the ops never wait for the device (so they can be captured in a CUDA graph) and
therefore do not look at box values: a candidate whose box has a non-finite coordinate or an
out-of-range batch index, or whose image's given centre is not finite, is zeros and passes no
gradient. On the CPU the ops raise for such boxes and centres. :func:`check_boxes` raises for
them on any device, at the cost of one synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import check_rank

# Batch indices are whole numbers below this bound when the number of images is not known
# (scale_candidates without centers; csrc/common/scale_candidates.h, kBatchIndexLimit).
BATCH_INDEX_LIMIT = 2**31


def check_boxes(
    boxes: torch.Tensor | Sequence[torch.Tensor],
    batch_size: int | None = None,
    centers: torch.Tensor | None = None,
) -> None:
    """Raises a ``ValueError`` naming the first bad box or centre, where the ops on CUDA would
    give the box zero candidates and no gradient (docs/operators.md section 4); on the CPU the
    ops raise themselves.

    Args:
        boxes: ``[K, 5]`` rows (batch_index, x1, y1, x2, y2), or a list of ``[K_b, 4]``
            tensors, one per image, as the ops take them, on any device. Checked in the dtype
            the ops compute boxes in by default: float64 stays, any other type becomes float32.
        batch_size: B, the number of images (``input.shape[0]`` of ``multiscale_roi_crop``,
            ``centers.shape[0]`` of ``scale_candidates``); ``None`` takes the rows of
            ``centers`` when they are given, else allows any batch index below
            ``BATCH_INDEX_LIMIT`` (2**31), as ``scale_candidates`` without centers does.
        centers: the ``[B, 2]`` centres the ops are given, if any; every one must be finite,
            as the CPU kernels require.

    Every coordinate must be finite, and every batch index a whole number in
    ``[0, batch_size)``. Synchronises with the device once per tensor.

    >>> ssanet_ops.check_boxes(torch.tensor([[0, 1.0, 2.0, 30.0, 40.0]]), batch_size=2)
    >>> ssanet_ops.check_boxes(torch.tensor([[2, 1.0, 2.0, 30.0, 40.0]]), batch_size=2)
    Traceback (most recent call last):
    ...
    ValueError: boxes[0, 0] = 2.0: the batch index must be a whole number in [0, 2)
    """
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0
    ):
        raise TypeError(f"batch_size must be a non-negative int or None, got {batch_size!r}")
    if centers is not None:
        batch_size = _check_centers(centers, batch_size)
    if isinstance(boxes, (list, tuple)):
        if batch_size is not None and len(boxes) != batch_size:
            raise ValueError(
                f"boxes: a list needs one [K_b, 4] tensor per image, got {len(boxes)} tensors "
                f"for batch_size {batch_size}"
            )
        for index, image_boxes in enumerate(boxes):
            check_rank(image_boxes, 2, f"boxes[{index}]", "[K_b, 4]")
            if image_boxes.shape[1] != 4:
                raise ValueError(
                    f"boxes[{index}] must be a [K_b, 4] tensor of (x1, y1, x2, y2), got shape "
                    f"{tuple(image_boxes.shape)}"
                )
            _check_rows(f"boxes[{index}]", image_boxes)
        return
    check_rank(boxes, 2, "boxes", "[K, 5]")
    if boxes.shape[1] != 5:
        raise ValueError(
            "boxes must be a [K, 5] tensor of (batch_index, x1, y1, x2, y2), got shape "
            f"{tuple(boxes.shape)}"
        )
    _check_rows(
        "boxes", boxes[:, 1:], boxes[:, 0], BATCH_INDEX_LIMIT if batch_size is None else batch_size
    )


def _check_centers(centers: torch.Tensor, batch_size: int | None) -> int:
    """Raises for the first non-finite row of `centers` [B, 2] (or a shape that disagrees with
    `batch_size`); returns B."""
    check_rank(centers, 2, "centers", "[B, 2]")
    if centers.shape[1] != 2 or (batch_size is not None and centers.shape[0] != batch_size):
        expected = "B" if batch_size is None else str(batch_size)
        raise ValueError(
            f"centers must be a [{expected}, 2] tensor of (x, y), got shape {tuple(centers.shape)}"
        )
    values = _as_computed(centers)
    bad = ~torch.isfinite(values).all(1)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"centers[{b}] is not finite: {values[b].tolist()}")
    return centers.shape[0]


def _as_computed(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in the dtype the ops compute boxes in by default."""
    tensor = tensor.detach()
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _check_rows(
    name: str,
    coordinates: torch.Tensor,
    index: torch.Tensor | None = None,
    limit: int = 0,
) -> None:
    """Raises for the first row of `coordinates` [K, 4] that is not finite or whose batch
    index (when given, [K]) is not a whole number in [0, limit)."""
    coordinates = _as_computed(coordinates)
    good = torch.isfinite(coordinates).all(1)
    if index is not None:
        index = _as_computed(index)
        good = good & (index >= 0) & (index < limit) & (index == index.trunc())
    bad = ~good
    if not bool(bad.any()):
        return
    k = int(bad.nonzero()[0, 0])
    if not bool(torch.isfinite(coordinates[k]).all()):
        raise ValueError(f"{name}[{k}] has a non-finite coordinate: {coordinates[k].tolist()}")
    raise ValueError(
        f"{name}[{k}, 0] = {index[k].item()!r}: the batch index must be a whole number in "
        f"[0, {limit})"
    )
