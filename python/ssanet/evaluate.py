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
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import metrics, plots
from .checkpoint import load_checkpoint
from .data import DATASETS, build_dataset, paper_transform
from .data.transforms import Rotate, config_transform, reduced_input
from .distributed import Distributed, all_gather

__all__ = [
    "DEFAULT_ROTATION_ANGLES",
    "RESULTS_FILE",
    "ablation_table",
    "evaluate_checkpoint",
    "evaluate_model",
    "method_label",
]

#: An evaluation's results in its output folder.
RESULTS_FILE = "results.json"
# Table 2 of the paper: 300x300 inside 448x448; other input sizes keep the ratio.
REDUCED_RATIO = 300 / 448
#: Table 1's angles are not given in the paper; 0 is the "original input" column.
DEFAULT_ROTATION_ANGLES = (0.0, 15.0, 30.0, 45.0, 90.0, 180.0)


def _protocol_variants(angles: Sequence[float], reduced_size: int, image_size: int) -> dict:
    """{name: batch transform} of the protocols: the original input (None), each nonzero
    rotation (Table 1) and the reduced input (Table 2)."""
    variants = {"original": None}
    for angle in angles:
        if float(angle) != 0.0:  # angle 0 is the original input
            variants[f"rotation {float(angle)}"] = Rotate(angle)
    variants["reduced"] = reduced_input(reduced_size, image_size)
    return variants


def _collect(model, batch, images, variants: dict, collected: dict) -> None:
    """One batch through the model under every variant; appends to `collected`'s lists."""
    collected["labels"].append(batch["label"].reshape(-1))
    for name, transform in variants.items():
        output = model(images if transform is None else transform(images))
        collected["logits"][name].append(output.logits.float().cpu())
        if name != "original":
            continue
        for head, values in collected["heads"].items():
            value = getattr(output, f"{head}_logits")
            if value is not None:
                values.append(value.float().cpu())
        if output.part_boxes is not None and "keypoints" in batch:
            collected["distances"].append(
                metrics.proposal_keypoint_distance(
                    output.part_boxes.float().cpu(), batch["keypoints"], batch["keypoints_visible"]
                )
            )


def _keypoint_summary(distances: list[torch.Tensor], image_size: int) -> dict | None:
    """Fig. 4: the mean distance per proposal index over the images (None without data)."""
    if not distances:
        return None
    per_image = torch.cat(distances)  # [N, K]
    per_proposal = per_image.nanmean(dim=0)
    return {
        "per_proposal": per_proposal.tolist(),
        "mean": per_image.nanmean().item(),
        "per_proposal_relative": (per_proposal / image_size).tolist(),
        "unit": f"pixels of the {image_size}x{image_size} input",
        "images": int(per_image.isfinite().any(dim=1).sum()),
    }


def _protocol_results(
    collected: dict, angles: Sequence[float], reduced_size: int, image_size: int
) -> dict[str, Any]:
    """evaluate_model's results from the logits `collected` over the test set."""
    if not collected["labels"]:
        raise ValueError("the test set is empty")
    all_labels = torch.cat(collected["labels"])
    results = {
        name: metrics.classification_metrics(torch.cat(values), all_labels)
        for name, values in collected["logits"].items()
    }
    rotation = {0.0: results["original"]} if any(float(a) == 0.0 for a in angles) else {}
    for angle in angles:
        if float(angle) != 0.0:
            rotation[float(angle)] = results[f"rotation {float(angle)}"]
    return {
        "accuracy": results["original"],
        "heads": {
            head: metrics.classification_metrics(torch.cat(values), all_labels)
            for head, values in collected["heads"].items()
            if values
        },
        "rotation": {str(angle): value for angle, value in sorted(rotation.items())},
        "reduced_input": {
            "original": results["original"],
            "reduced": results["reduced"],
            "size": reduced_size,
            "canvas": image_size,
        },
        "keypoint_distance": _keypoint_summary(collected["distances"], image_size),
    }


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    image_size: int,
    angles: Sequence[float] = DEFAULT_ROTATION_ANGLES,
    reduced_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """All protocols of one model over ``loader`` (samples of :mod:`ssanet.data`, already in
    the test transform; with ``"keypoints"`` for Fig. 4). The one implementation of the
    paper's accuracy, Table 1 (each image batch rotated counter-clockwise about its centre by
    each of ``angles``, the corners filled with 0, the mean colour of normalized images) and
    Table 2 (resized to ``reduced_size``, default ``300/448`` of ``image_size``, and padded,
    centred, to ``image_size``) protocols.

    ``model(images)`` returns an :class:`ssanet.SSANetOutput` (or anything with its
    ``logits``, ``dsm_logits``, ``op_logits`` and ``part_boxes`` fields).

    Returns a dict with ``accuracy`` (metrics of the final logits), ``heads`` (top-1 etc. of
    the DSM and OP logits where the model has them), ``rotation`` ({angle: metrics}),
    ``reduced_input`` ({"original", "reduced", "size", "canvas"}) and ``keypoint_distance``
    (per proposal index, pixels of the model input; None without proposals or keypoints).
    """
    reduced_size = reduced_size or round(REDUCED_RATIO * image_size)
    variants = _protocol_variants(angles, reduced_size, image_size)
    collected: dict[str, Any] = {
        "logits": {name: [] for name in variants},
        "heads": {"dsm": [], "op": []},
        "labels": [],
        "distances": [],
    }
    was_training = model.training
    model.eval()
    iterable = loader
    if progress:
        from tqdm import tqdm

        iterable = tqdm(loader, desc="evaluation", leave=False, dynamic_ncols=True)
    try:
        for batch in iterable:
            _collect(model, batch, batch["image"].to(device), variants, collected)
    finally:
        model.train(was_training)
    return _protocol_results(collected, angles, reduced_size, image_size)


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


