"""Evaluating a trained SSANet: the paper's accuracy, robustness and localization protocols.

- :func:`evaluate_checkpoint`: top-1, top-5 and mean per-class accuracy on the test split (and
  the DSM and OP heads' own top-1), the rotation protocol (Table 1), the reduced-input protocol
  (Table 2: resize to 300x300, pad to 448x448, scaled to the model's input size), and on
  CUB-format data the distance from the proposals' centres to the nearest keypoint (Fig. 4).
  Writes ``results.json``, ``tables.md`` and PNG plots.
- :func:`ablation_table`: Table 3 from several runs' results, as JSON, Markdown and a bar plot,
  with Fig. 4 compared across the runs that have proposals.

All protocols run in one pass over the test set: each batch goes through the model as it is,
rotated by each angle, and reduced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import metrics
from .checkpoint import load_checkpoint
from .data import build_dataset, eval_transform, paper_transform
from .data.transforms import Rotate, reduced_input

__all__ = [
    "RESULTS_FILE",
    "ablation_table",
    "evaluate_checkpoint",
    "evaluate_model",
    "method_label",
]

RESULTS_FILE = "results.json"
# Table 2 of the paper: 300x300 inside 448x448; other input sizes keep the ratio.
REDUCED_RATIO = 300 / 448


def _as_size(value):
    return tuple(value) if isinstance(value, list) else value


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    image_size: int,
    angles: Sequence[float] = metrics.DEFAULT_ROTATION_ANGLES,
    reduced_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """All protocols of one model over ``loader`` (samples of :mod:`ssanet.data`, already in
    the test transform; with ``"keypoints"`` for Fig. 4).

    Returns a dict with ``accuracy`` (metrics of the final logits), ``heads`` (top-1 etc. of
    the DSM and OP logits where the model has them), ``rotation`` ({angle: metrics}),
    ``reduced_input`` ({"original", "reduced", "size", "canvas"}) and ``keypoint_distance``
    (per proposal index, pixels of the model input; None without proposals or keypoints).
    """
    reduced_size = reduced_size or round(REDUCED_RATIO * image_size)
    variants = {"original": None}
    for angle in angles:
        if float(angle) != 0.0:  # angle 0 is the original input
            variants[f"rotation {float(angle)}"] = Rotate(angle)
    variants["reduced"] = reduced_input(reduced_size, image_size)

    logits: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    head_logits: dict[str, list[torch.Tensor]] = {"dsm": [], "op": []}
    labels, distances = [], []
    was_training = model.training
    model.eval()
    iterable = loader
    if progress:
        from tqdm import tqdm

        iterable = tqdm(loader, desc="evaluation", leave=False, dynamic_ncols=True)
    try:
        for batch in iterable:
            images = batch["image"].to(device)
            labels.append(batch["label"].reshape(-1))
            for name, transform in variants.items():
                output = model(images if transform is None else transform(images))
                logits[name].append(output.logits.float().cpu())
                if name != "original":
                    continue
                for head in head_logits:
                    value = getattr(output, f"{head}_logits")
                    if value is not None:
                        head_logits[head].append(value.float().cpu())
                if output.part_boxes is not None and "keypoints" in batch:
                    distances.append(
                        metrics.proposal_keypoint_distance(
                            output.part_boxes.float().cpu(),
                            batch["keypoints"],
                            batch["keypoints_visible"],
                        )
                    )
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the test set is empty")
    all_labels = torch.cat(labels)
    results = {
        name: metrics.classification_metrics(torch.cat(values), all_labels)
        for name, values in logits.items()
    }
    rotation = {0.0: results["original"]} if any(float(a) == 0.0 for a in angles) else {}
    for angle in angles:
        if float(angle) != 0.0:
            rotation[float(angle)] = results[f"rotation {float(angle)}"]
    keypoint_distance = None
    if distances:
        per_image = torch.cat(distances)  # [N, K]
        per_proposal = per_image.nanmean(dim=0)
        keypoint_distance = {
            "per_proposal": per_proposal.tolist(),
            "mean": per_image.nanmean().item(),
            "per_proposal_relative": (per_proposal / image_size).tolist(),
            "unit": f"pixels of the {image_size}x{image_size} input",
            "images": int(per_image.isfinite().any(dim=1).sum()),
        }
    return {
        "accuracy": results["original"],
        "heads": {
            head: metrics.classification_metrics(torch.cat(values), all_labels)
            for head, values in head_logits.items()
            if values
        },
        "rotation": {str(angle): value for angle, value in sorted(rotation.items())},
        "reduced_input": {
            "original": results["original"],
            "reduced": results["reduced"],
            "size": reduced_size,
            "canvas": image_size,
        },
        "keypoint_distance": keypoint_distance,
    }


def method_label(model_config: dict, train_config: dict | None) -> str:
    """Table 3's name of a run: ``ResNet-50``, ``ResNet-50(P) + MAC + OP + DSM``, ..."""
    backbone = model_config.get("backbone", "resnet50")
    name = backbone.replace("resnet", "ResNet-") if backbone.startswith("resnet") else backbone
    if not model_config.get("proposals", True):
        return name
    name += "(P)"
    mac_lambda = ((train_config or {}).get("loss") or {}).get("mac_lambda", 0.5)
    if mac_lambda:
        name += " + MAC"
    if model_config.get("op", "oriented") != "none":
        op = model_config.get("op", "oriented")
        name += " + OP" if op == "oriented" else f" + {op.upper()}"
    if model_config.get("dsm", "align") != "none":
        dsm = model_config.get("dsm", "align")
        name += " + DSM" if dsm == "align" else f" + DSM({dsm})"
    return name


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_report(results: dict, out_dir: Path) -> dict[str, str]:
    """``tables.md`` and the PNG plots of one evaluation; returns {name: path}."""
    label = results["label"]
    files = {}
    accuracy = results["accuracy"]
    sections = [
        f"# Evaluation of {results['checkpoint']}",
        f"{label} on {results['dataset']} (test split, {accuracy['num_samples']} images, "
        f"{results['image_size']}x{results['image_size']} input)",
        "## Accuracy",
        _table(
            ["logits", "top-1", "top-5", "mean per-class"],
            [["final", accuracy["top1"], accuracy["top5"], accuracy["mean_class_accuracy"]]]
            + [
                [head, value["top1"], value["top5"], value["mean_class_accuracy"]]
                for head, value in results["heads"].items()
            ],
        ),
        "## Table 1: rotation robustness (top-1)",
        _table(
            ["rotation (degrees)", "top-1", "top-5"],
            [[angle, value["top1"], value["top5"]] for angle, value in results["rotation"].items()],
        ),
    ]
    reduced = results["reduced_input"]
    sections += [
        f"## Table 2: reduced input ({reduced['size']}x{reduced['size']} padded to "
        f"{reduced['canvas']}x{reduced['canvas']})",
        _table(
            ["input", "top-1", "top-5"],
            [
                ["original", reduced["original"]["top1"], reduced["original"]["top5"]],
                ["reduced", reduced["reduced"]["top1"], reduced["reduced"]["top5"]],
            ],
        ),
    ]
    rotation_plot = out_dir / "rotation.png"
    metrics.plot_rotation_robustness(
        {label: {float(angle): value["top1"] for angle, value in results["rotation"].items()}},
        rotation_plot,
        title=f"Rotation robustness ({results['dataset']})",
    )
    files["rotation_plot"] = str(rotation_plot)
    reduced_plot = out_dir / "reduced_input.png"
    metrics.plot_accuracy_bars(
        {
            f"original {reduced['canvas']}": reduced["original"]["top1"],
            f"{reduced['size']} in {reduced['canvas']}": reduced["reduced"]["top1"],
        },
        reduced_plot,
        title=f"Reduced input ({results['dataset']})",
    )
    files["reduced_input_plot"] = str(reduced_plot)
    distance = results["keypoint_distance"]
    if distance is not None:
        sections += [
            f"## Fig. 4: proposal centre to nearest keypoint ({distance['unit']})",
            _table(
                ["proposal", "mean distance", "relative to the input side"],
                [
                    [index + 1, value, relative]
                    for index, (value, relative) in enumerate(
                        zip(
                            distance["per_proposal"], distance["per_proposal_relative"], strict=True
                        )
                    )
                ],
            ),
        ]
        distance_plot = out_dir / "keypoint_distance.png"
        metrics.plot_keypoint_distance({label: distance["per_proposal"]}, distance_plot)
        files["keypoint_distance_plot"] = str(distance_plot)
    tables = out_dir / "tables.md"
    tables.write_text("\n\n".join(sections) + "\n")
    files["tables"] = str(tables)
    return files


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = None,
    angles: Sequence[float] = metrics.DEFAULT_ROTATION_ANGLES,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a checkpoint (of :func:`ssanet.train.train` or :func:`ssanet.save_checkpoint`)
    on the test split of the data under ``data_root``; writes ``out_dir`` (default: an ``eval``
    folder beside the checkpoint) and returns the results (also in ``results.json``).

    ``dataset``: the dataset's name; default the one the checkpoint was trained on. The test
    transform is the run's (the paper's preset of the dataset otherwise).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_checkpoint(checkpoint, map_location=device)
    dataset = dataset or loaded.extra.get("dataset")
    if dataset is None:
        raise ValueError(f"{checkpoint} does not say its dataset: pass dataset=")
    if "transform" in loaded.extra:
        transform_config = loaded.extra["transform"]
        transform = eval_transform(
            _as_size(transform_config["resize"]), _as_size(transform_config["crop"])
        )
    else:
        transform = paper_transform(dataset, train=False)
    model_config = loaded.model.config
    with_keypoints = dataset in ("cub", "synthetic") and model_config.get("proposals", True)
    test_set = build_dataset(dataset, data_root, False, transform, with_keypoints=with_keypoints)
    if len(test_set.classes) != model_config["num_classes"]:
        raise ValueError(
            f"{checkpoint} has {model_config['num_classes']} classes, the {dataset} data under "
            f"{data_root} has {len(test_set.classes)}"
        )
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)
    results = evaluate_model(
        loaded.model, loader, loaded.image_size, angles, device=device, progress=progress
    )
    train_config = loaded.extra.get("train_config")
    results = {
        "checkpoint": str(checkpoint),
        "data_root": str(data_root),
        "dataset": dataset,
        "label": method_label(model_config, train_config),
        "image_size": loaded.image_size,
        "epoch": loaded.extra.get("epoch"),
        "model_config": model_config,
        "train_config": train_config,
        **results,
    }
    out_dir = Path(out_dir) if out_dir is not None else checkpoint.parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    results["files"] = _write_report(results, out_dir)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    return results


