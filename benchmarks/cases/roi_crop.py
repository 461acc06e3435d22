"""multiscale_roi_crop workloads (issue 3): the paper's part crops from the image, and the
section 4.1 speed-up of cropping a shared feature map instead.

Each workload is timed twice, against each peer the issue names, in the same run:
- roi_align: ``torchvision.ops.roi_align`` on the same K*S candidate boxes, computed beforehand
  (not timed), so the comparison is kernel against kernel;
- per-part loop: what NTS-Net-style code does, one ``F.interpolate`` per candidate of a slice
  of the zero-padded input at integer coordinates, then ``torch.cat``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

import ssanet_ops

from . import Case

ALPHA = 1.25  # scale step of the candidates (the paper leaves it open)
SCALES = ssanet_ops.scale_factors(ALPHA, 5)
IMAGE_SIZE = 448  # the paper's input crop


def _part_boxes(batch: int, parts: int, image_size: int, generator: torch.Generator):
    """[batch * parts, 5] part proposals: sides of 1/7 to 1/2 of the image, inside it."""
    count = batch * parts
    sides = torch.rand(count, 2, generator=generator) * (image_size / 2 - image_size / 7)
    sides += image_size / 7
    corners = torch.rand(count, 2, generator=generator) * (image_size - sides)
    index = torch.arange(batch).repeat_interleave(parts)[:, None].float()
    return torch.cat([index, corners, corners + sides], dim=1)


def _workload(batch, channels, map_size, parts, output_size, spatial_scale, sampling_ratio):
    pad = round(224 * spatial_scale)  # NTS-Net pads images by 224 pixels

    def make_inputs(device: torch.device, dtype: torch.dtype) -> dict:
        generator = torch.Generator().manual_seed(0)
        image_size = map_size / spatial_scale
        boxes = _part_boxes(batch, parts, int(image_size), generator)
        candidates = ssanet_ops.scale_candidates(boxes, SCALES, (image_size, image_size))
        rois = torch.cat(
            [boxes[:, :1].repeat_interleave(len(SCALES), dim=0), candidates.reshape(-1, 4)], 1
        )
        # The loop's integer slices of the padded map, at least one pixel each.
        slices = []
        for b, x1, y1, x2, y2 in rois.tolist():
            left, top = int(x1 * spatial_scale) + pad, int(y1 * spatial_scale) + pad
            right = max(int(x2 * spatial_scale) + pad, left + 1)
            bottom = max(int(y2 * spatial_scale) + pad, top + 1)
            slices.append((int(b), left, top, right, bottom))
        x = torch.randn(batch, channels, map_size, map_size, generator=generator)
        return {
            "input": x.to(device=device, dtype=dtype).requires_grad_(),
            "boxes": boxes.to(device),
            "rois": rois.to(device=device, dtype=dtype),
            "slices": slices,
        }

    def fused(input, boxes, **_):
        return ssanet_ops.multiscale_roi_crop(
            input,
            boxes,
            output_size,
            SCALES,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio,
        )

    def on_candidates(input, rois, **_):
        return roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned=True)

    def per_part_loop(input, slices, **_):
        padded = F.pad(input, (pad, pad, pad, pad))
        parts = [
            F.interpolate(
                padded[b : b + 1, :, top:bottom, left:right],
                size=(output_size, output_size),
                mode="bilinear",
                align_corners=True,
            )
            for b, left, top, right, bottom in slices
        ]
        return torch.cat(parts)

    return make_inputs, fused, on_candidates, per_part_loop


def cases(quick: bool) -> list[Case]:
    # (name, batch, channels, map size, parts K, output size, spatial_scale, sampling_ratio)
    if quick:
        workloads = [
            ("image crops", 2, 3, 224, 4, 112, 1.0, -1),
            ("feature crops", 4, 256, 14, 4, 7, 1 / 32, 2),
        ]
    else:
        workloads = [
            ("image crops", 8, 3, 448, 4, 224, 1.0, -1),
            ("feature crops", 16, 1024, 14, 4, 7, 1 / 32, 2),
        ]
    result = []
    for name, batch, channels, map_size, parts, output_size, spatial_scale, ratio in workloads:
        make_inputs, fused, on_candidates, per_part_loop = _workload(
            batch, channels, map_size, parts, output_size, spatial_scale, ratio
        )
        size = (
            f"{name}: B={batch} {channels}x{map_size}x{map_size}, K={parts}, S={len(SCALES)}, "
            f"out {output_size}x{output_size}, scale 1/{round(1 / spatial_scale)}, "
            f"sampling {ratio}"
        )
        candidates = batch * parts * len(SCALES)
        forward_elements = batch * channels * map_size**2 + candidates * channels * output_size**2
        result.append(
            Case(
                op="multiscale_roi_crop",
                size=size,
                make_inputs=make_inputs,
                implementations={"roi_align": on_candidates, "ssanet_ops": fused},
                baseline="roi_align",
                forward_elements=forward_elements,
                targets={
                    "cpu": {"forward+backward": 1.5},
                    "cuda": {"forward": 1.0, "forward+backward": 1.2},
                },
            )
        )
        result.append(
            Case(
                op="multiscale_roi_crop",
                size=size,
                make_inputs=make_inputs,
                implementations={"per-part loop": per_part_loop, "ssanet_ops": fused},
                baseline="per-part loop",
                forward_elements=forward_elements,
                # The loop takes seconds per pass at full size.
                max_repeats=None if quick else 3,
                targets={"cpu": {"forward+backward": 10.0}},
            )
        )
    return result
