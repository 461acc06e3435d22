"""The paper's metrics on tensors.

- Accuracy: top-1, top-5 and mean per-class accuracy (:func:`classification_metrics`).
- Fig. 4: the distance from each of the K proposals' centres to the nearest visible ground-truth
  keypoint, averaged over the images per proposal index (:func:`proposal_keypoint_distance`);
  over a checkpoint's test split against random boxes of the same sizes (:func:`localization`),
  and the same for an ideal proposal head on a config's anchors (:func:`localization_floor`).

The protocols that produce the logits (Tables 1 and 2: rotated and reduced test images) are
:func:`ssanet.evaluate.evaluate_model`; the plots are in :mod:`ssanet.plots`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = [
    "classification_metrics",
    "discriminative_parts",
    "localization",
    "localization_floor",
    "mean_class_accuracy",
    "mean_proposal_keypoint_distance",
    "proposal_keypoint_distance",
    "topk_accuracy",
]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows of ``logits [N, C]`` whose label ``labels [N]`` is among the ``k`` largest.

    ``k`` larger than ``C`` counts every row as correct. Ties: ``torch.topk`` decides.
    """
    logits, labels = _check_logits(logits, labels)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if logits.shape[0] == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).double().mean().item()


def mean_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels [N]`` of the accuracy of ``predictions [N]``.

    Every class counts once, however many test images it has.
    """
    predictions, labels = predictions.reshape(-1), labels.reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ"
        )
    if labels.numel() == 0:
        return float("nan")
    classes, inverse = labels.unique(return_inverse=True)
    correct = torch.zeros(len(classes), dtype=torch.float64)
    count = torch.zeros(len(classes), dtype=torch.float64)
    correct.index_add_(0, inverse, (predictions == labels).double())
    count.index_add_(0, inverse, torch.ones_like(correct[inverse]))
    return (correct / count).mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``{"top1", "top5", "mean_class_accuracy", "num_samples"}`` of ``logits [N, C]``."""
    logits, labels = _check_logits(logits, labels)
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "mean_class_accuracy": mean_class_accuracy(logits.argmax(dim=1), labels),
        "num_samples": int(labels.numel()),
    }


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have {logits.shape[0]} entries, got {labels.shape[0]}")
    return logits, labels.long()


def proposal_keypoint_distance(
    boxes: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Fig. 4: distance from each proposal's centre to the nearest visible keypoint.

    ``boxes [B, K, 4]`` proposals ``(x1, y1, x2, y2)``, ``keypoints [B, P, 2]`` and
    ``visible [B, P]``, all in the same pixel coordinates (those of the model's input, when the
    dataset's transform moved the keypoints with the image). Returns ``[B, K]``; NaN for images
    with no visible keypoint.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, K, 4], got shape {tuple(boxes.shape)}")
    if keypoints.dim() != 3 or keypoints.shape[-1] != 2 or keypoints.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"keypoints must be [B, P, 2] with B = {boxes.shape[0]}, got {tuple(keypoints.shape)}"
        )
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(
            f"visible must be {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}"
        )
    if keypoints.shape[1] == 0:
        return boxes.new_full(boxes.shape[:2], float("nan"))
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2
    distances = torch.cdist(centers.double(), keypoints.double())  # [B, K, P]
    distances = distances.masked_fill(~visible.bool()[:, None, :], float("inf"))
    nearest = distances.amin(dim=2)
    return nearest.masked_fill(nearest.isinf(), float("nan")).to(boxes.dtype)