def _report_sections(results: dict) -> list[str]:
    """The Markdown of one evaluation: accuracy, Tables 1 and 2, Fig. 4 where measured."""
    accuracy, reduced = results["accuracy"], results["reduced_input"]
    sections = [
        f"# Evaluation of {results['checkpoint']}",
        f"{results['label']} on {results['dataset']} (test split, {accuracy['num_samples']} "
        f"images, {results['image_size']}x{results['image_size']} input)",
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
    distance = results["keypoint_distance"]
    if distance is not None:
        pairs = zip(distance["per_proposal"], distance["per_proposal_relative"], strict=True)
        sections += [
            f"## Fig. 4: proposal centre to nearest keypoint ({distance['unit']})",
            _table(
                ["proposal", "mean distance", "relative to the input side"],
                [[index + 1, value, relative] for index, (value, relative) in enumerate(pairs)],
            ),
        ]
    return sections


def _report_plots(results: dict, out_dir: Path) -> dict[str, str]:
    """The PNG plots of one evaluation; returns {name: path}."""
    label, dataset, reduced = results["label"], results["dataset"], results["reduced_input"]
    files = {
        "rotation_plot": out_dir / "rotation.png",
        "reduced_input_plot": out_dir / "reduced_input.png",
    }
    plots.plot_rotation_robustness(
        {label: {float(angle): value["top1"] for angle, value in results["rotation"].items()}},
        files["rotation_plot"],
        title=f"Rotation robustness ({dataset})",
    )
    plots.plot_accuracy_bars(
        {
            f"original {reduced['canvas']}": reduced["original"]["top1"],
            f"{reduced['size']} in {reduced['canvas']}": reduced["reduced"]["top1"],
        },
        files["reduced_input_plot"],
        title=f"Reduced input ({dataset})",
    )
    if results["keypoint_distance"] is not None:
        files["keypoint_distance_plot"] = out_dir / "keypoint_distance.png"
        plots.plot_keypoint_distance(
            {label: results["keypoint_distance"]["per_proposal"]}, files["keypoint_distance_plot"]
        )
    return {name: str(path) for name, path in files.items()}


def _write_report(results: dict, out_dir: Path) -> dict[str, str]:
    """``tables.md`` and the PNG plots of one evaluation; returns {name: path}."""
    files = _report_plots(results, out_dir)
    tables = out_dir / "tables.md"
    tables.write_text("\n\n".join(_report_sections(results)) + "\n")
    files["tables"] = str(tables)
    return files


def _test_loader(
    loaded, checkpoint: Path, dataset: str, data_root, batch_size: int, workers: int
) -> DataLoader:
    """The test split in the run's test transform (the paper's preset of the dataset
    otherwise), with keypoints where the data and the model have them (Fig. 4)."""
    if "transform" in loaded.extra:
        transform = config_transform(loaded.extra["transform"], train=False)
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
    return DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=workers)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = None,
    angles: Sequence[float] = DEFAULT_ROTATION_ANGLES,
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
    if not Path(data_root).is_dir():
        raise FileNotFoundError(f"data folder {data_root} does not exist")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_checkpoint(checkpoint, map_location=device)
    dataset = dataset or loaded.extra.get("dataset")
    if dataset is None:
        raise ValueError(
            f"{checkpoint} does not say which dataset it was trained on: name one of "
            f"{', '.join(DATASETS)} (ssanet eval --dataset, or dataset= in Python)"
        )
    loader = _test_loader(loaded, checkpoint, dataset, data_root, batch_size, workers)
    model_config = loaded.model.config
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


