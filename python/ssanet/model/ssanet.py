"""SSANet (paper section 3): proposals with MAC, discriminative scale mining, oriented pooling."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import torch
from torch import nn

import ssanet_ops

from .backbone import Backbone
from .dsm import DSM_MODES, DiscriminativeScaleMining
from .operators import operators
from .oriented_pooling import POOLING_MODES, PartPoolingHead
from .proposals import NTS_ANCHOR_LEVELS, AnchorLevel, ProposalHead, make_anchors, select_proposals

__all__ = ["SSANet", "SSANetOutput"]

CROP_SOURCES = ("image", "shared")
DSM_FEATURE_MODES = ("pooled", "flatten")


def _crop_from_argument(crop_from: str, part_features: str | None) -> str:
    """The checked value of ``crop_from``, or of the deprecated ``part_features`` when given
    (errors name the argument the caller used)."""
    name = "crop_from" if part_features is None else "part_features"
    if part_features is not None:
        crop_from = _deprecated_part_features(crop_from, part_features)
    if crop_from not in CROP_SOURCES:
        raise ValueError(f"{name} must be one of {CROP_SOURCES}, got {crop_from!r}")
    return crop_from


def _deprecated_part_features(crop_from: str, part_features: str) -> str:
    warnings.warn(
        "SSANet(part_features=...) is deprecated: the argument is now crop_from "
        "(part_features is the name of an output field)",
        DeprecationWarning,
        stacklevel=4,
    )
    if crop_from != "image" and crop_from != part_features:
        raise ValueError(
            f"crop_from={crop_from!r} and the deprecated part_features={part_features!r} "
            "disagree; pass crop_from only"
        )
    return part_features


def _anchor_level(level: AnchorLevel | dict) -> AnchorLevel:
    # A dict is how SSANet.config (and so a checkpoint) stores a level.
    return level if isinstance(level, AnchorLevel) else AnchorLevel(**level)


def _check_arguments(
    num_classes: int,
    num_parts: int,
    num_scales: int,
    dsm: str,
    op: str,
    dsm_features: str,
    part_size: int,
    global_size: int | None,
) -> None:
    if num_classes < 1 or num_parts < 1 or num_scales < 1:
        raise ValueError(
            f"num_classes, num_parts and num_scales must be positive, got "
            f"{num_classes}, {num_parts}, {num_scales}"
        )
    if dsm in ("align", "fixed") and num_scales % 2 == 0:
        raise ValueError(
            f"num_scales must be odd (the proposal in the middle, as many candidates shrunk "
            f"as expanded), got {num_scales}"
        )
    if dsm not in (*DSM_MODES, "none"):
        raise ValueError(f"dsm must be one of {(*DSM_MODES, 'none')}, got {dsm!r}")
    if op not in (*POOLING_MODES, "none"):
        raise ValueError(f"op must be one of {(*POOLING_MODES, 'none')}, got {op!r}")
    if dsm_features not in DSM_FEATURE_MODES:
        raise ValueError(f"dsm_features must be one of {DSM_FEATURE_MODES}, got {dsm_features!r}")
    if part_size % 32:
        raise ValueError(f"part_size must be a multiple of 32, got {part_size}")
    if global_size is not None and global_size < 32:
        raise ValueError(f"global_size must be None or at least 32, got {global_size}")


class SSANetOutput(NamedTuple):
    """What :meth:`SSANet.forward` returns. B images, K parts, S scales, C classes, D features.

    Fields are None where the configuration has no such part (``proposals=False``: only
    ``logits``; ``dsm="none"``: no DSM fields; ``op="none"``: no OP fields).
    """

    logits: torch.Tensor  # [B, C] final: dsm_logits + op_logits
    dsm_logits: torch.Tensor | None  # [B, C] the parts' DSM logits summed
    op_logits: torch.Tensor | None  # [B, C] the parts' OP logits summed
    dsm_part_logits: torch.Tensor | None  # [B, K, C]
    op_part_logits: torch.Tensor | None  # [B, K, C]
    part_logits: torch.Tensor | None  # [B, K, C] part classifier (FC of eq. 1) on part_features
    part_features: torch.Tensor | None  # [B, K, D] pooled features of the proposals (f_ij)
    part_boxes: torch.Tensor | None  # [B, K, 4] (x1, y1, x2, y2), part j = rank j after NMS
    part_scores: torch.Tensor | None  # [B, K] proposal-head scores of part_boxes
    candidate_boxes: torch.Tensor | None  # [B, K, S, 4] the scale candidates of each part
    aligned_scale: torch.Tensor | None  # [B, K] long: the candidate fed to the OP module


class SSANet(nn.Module):
    """The spatial-scale aligned network.

    Args:
        num_classes: C.
        num_parts: K proposals per image (the paper: 4).
        num_scales: S scale candidates per proposal (the paper: 5; odd).
        scale_alpha: the candidates' factors are ``alpha ** (n - (S-1)/2)``, n = 0..S-1.
        backbone: a torchvision ResNet name (the paper: "resnet50"; "resnet18" for small runs).
        weights: the backbone's initial weights: None, a torchvision weights name
            ("IMAGENET1K_V2", "DEFAULT") or a local file (see :func:`load_backbone_weights`).
        crop_from: where the scale candidates are cropped from: "image" crops every
            candidate from the image at ``part_size`` and runs the backbone on it (the paper);
            "shared" crops the backbone's shared stride-16 map at ``part_size / 16`` and runs
            only the last stage on the crops (section 4.1). Both give ``part_size / 32`` maps
            (7x7 at 224). Formerly ``part_features``, which still works but is deprecated (it
            is also the name of an output field).
        proposals: False is the plain backbone (global average pooling and a linear
            classifier; Table 3's first row); the remaining arguments are then unused.
        dsm: "align" (the paper), "fixed" (shift 0 only), "single" (one scale: the proposal),
            or "none" (no DSM; Table 3).
        op: "oriented" (the paper), "gap", "gmp" (Table 4) or "none" (no OP; Table 3). With
            neither DSM nor OP, the logits are the part classifier's, summed over parts.
        dsm_features: "pooled" (global average of each candidate's map, D = channels) or
            "flatten" (the whole map, D = h*w*channels, as in the paper's figure 3).
        part_size: side of the part crops fed to the part network (the paper: 224).
        anchor_levels: the anchors (default NTS-Net's three levels; level 0 of stride 32,
            or 16 for a finer grid on the stride-16 map, see :class:`ProposalHead`).
        nms_iou: IoU threshold of the proposals' NMS (NTS-Net: 0.25).
        op_patch_size, op_grid_size: of the oriented pooling (the paper: 3 and 3).
        global_size: None (the paper: the backbone's global view is the input image itself),
            or the side of a lower-resolution global view: the images are resized to
            ``global_size x global_size`` (antialiased) for the backbone's global pass (the
            plain backbone's logits, the proposals, the shared stride-16 map), while
            ``crop_from="image"`` crops the parts from the full-resolution input. The paper's
            parts see a bird's head at a higher resolution than the 448-pixel global view (a
            224-pixel crop of a fraction of it); on small synthetic images this reproduces that
            gap (see the ``synthetic_fine`` config). Anchors are then in the global view's
            pixels; the returned boxes are in the input's.

    The images are ``[B, 3, H, W]``, normalized as the backbone expects (ImageNet mean and
    std for torchvision's weights); the paper uses 448x448. Proposals without MAC (Table 3)
    are a training choice: ``SSANetLoss(mac_lambda=0)``.
    """

    def __init__(
        self,
        num_classes: int,
        num_parts: int = 4,
        num_scales: int = 5,
        scale_alpha: float = 1.2,
        backbone: str = "resnet50",
        weights: str | os.PathLike | None = None,
        crop_from: str = "image",
        *,
        proposals: bool = True,
        dsm: str = "align",
        op: str = "oriented",
        dsm_features: str = "pooled",
        part_size: int = 224,
        anchor_levels: Sequence[AnchorLevel | dict] = NTS_ANCHOR_LEVELS,
        nms_iou: float = 0.25,
        op_patch_size: int = 3,
        op_grid_size: int = 3,
        part_features: str | None = None,
        global_size: int | None = None,
    ) -> None:
        super().__init__()
        crop_from = _crop_from_argument(crop_from, part_features)
        _check_arguments(
            num_classes, num_parts, num_scales, dsm, op, dsm_features, part_size, global_size
        )
        anchor_levels = tuple(map(_anchor_level, anchor_levels))
        self.config: dict[str, Any] = {
            "num_classes": num_classes,
            "num_parts": num_parts,
            "num_scales": num_scales,
            "scale_alpha": scale_alpha,
            "backbone": backbone,
            "crop_from": crop_from,
            "proposals": proposals,
            "dsm": dsm,
            "op": op,
            "dsm_features": dsm_features,
            "part_size": part_size,
            "anchor_levels": [asdict(level) for level in anchor_levels],
            "nms_iou": nms_iou,
            "op_patch_size": op_patch_size,
            "op_grid_size": op_grid_size,
            "global_size": global_size,
        }
        self.backbone = Backbone(backbone, weights)
        self.global_size = global_size
        self.proposals = proposals
        if not proposals:
            self.classifier = nn.Linear(self.backbone.out_channels, num_classes)
            return
        self.anchor_levels = anchor_levels
        self._build_parts()

    def _build_parts(self) -> None:
        """The modules and settings of the part branch (sections 3.1-3.3), from self.config."""
        config = self.config
        channels, num_classes = self.backbone.out_channels, config["num_classes"]
        self.num_parts = config["num_parts"]
        self.crop_from = config["crop_from"]
        self.part_size = config["part_size"]
        self.nms_iou = config["nms_iou"]
        # "single" and "none" look at the proposal only; otherwise S candidates.
        self.scales = [1.0]
        if config["dsm"] in ("align", "fixed"):
            self.scales = ssanet_ops.scale_factors(config["scale_alpha"], config["num_scales"])
        self.original_scale = (len(self.scales) - 1) // 2  # m0, factor 1 (docs/operators.md s. 3)
        self.dsm_features = config["dsm_features"]
        # Level 0 of stride 16 scores the stride-16 map (a finer grid on a small global view).
        self.propose_on_stride16 = self.anchor_levels[0].stride == 16
        head_channels = self.backbone.stride16_channels if self.propose_on_stride16 else channels
        self.proposal_head = ProposalHead(head_channels, self.anchor_levels)
        self.part_classifier = nn.Linear(channels, num_classes)  # FC of eq. 1, shared by parts
        self.dsm = None
        if config["dsm"] != "none":
            map_side = self.part_size // 32
            in_features = channels * (map_side**2 if self.dsm_features == "flatten" else 1)
            self.dsm = DiscriminativeScaleMining(
                in_features, num_classes, self.num_parts, len(self.scales), config["dsm"]
            )
        self.op = None
        if config["op"] != "none":
            self.op = PartPoolingHead(
                channels,
                num_classes,
                self.num_parts,
                config["op"],
                config["op_patch_size"],
                config["op_grid_size"],
            )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SSANet:
        """A model with the architecture of ``model.config`` (random weights). Configs of
        checkpoints written before ``crop_from`` was named so load too."""
        config = dict(config)
        if "part_features" in config:
            config["crop_from"] = config.pop("part_features")
        return cls(**config)

    def candidate_maps(
        self, images: torch.Tensor, stride16: torch.Tensor, rois: torch.Tensor
    ) -> torch.Tensor:
        """The part network's maps of every candidate: ``[B*K, S, C, part_size/32, ...]``.

        ``rois``: ``[B*K, 5]`` (batch index, x1, y1, x2, y2) in image coordinates;
        ``stride16``: the shared map of the global view (:meth:`global_view`).
        """
        ops = operators()
        side = self.part_size
        if self.crop_from == "image":
            # Every candidate resized to part_size x part_size, then the whole backbone.
            crops = ops.multiscale_roi_crop(images, rois, (side, side), self.scales)
            maps = self.backbone(crops.flatten(0, 1))[1]
        else:
            # Section 4.1: crop the shared stride-16 map, then only the last stage.
            view_scale = 1.0 if self.global_size is None else self.global_size / images.shape[-1]
            crops = ops.multiscale_roi_crop(
                stride16,
                rois,
                (side // 16, side // 16),
                self.scales,
                spatial_scale=view_scale / 16,
                sampling_ratio=2,
            )
            maps = self.backbone.layer4(crops.flatten(0, 1))
        return maps.unflatten(0, (rois.shape[0], len(self.scales)))

    def forward(self, images: torch.Tensor) -> SSANetOutput:
        """``images [B, 3, H, W]`` -> :class:`SSANetOutput` (paper section 3)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        stride16, stride32 = self.backbone(self.global_view(images))
        return self.forward_maps(images, stride16, stride32)

    def forward_maps(
        self, images: torch.Tensor, stride16: torch.Tensor, stride32: torch.Tensor
    ) -> SSANetOutput:
        """:meth:`forward` after the global pass: the heads on the backbone's ``stride16`` and
        ``stride32`` maps of the global view of ``images`` (which ``crop_from="image"`` crops
        from). ``forward(images)`` is ``forward_maps(images, *backbone(global_view(images)))``;
        given other maps (e.g. the rotated maps of another image, ``ssanet.rotation``), it
        runs the model downstream of its backbone's global pass on them."""
        if not self.proposals:
            logits = self.classifier(stride32.mean(dim=(-2, -1)))
            return SSANetOutput(logits, *([None] * (len(SSANetOutput._fields) - 1)))
        batch, _, height, width = images.shape
        ops = operators()
        view_size = (height, width) if self.global_size is None else (self.global_size,) * 2

        # Section 3.1: K part proposals per image, [B, K, 4]; part j is the j-th best. The
        # anchors lie in the global view; the boxes are scaled to the input's pixels.
        proposal_map = stride16 if self.propose_on_stride16 else stride32
        part_boxes, part_scores = self.propose(proposal_map, view_size)
        if self.global_size is not None:
            factors = [width / view_size[1], height / view_size[0]] * 2
            part_boxes = part_boxes * part_boxes.new_tensor(factors)
        rois = _rois(part_boxes)  # [B*K, 5]
        # Section 3.2: the S scale candidates of every part and their maps [B, K, S, C, h, w].
        candidate_boxes = ops.scale_candidates(rois, self.scales, (height, width))
        maps = self.candidate_maps(images, stride16, rois).unflatten(0, (batch, self.num_parts))
        # f_ij of eq. 1: the pooled features of the proposal itself (factor 1), and FC(f_ij).
        part_features = maps[:, :, self.original_scale].mean(dim=(-2, -1))
        part_logits = self.part_classifier(part_features)
        # Section 3.2, eqs. 6-8: DSM aligns the scales; per part, the aligned candidate.
        dsm_part_logits, aligned = self.mine_scales(maps)
        # Section 3.3: OP on the map of each part's aligned candidate.
        op_part_logits = None
        if self.op is not None:
            op_part_logits = self.op(_select_candidates(maps, aligned))

        # Section 3: each head's logits summed over the parts; final = DSM + OP.
        dsm_logits = dsm_part_logits.sum(dim=1) if dsm_part_logits is not None else None
        op_logits = op_part_logits.sum(dim=1) if op_part_logits is not None else None
        heads = [logits for logits in (dsm_logits, op_logits) if logits is not None]
        logits = sum(heads[1:], heads[0]) if heads else part_logits.sum(dim=1)
        return SSANetOutput(
            logits=logits,
            dsm_logits=dsm_logits,
            op_logits=op_logits,
            dsm_part_logits=dsm_part_logits,
            op_part_logits=op_part_logits,
            part_logits=part_logits,
            part_features=part_features,
            part_boxes=part_boxes,
            part_scores=part_scores,
            candidate_boxes=candidate_boxes.view(batch, self.num_parts, len(self.scales), 4),
            aligned_scale=aligned,
        )

    def global_view(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's global input: ``images`` themselves, or resized to ``global_size``."""
        if self.global_size is None:
            return images
        size = (self.global_size, self.global_size)
        return nn.functional.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True
        )

    def propose(
        self, features: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Section 3.1: score every anchor, one NMS, top-K: ``part_boxes [B, K, 4]`` and their
        ``part_scores [B, K]``. ``features``: the backbone's map of the first anchor level's
        stride (stride 32, or 16)."""
        anchor_scores, map_sizes = self.proposal_head(features)
        anchors = make_anchors(self.anchor_levels, map_sizes, image_size, features.device)
        part_boxes, part_scores, _ = select_proposals(
            anchors, anchor_scores, self.num_parts, self.nms_iou, image_size
        )
        return part_boxes, part_scores

    def mine_scales(self, maps: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Section 3.2: the DSM logits ``[B, K, C]`` of the candidates' ``maps [B, K, S, C, h,
        w]`` (None without DSM) and each part's aligned candidate ``[B, K]`` (the original
        scale without DSM)."""
        batch, parts = maps.shape[:2]
        if self.dsm is None:
            aligned = torch.full((batch, parts), self.original_scale, device=maps.device)
            return None, aligned
        phi = maps.mean(dim=(-2, -1)) if self.dsm_features == "pooled" else maps.flatten(3)
        dsm_part_logits, shift = self.dsm(phi)
        return dsm_part_logits, self.dsm.aligned_index(dsm_part_logits, shift)


def _rois(part_boxes: torch.Tensor) -> torch.Tensor:
    """``[B, K, 4]`` boxes as ``[B*K, 5]`` rows (batch index, x1, y1, x2, y2)."""
    batch, parts = part_boxes.shape[:2]
    batch_index = torch.arange(batch, device=part_boxes.device, dtype=part_boxes.dtype)
    return torch.cat(
        [batch_index.repeat_interleave(parts)[:, None], part_boxes.reshape(-1, 4)], dim=1
    )


def _select_candidates(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``maps [B, K, S, C, h, w]`` at candidate ``index [B, K]``: ``[B, K, C, h, w]``."""
    batch, parts, scales = maps.shape[:3]
    rows = torch.arange(batch * parts, device=maps.device) * scales + index.flatten()
    return maps.flatten(0, 2).index_select(0, rows).unflatten(0, (batch, parts))
