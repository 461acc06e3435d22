"""Evaluation metrics and protocols of the paper, and the plots of their results.

- Accuracy: top-1, top-5 and mean per-class accuracy (:func:`classification_metrics`).
- Table 1, rotation robustness: the test images rotated by given angles
  (:func:`rotation_robustness`); the paper does not state its angles, so they are an argument.
- Table 2, reduced input: each test image resized to 300x300 and padded to 448x448
  (:func:`reduced_input_robustness`).
- Fig. 4: the distance from each of the K proposals' centres to the nearest visible ground-truth
  keypoint, averaged over the images per proposal index (:func:`proposal_keypoint_distance`).
- Plots (matplotlib, Agg, PNG files): training curves, accuracy bars (Tables 2 and 3),
  accuracy against rotation angle (Table 1), distance per proposal (Fig. 4).

The protocols take ``predict``, any callable from a normalized image batch ``[B, 3, H, W]`` to
logits ``[B, C]`` (for instance ``lambda images: model(images).logits``), and a loader of
:mod:`ssanet.data` samples (dicts with ``"image"`` and ``"label"``) or ``(images, labels)`` pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

from ssanet.data.transforms import Rotate, reduced_input

# Table 1's angles are not given in the paper; 0 is the "original input" column.
DEFAULT_ROTATION_ANGLES = (0.0, 15.0, 30.0, 45.0, 90.0, 180.0)


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


@torch.no_grad()
def collect_logits(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``predict`` over ``loader``; return all logits ``[N, C]`` and labels ``[N]`` (on CPU).

    ``batch_transform`` changes each image batch (on ``device``) before ``predict`` sees it.
    """
    all_logits, all_labels = [], []
    for batch in loader:
        images, labels = (batch["image"], batch["label"]) if isinstance(batch, Mapping) else batch
        images = images.to(device)
        if batch_transform is not None:
            images = batch_transform(images)
        all_logits.append(predict(images).float().cpu())
        all_labels.append(torch.as_tensor(labels).reshape(-1).cpu())
    if not all_logits:
        raise ValueError("loader yielded no batch")
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """:func:`classification_metrics` of ``predict`` over ``loader``."""
    return classification_metrics(*collect_logits(predict, loader, batch_transform, device))


def rotation_robustness(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    angles: Sequence[float] = DEFAULT_ROTATION_ANGLES,
    device: torch.device | str = "cpu",
    fill: float = 0.0,
) -> dict[float, dict[str, float]]:
    """Table 1: metrics of ``predict`` on the test images rotated by each of ``angles``.

    Each image batch (already transformed for testing) is rotated counter-clockwise about its
    centre, keeping its size; ``fill`` (0: the mean colour of normalized images) covers the
    corners. The model never saw rotations in training (the paper trains without them).
    """
    return {
        float(angle): evaluate(predict, loader, Rotate(angle, fill=fill), device)
        for angle in angles
    }


def reduced_input_robustness(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    size: int = 300,
    canvas: int = 448,
    device: torch.device | str = "cpu",
    fill: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Table 2: ``{"original": metrics, "reduced": metrics}``, the latter with each test batch
    resized to ``size`` x ``size`` and padded, centred, to ``canvas`` x ``canvas``."""
    return {
        "original": evaluate(predict, loader, None, device),
        "reduced": evaluate(predict, loader, reduced_input(size, canvas, fill), device),
    }


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


# Plots --------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.0):
    # A Figure with its own Agg canvas: no pyplot, no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "Training"
) -> Path:
    """Curves per epoch: keys containing ``"loss"`` on the left axis, the others (accuracies)
    on the right. ``history`` maps a name to one value per epoch (``"epoch"`` is the x axis if
    present). Returns the PNG's path."""
    figure = _figure(7.0, 4.0)
    loss_axis = figure.add_subplot()
    accuracy_axis = loss_axis.twinx()
    epochs = list(history.get("epoch", []))
    for name, values in history.items():
        if name == "epoch":
            continue
        values = list(values)
        x = epochs if len(epochs) == len(values) else list(range(1, len(values) + 1))
        axis, style = (loss_axis, "-") if "loss" in name else (accuracy_axis, "--")
        axis.plot(x, values, style, marker="o", markersize=3, label=name)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    accuracy_axis.set_ylabel("accuracy")
    handles = loss_axis.get_legend_handles_labels()
    more = accuracy_axis.get_legend_handles_labels()
    loss_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="best", fontsize="small")
    loss_axis.set_title(title)
    return _save(figure, path)


def plot_accuracy_bars(
    values: Mapping[str, float],
    path: str | os.PathLike,
    title: str = "Top-1 accuracy",
    ylabel: str = "top-1 accuracy",
) -> Path:
    """One labelled bar per entry (the ablation runs of Table 3, the inputs of Table 2)."""
    figure = _figure(max(4.0, 1.0 + 1.1 * len(values)), 4.0)
    axis = figure.add_subplot()
    names = list(values)
    bars = axis.bar(range(len(names)), [values[name] for name in names], color="tab:blue")
    axis.bar_label(bars, fmt="%.3f", fontsize="small")
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    return _save(figure, path)


def plot_rotation_robustness(
    results: Mapping[str, Mapping[float, float]],
    path: str | os.PathLike,
    title: str = "Rotation robustness",
) -> Path:
    """Accuracy against rotation angle, one line per method: ``{method: {angle: accuracy}}``
    (for instance ``{"SSANet": {a: r["top1"] for a, r in rotation_robustness(...).items()}}``)."""
    figure = _figure()
    axis = figure.add_subplot()
    for method, by_angle in results.items():
        angles = sorted(by_angle)
        axis.plot(angles, [by_angle[angle] for angle in angles], marker="o", label=method)
    axis.set_xlabel("rotation (degrees)")
    axis.set_ylabel("top-1 accuracy")
    axis.set_title(title)
    axis.legend(loc="best")
    return _save(figure, path)


def plot_keypoint_distance(
    results: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "Proposal centre to nearest keypoint",
    unit: str = "pixels",
) -> Path:
    """Fig. 4: grouped bars of the mean distance per proposal index, one group member per
    method: ``{method: [K distances]}`` (from :func:`mean_proposal_keypoint_distance`)."""
    figure = _figure()
    axis = figure.add_subplot()
    methods = list(results)
    width = 0.8 / max(1, len(methods))
    for offset, method in enumerate(methods):
        distances = [float(value) for value in results[method]]
        positions = [k + (offset - (len(methods) - 1) / 2) * width for k in range(len(distances))]
        axis.bar(positions, distances, width=width, label=method)
    num_proposals = max((len(results[method]) for method in methods), default=0)
    axis.set_xticks(range(num_proposals), [f"proposal {k + 1}" for k in range(num_proposals)])
    axis.set_ylabel(f"mean distance ({unit})")
    axis.set_title(title)
    axis.legend(loc="best")
    return _save(figure, path)