# Table 3 order: plain backbone, proposals, + MAC, + OP, + DSM, + OP + DSM.
def _ablation_rank(result: dict) -> tuple:
    model = result["model_config"]
    mac = ((result.get("train_config") or {}).get("loss") or {}).get("mac_lambda", 0.5) != 0
    has_op = model.get("op", "oriented") != "none"
    has_dsm = model.get("dsm", "align") != "none"
    return (model.get("proposals", True), mac, has_op and has_dsm, has_dsm, has_op)


def _find_results(run: Path) -> Path:
    """``results.json`` of a run folder (its ``eval/``), an eval folder, or the file itself."""
    for candidate in (run, run / RESULTS_FILE, run / "eval" / RESULTS_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no evaluation results for {run}: expected {run / 'eval' / RESULTS_FILE} "
        f"(run `ssanet eval --checkpoint {run / 'best.pt'} --data ROOT` first, or pass --data)"
    )


def ablation_table(
    runs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """Table 3 from several runs: each run folder's ``eval/results.json`` (or a results file);
    with ``data_root``, runs not evaluated yet are evaluated first (their ``best.pt``).

    Writes ``ablation.json``, ``ablation.md``, ``ablation.png`` (top-1 per method) and, when
    two or more runs have proposals and keypoint distances, ``keypoint_distance.png`` (Fig. 4)
    into ``out_dir``; returns the table as a dict.
    """
    if not runs:
        raise ValueError("ablation_table needs at least one run")
    entries = []
    for run in map(Path, runs):
        try:
            path = _find_results(run)
        except FileNotFoundError:
            if data_root is None:
                raise
            checkpoint = run / "best.pt"
            evaluate_checkpoint(checkpoint, data_root, run / "eval", **evaluate_options)
            path = run / "eval" / RESULTS_FILE
        result = json.loads(path.read_text())
        entries.append((path, result))
    entries.sort(key=lambda entry: _ablation_rank(entry[1]))
    rows = [
        {
            "method": result["label"],
            "top1": result["accuracy"]["top1"],
            "top5": result["accuracy"]["top5"],
            "mean_class_accuracy": result["accuracy"]["mean_class_accuracy"],
            "results": str(path),
        }
        for path, result in entries
    ]
    datasets = sorted({result["dataset"] for _, result in entries})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [row["method"] for row in rows]
    # Runs of the same method (e.g. seeds) are told apart by their folder.
    names = [
        label
        if labels.count(label) == 1
        else f"{label} [{Path(row['results']).parent.parent.name}]"
        for label, row in zip(labels, rows, strict=True)
    ]
    metrics.plot_accuracy_bars(
        {name: row["top1"] for name, row in zip(names, rows, strict=True)},
        out_dir / "ablation.png",
        title=f"Ablation ({', '.join(datasets)})",
    )
    table = {"datasets": datasets, "rows": rows, "files": {"plot": str(out_dir / "ablation.png")}}
    distances = {
        name: result["keypoint_distance"]["per_proposal"]
        for name, (_, result) in zip(names, entries, strict=True)
        if result.get("keypoint_distance")
    }
    if len(distances) >= 2:
        metrics.plot_keypoint_distance(distances, out_dir / "keypoint_distance.png")
        table["files"]["keypoint_distance_plot"] = str(out_dir / "keypoint_distance.png")
        table["keypoint_distance"] = distances
    markdown = [
        f"# Table 3: ablation ({', '.join(datasets)}, test split)",
        _table(
            ["method", "top-1", "top-5", "mean per-class"],
            [
                [name, row["top1"], row["top5"], row["mean_class_accuracy"]]
                for name, row in zip(names, rows, strict=True)
            ],
        ),
    ]
    (out_dir / "ablation.md").write_text("\n\n".join(markdown) + "\n")
    table["files"]["tables"] = str(out_dir / "ablation.md")
    (out_dir / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    return table