def _ablation_entry(run: Path, data_root, evaluate_options: dict) -> tuple[Path, dict]:
    """(path, results) of a run's evaluation; evaluated first when missing and `data_root`
    is given."""
    try:
        path = _find_results(run)
    except FileNotFoundError:
        if data_root is None:
            raise
        evaluate_checkpoint(run / "best.pt", data_root, run / "eval", **evaluate_options)
        path = run / "eval" / RESULTS_FILE
    return path, json.loads(path.read_text())


def _method_names(rows: list[dict]) -> list[str]:
    """The rows' method labels; runs of the same method (e.g. seeds) are told apart by their
    folder."""
    labels = [row["method"] for row in rows]
    return [
        label
        if labels.count(label) == 1
        else f"{label} [{Path(row['results']).parent.parent.name}]"
        for label, row in zip(labels, rows, strict=True)
    ]


def _compare_keypoint_distances(
    names: list[str], results: list[dict], out_dir: Path, table: dict
) -> None:
    """Fig. 4 across the runs that measured it, when there are two or more: the plot, and the
    distances in `table`."""
    distances = {
        name: result["keypoint_distance"]["per_proposal"]
        for name, result in zip(names, results, strict=True)
        if result.get("keypoint_distance")
    }
    if len(distances) >= 2:
        plots.plot_keypoint_distance(distances, out_dir / "keypoint_distance.png")
        table["files"]["keypoint_distance_plot"] = str(out_dir / "keypoint_distance.png")
        table["keypoint_distance"] = distances


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
    entries = [_ablation_entry(Path(run), data_root, evaluate_options) for run in runs]
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
    names = _method_names(rows)
    plots.plot_accuracy_bars(
        {name: row["top1"] for name, row in zip(names, rows, strict=True)},
        out_dir / "ablation.png",
        title=f"Ablation ({', '.join(datasets)})",
    )
    table = {"datasets": datasets, "rows": rows, "files": {"plot": str(out_dir / "ablation.png")}}
    _compare_keypoint_distances(names, [result for _, result in entries], out_dir, table)
    markdown = _table(
        ["method", "top-1", "top-5", "mean per-class"],
        [
            [name, row["top1"], row["top5"], row["mean_class_accuracy"]]
            for name, row in zip(names, rows, strict=True)
        ],
    )
    title = f"# Table 3: ablation ({', '.join(datasets)}, test split)"
    (out_dir / "ablation.md").write_text(f"{title}\n\n{markdown}\n")
    table["files"]["tables"] = str(out_dir / "ablation.md")
    (out_dir / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def _merge_shards(parts: list[dict]) -> dict:
    """Every process's validation outputs in sample order; the DistributedSampler repeats
    samples to even out the shards, so each index is kept once."""
    index = torch.cat([part["index"] for part in parts])
    order = torch.argsort(index, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = index[order][1:] != index[order][:-1]
    order = order[keep]
    return {
        key: torch.cat([part[key] for part in parts])[order]
        for key in parts[0]
        if parts[0][key] is not None
    }


@torch.no_grad()
def validation_metrics(
    model: torch.nn.Module,
    loader: DataLoader,
    context: Distributed,
    autocast: Callable[[], AbstractContextManager],
    progress_bar: Callable[[Iterable, str], Iterable] = lambda iterable, _: iterable,
) -> dict[str, float]:
    """The validation entries of a training run's log row (``val_top1``, ``val_top5``,
    ``val_mean_class_accuracy`` and the DSM and OP heads' ``val_top1_dsm`` / ``val_top1_op``)
    over the shards of `loader` that the processes of `context` hold, under `autocast()`."""
    model.eval()
    outputs: dict[str, list] = {"index": [], "label": [], "logits": [], "dsm": [], "op": []}
    device = next(model.parameters()).device
    for batch in progress_bar(loader, "validation"):
        images = batch["image"].to(device, non_blocking=True)
        with autocast():
            output = model(images)
        outputs["index"].append(batch["index"])
        outputs["label"].append(batch["label"])
        heads = {"logits": output.logits, "dsm": output.dsm_logits, "op": output.op_logits}
        for key, value in heads.items():
            if value is not None:
                outputs[key].append(value.float().cpu())
    local = {key: torch.cat(values) if values else None for key, values in outputs.items()}
    merged = _merge_shards(all_gather(context, local))
    result = metrics.classification_metrics(merged["logits"], merged["label"])
    row = {
        "val_top1": result["top1"],
        "val_top5": result["top5"],
        "val_mean_class_accuracy": result["mean_class_accuracy"],
    }
    for head in ("dsm", "op"):
        if head in merged:
            row[f"val_top1_{head}"] = metrics.topk_accuracy(merged[head], merged["label"])
    return row
