"""The paper's metrics on tensors.

- Accuracy: top-1, top-5 and mean per-class accuracy (:func:`classification_metrics`).
- Fig. 4: the distance from each of the K proposals' centres to the nearest visible ground-truth
  keypoint, averaged over the images per proposal index (:func:`proposal_keypoint_distance`).

The protocols that produce the logits (Tables 1 and 2: rotated and reduced test images) are
:func:`ssanet.evaluate.evaluate_model`; the plots are in :mod:`ssanet.plots`.
"""

from __future__ import annotations

import torch

__all__ = [
    "classification_metrics",
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