def mean_proposal_keypoint_distance(
    boxes: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """``[K]``: :func:`proposal_keypoint_distance` averaged over the images, per proposal index
    (images with no visible keypoint left out), as plotted in Fig. 4."""
    return proposal_keypoint_distance(boxes, keypoints, visible).nanmean(dim=0)


# Fig. 4 over a test split (the ablation study's statistic) ----------------------------------


def discriminative_parts(num_classes: int) -> list[str]:
    """The synthetic parts whose look differs between the first ``num_classes`` classes."""
    from .data.synthetic import class_attributes

    attributes = list(zip(*(class_attributes(label) for label in range(num_classes)), strict=True))
    return [
        part
        for part, values in zip(("head", "tail", "wing"), attributes, strict=True)
        if len(set(values)) > 1
    ]


def localization(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    parts: list[str] | None = None,
    random_draws: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Fig. 4's statistic for a checkpoint with proposals, on the test split of CUB-layout data.

    For every test image and proposal: the distance (pixels of the model input) from the
    proposal's centre to the nearest visible keypoint among ``parts`` (default: the
    discriminative parts of the synthetic classes, :func:`discriminative_parts`); and the same
    for ``random_draws`` boxes of the proposal's size, each placed uniformly inside the image.
    Returns the two means, their ratio, the per-proposal means and the parts used.
    """
    import torch

    from .checkpoint import load_checkpoint
    from .data import config_test_split

    loaded = load_checkpoint(checkpoint)
    dataset = config_test_split(loaded.extra, data_root, with_keypoints=True)

    def propose(images, keypoints, visible):
        with torch.no_grad():
            return loaded.model(images).part_boxes.float()  # [B, K, 4]

    result = _keypoint_distances(dataset, propose, parts, random_draws, seed, batch_size)
    return {**result, "unit": f"pixels of the {loaded.image_size}x{loaded.image_size} input"}


def localization_floor(
    config: dict,
    data_root: str | os.PathLike,
    parts: list[str] | None = None,
    random_draws: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`localization` of an ideal proposal head for ``config``'s anchors: one whose score
    for every anchor is minus the distance from its centre to the nearest discriminative
    keypoint, its top K then chosen by the model's own NMS and ranking
    (:func:`~ssanet.model.proposals.select_proposals`). No training: about the lowest Fig. 4
    statistic that the config's anchor grid, K and NMS threshold allow a learned head to reach
    (not exactly: NMS is greedy, so a head that skipped the nearest anchor could keep two near
    ones it suppresses). The paper's claim is a ratio of at most 0.5 to random boxes."""
    import torch

    from .data import config_test_split
    from .model import SSANet
    from .model.proposals import make_anchors, select_proposals

    dataset = config_test_split(config, data_root, with_keypoints=True)
    model = SSANet(**{**config["model"], "weights": None, "num_classes": len(dataset.classes)})
    image = dataset[0]["image"][None]
    with torch.no_grad():
        view = model.global_view(image)
        stride16, stride32 = model.backbone(view)
        _, map_sizes = model.proposal_head(stride16 if model.propose_on_stride16 else stride32)
    height, width = image.shape[-2:]
    factors = torch.tensor([width / view.shape[-1], height / view.shape[-2]] * 2)
    anchors = make_anchors(model.anchor_levels, map_sizes, tuple(view.shape[-2:])) * factors

    def propose(images, keypoints, visible):
        every = anchors[None].expand(len(images), -1, -1)
        distance = proposal_keypoint_distance(every, keypoints, visible).nan_to_num(0.0)
        boxes, _, _ = select_proposals(
            anchors, -distance, model.num_parts, model.nms_iou, (height, width)
        )
        return boxes

    result = _keypoint_distances(dataset, propose, parts, random_draws, seed, batch_size)
    return {**result, "unit": f"pixels of the {width}x{height} input"}


def _keypoint_distances(
    dataset, propose, parts: list[str] | None, random_draws: int, seed: int, batch_size: int
) -> dict[str, Any]:
    """Fig. 4's statistic of the boxes ``propose(images, keypoints, visible) -> [B, K, 4]``
    gives for the batches of ``dataset``, against random boxes of the same sizes (see
    :func:`localization`)."""
    import torch
    from torch.utils.data import DataLoader

    parts = parts if parts is not None else discriminative_parts(len(dataset.classes))
    if dataset.part_names is None or not set(parts) <= set(dataset.part_names):
        raise ValueError(f"the data's parts {dataset.part_names} do not include {parts}")
    columns = [dataset.part_names.index(part) for part in parts]
    generator = torch.Generator().manual_seed(seed)
    proposal_distances, random_distances = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images = batch["image"]
        height, width = images.shape[-2:]
        keypoints = batch["keypoints"][:, columns]
        visible = batch["keypoints_visible"][:, columns]
        boxes = propose(images, keypoints, visible)
        proposal_distances.append(proposal_keypoint_distance(boxes, keypoints, visible))
        sides = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
        limits = torch.tensor([width, height], dtype=torch.float32)
        for _ in range(random_draws):
            corner = torch.rand(sides.shape, generator=generator) * (limits - sides).clamp(min=0)
            random_boxes = torch.cat([corner, corner + sides], dim=-1)
            random_distances.append(proposal_keypoint_distance(random_boxes, keypoints, visible))
    proposals = torch.cat(proposal_distances)  # [N, K]
    randoms = torch.cat(random_distances)
    return {
        "parts": parts,
        "proposal_mean": proposals.nanmean().item(),
        "random_mean": randoms.nanmean().item(),
        "ratio": proposals.nanmean().item() / randoms.nanmean().item(),
        "proposal_per_index": proposals.nanmean(dim=0).tolist(),
        "random_per_index": randoms.nanmean(dim=0).tolist(),
        "images": int(proposals.isfinite().any(dim=1).sum()),
    }
