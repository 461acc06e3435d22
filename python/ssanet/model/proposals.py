"""Part proposals (paper section 3.1, built on NTS-Net): anchors, a head scoring every anchor,
then per-image non-maximum suppression and top-K, batched on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

__all__ = ["AnchorLevel", "NTS_ANCHOR_LEVELS", "ProposalHead", "make_anchors", "select_proposals"]


@dataclass(frozen=True)
class AnchorLevel:
    """Anchors of one level: one per (offset, scale, aspect ratio) at every cell of a map of
    `stride`.

    An anchor of ``size * scale`` and aspect ratio ``r`` (width / height) is
    ``size * scale * sqrt(r)`` wide and ``size * scale / sqrt(r)`` high. ``offsets``: its
    centres within a cell, ``(x, y)`` in units of the stride from the cell's top-left corner;
    the default ``((0.5, 0.5),)`` is NTS-Net's, one centre per cell. Several offsets give a
    grid of centres finer than the map (the head's score convolution then scores each of them
    from its cell's features): ``((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))``
    places them half a stride apart.
    """

    stride: int
    size: float
    scales: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    offsets: tuple[tuple[float, float], ...] = ((0.5, 0.5),)

    def __post_init__(self) -> None:
        # A config (JSON) gives lists: stored as tuples, so levels compare and hash.
        offsets = tuple(tuple(float(v) for v in offset) for offset in self.offsets)
        if not offsets or any(
            len(o) != 2 or not (0 <= o[0] <= 1 and 0 <= o[1] <= 1) for o in offsets
        ):
            raise ValueError(
                "anchor offsets must be a non-empty list of (x, y) pairs in [0, 1] (fractions "
                f"of the stride within a cell); got {self.offsets!r}"
            )
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "scales", tuple(self.scales))
        object.__setattr__(self, "aspect_ratios", tuple(self.aspect_ratios))

    @property
    def anchors_per_cell(self) -> int:
        return len(self.offsets) * len(self.scales) * len(self.aspect_ratios)


#: NTS-Net's settings (its anchors.py): three levels on a 448x448 input, 1614 anchors in all.
NTS_ANCHOR_LEVELS = (
    AnchorLevel(32, 48.0, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1.0, 1.5)),
    AnchorLevel(64, 96.0, (2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1.0, 1.5)),
    AnchorLevel(128, 192.0, (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.667, 1.0, 1.5)),
)


class ProposalHead(nn.Module):
    """NTS-Net's navigator: a score for every anchor of every level.

    Level 0 is a backbone map after a 3x3 convolution: the stride-32 map (NTS-Net's), or the
    stride-16 map for a level 0 of stride 16 (a grid twice as fine, for global views so small
    that the stride-32 map has only a few cells: the ``synthetic_fine`` config's 64-pixel view
    has a 2x2 one, on which K = 4 proposals can only be its four quadrants). Every further
    level halves the previous one with a stride-2 3x3 convolution (strides 32, 64, 128, ...
    or 16, 32, 64, ...). A 1x1 convolution per level gives one score per anchor of each cell.
    ``in_channels``: the channels of level 0's map.
    """

    def __init__(
        self,
        in_channels: int,
        levels: Sequence[AnchorLevel] = NTS_ANCHOR_LEVELS,
        hidden_channels: int = 128,
    ) -> None:
        super().__init__()
        if not levels:
            raise ValueError("anchor levels must not be empty")
        if levels[0].stride not in (16, 32):
            raise ValueError(
                "anchor level 0 must have stride 16 or 32 (the backbone's stride-16 or "
                f"stride-32 map); got {levels[0].stride}"
            )
        for index, level in enumerate(levels):
            if level.stride != levels[0].stride * 2**index:
                raise ValueError(
                    f"anchor level {index} must have stride {levels[0].stride * 2**index} "
                    f"(each level halves the previous one); got {level.stride}"
                )
        self.levels = tuple(levels)
        self.reduce = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.downsample = nn.ModuleList(
            nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1)
            for _ in self.levels[1:]
        )
        self.score = nn.ModuleList(
            nn.Conv2d(hidden_channels, level.anchors_per_cell, 1) for level in self.levels
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Scores ``[B, A]`` of the anchors of :func:`make_anchors`, and the map size per level.

        ``features``: the backbone's map of level 0's stride ``[B, C, h, w]``.
        """
        hidden = torch.relu(self.reduce(features))
        scores, sizes = [], []
        for index, score in enumerate(self.score):
            if index > 0:
                hidden = torch.relu(self.downsample[index - 1](hidden))
            # [B, anchors per cell, h, w] flattened in the anchors' order (anchor, y, x).
            scores.append(score(hidden).flatten(1))
            sizes.append((hidden.shape[-2], hidden.shape[-1]))
        return torch.cat(scores, dim=1), sizes


def make_anchors(
    levels: Sequence[AnchorLevel],
    map_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    device: torch.device | None = None,
) -> torch.Tensor:
    """The anchors ``[A, 4]`` (x1, y1, x2, y2) of all levels, clipped to the image.

    Order: level, then anchor (offset-major, then scale, then aspect ratio, as NTS-Net's
    scale-major order for one offset), then cell row and column, matching
    :class:`ProposalHead`'s scores. An anchor of offset ``(ox, oy)`` in cell (i, j) is centred
    at ``((j + ox) * stride, (i + oy) * stride)``; NTS-Net's one offset (0.5, 0.5) centres it
    on the cell.
    """
    height, width = image_size
    all_anchors = []
    for level, (rows, columns) in zip(levels, map_sizes, strict=True):
        shapes = [
            (offset, side * math.sqrt(ratio) / 2, side / math.sqrt(ratio) / 2)
            for offset in level.offsets
            for side in (level.size * scale for scale in level.scales)
            for ratio in level.aspect_ratios
        ]
        half_sizes = torch.tensor(
            [shape[1:] for shape in shapes], dtype=torch.float32, device=device
        )  # [anchors per cell, 2] (half width, half height)
        offsets = torch.tensor(
            [shape[0] for shape in shapes], dtype=torch.float32, device=device
        )  # [anchors per cell, 2] (x, y) in strides
        cells_y = torch.arange(rows, dtype=torch.float32, device=device)
        cells_x = torch.arange(columns, dtype=torch.float32, device=device)
        center_y = (cells_y[None, :, None] + offsets[:, 1, None, None]) * level.stride
        center_x = (cells_x[None, None, :] + offsets[:, 0, None, None]) * level.stride
        half_w = half_sizes[:, 0, None, None]
        half_h = half_sizes[:, 1, None, None]
        center_y = center_y.expand(len(half_sizes), rows, columns)
        center_x = center_x.expand(len(half_sizes), rows, columns)
        boxes = torch.stack(
            [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], dim=-1
        )
        all_anchors.append(boxes.reshape(-1, 4))
    anchors = torch.cat(all_anchors)
    return torchvision.ops.clip_boxes_to_image(anchors, (height, width))


@torch.library.custom_op("ssanet::nms_keep_mask", mutates_args=())
def nms_keep_mask(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms`` as a mask ``[N]`` (True: kept) instead of a list of indices.

    A custom op with a fixed output shape, so ``torch.compile`` traces the whole model as one
    graph (the index list's data-dependent length would break it).
    """
    keep = torchvision.ops.nms(boxes, scores, iou_threshold)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask[keep] = True
    return mask


@nms_keep_mask.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return scores.new_empty(scores.shape, dtype=torch.bool)


def select_proposals(
    anchors: torch.Tensor,
    scores: torch.Tensor,
    num_parts: int,
    iou_threshold: float,
    image_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image NMS and top-K of the anchors, for the whole batch at once.

    Args:
        anchors: ``[A, 4]`` boxes inside the image (the same for every image).
        scores: ``[B, A]`` anchor scores.
        num_parts: K.
        iou_threshold: NMS overlap threshold (NTS-Net: 0.25).
        image_size: (H, W) of the image the anchors lie in.

    Returns:
        boxes ``[B, K, 4]``, their scores ``[B, K]`` (differentiable: gathered from `scores`)
        and anchor indices ``[B, K]``. Part j of an image is its j-th best anchor that survives
        NMS. Where fewer than K survive, the best suppressed anchors fill the rest.
    """
    batch, num_anchors = scores.shape
    if num_parts > num_anchors:
        raise ValueError(
            f"num_parts ({num_parts}) exceeds the {num_anchors} anchors of a "
            f"{image_size[0]}x{image_size[1]} image"
        )
    detached = scores.detach().float()
    # One NMS call for the batch: shifting image b's boxes by b * (max(H, W) + 1) keeps boxes of
    # different images apart (torchvision.ops.batched_nms's coordinate trick; its other path
    # loops over images in Python).
    offsets = torch.arange(batch, device=scores.device, dtype=anchors.dtype) * (max(image_size) + 1)
    shifted = anchors[None, :, :] + offsets[:, None, None]
    kept = nms_keep_mask(shifted.reshape(-1, 4), detached.reshape(-1), iou_threshold)
    suppressed = ~kept.view(batch, num_anchors)
    # Rank survivors above every suppressed anchor, keeping the score order within each group.
    span = detached.amax(dim=1, keepdim=True) - detached.amin(dim=1, keepdim=True) + 1
    rank_key = detached - suppressed * span
    indices = rank_key.topk(num_parts, dim=1, sorted=True).indices
    boxes = anchors[indices]
    return boxes, scores.gather(1, indices), indices
