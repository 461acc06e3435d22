"""The study's report: ``ablation.md`` and ``ablation.json`` (Table 3, Tables 1 and 2, Fig. 4),
the plots (:mod:`ssanet.plots`), each run's ``runs/<name>/`` and ``predictions.png``, rewritten
from the finished jobs' records (``job.json``) after every run."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from .. import plots
from .planning import FLOOR_FILE, JOB_FILE, ROWS, Job

__all__ = ["prediction_grid", "report"]


def _threads_text(records: dict[str, dict]) -> str:
    """The torch threads the runs used, as the report's header says them."""
    counts = sorted({record["threads"] for record in records.values() if "threads" in record})
    if not counts:
        return "the torch threads not recorded"
    return " or ".join(str(count) for count in counts) + " torch thread(s) per run"


def _method_label(run: dict) -> str:
    """A run's Table 3 label; the full model's other crop mode names its override."""
    label = run["label"]
    if run["row"] == "full_other_features":
        label += f" ({run['overrides'][0].removeprefix('model.')})"
    return label


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = _mean_std(values)
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def report(work_dir: Path, out_dir: Path, jobs: list[Job], base: dict) -> dict:
    """Writes the report of the finished ``jobs`` (see the module docstring); returns it."""
    records = {job.name: json.loads((work_dir / job.name / JOB_FILE).read_text()) for job in jobs}
    for name, record in records.items():
        target = out_dir / "runs" / name
        target.mkdir(parents=True, exist_ok=True)
        (target / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for file in ("log.csv", "training_curves.png", "config.json"):
            if (work_dir / name / file).is_file():
                shutil.copyfile(work_dir / name / file, target / file)
    by_row: dict[str, list[dict]] = {}
    for record in records.values():
        by_row.setdefault(record["row"], []).append(record)
    rows = []
    for row, _ in ROWS:
        if row not in by_row:
            continue
        runs = sorted(by_row[row], key=lambda record: record["seed"])
        top1 = [run["accuracy"]["top1"] for run in runs]
        label = _method_label(runs[0])
        rows.append(
            {
                "row": row,
                "method": label,
                "seeds": [run["seed"] for run in runs],
                "top1": top1,
                "top1_mean": _mean_std(top1)[0],
                "top1_std": _mean_std(top1)[1],
                "top5": [run["accuracy"]["top5"] for run in runs],
                "train_seconds": [run["train_seconds"] for run in runs],
                # Records written before CPU time was measured have none.
                "train_cpu_seconds": [run.get("train_cpu_seconds") for run in runs],
                "best_epoch": [run["best_epoch"] for run in runs],
                "epochs": runs[0]["epochs"],
                "heads": {
                    head: [run["heads"][head]["top1"] for run in runs] for head in runs[0]["heads"]
                },
            }
        )
    floor_path = work_dir / FLOOR_FILE
    floor = json.loads(floor_path.read_text()) if floor_path.is_file() else None
    result = {"rows": rows, "runs": records, "base_config": base, "localization_floor": floor}
    lines = [
        "# Ablation (Table 3), rotation (Table 1), reduced input (Table 2), localization (Fig. 4)",
        "",
        "Written by `ssanet ablation --train` (see `ssanet.ablation`); test split, each run's "
        "`best.pt` as its validation split selected it. Top-1 in %, mean ± sample standard "
        "deviation over seeds; training time per run in seconds, with "
        f"{_threads_text(records)} (how many runs shared the machine is the study's to "
        "say: it changes the times), as wall-clock time and as the training process's CPU "
        "time (all its threads; with one thread about the time on a core of its own; '-' "
        "where not measured: a resumed run or an older record).",
        "",
        "## Table 3",
        "",
        "| method | seeds | top-1 (%) | per seed | DSM / OP head top-1 | best epoch / epochs "
        "| training time per run (s) | training CPU time per run (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        heads = ", ".join(f"{head} {_pm(values)}" for head, values in row["heads"].items())
        lines.append(
            f"| {row['method']} | {len(row['seeds'])} | {_pm(row['top1'])} | "
            + " / ".join(f"{100 * value:.1f}" for value in row["top1"])
            + f" | {heads or '-'} | "
            + " / ".join(str(epoch) for epoch in row["best_epoch"])
            + f" of {row['epochs']} | "
            + " / ".join(f"{seconds:.0f}" for seconds in row["train_seconds"])
            + " | "
            + " / ".join("-" if cpu is None else f"{cpu:.0f}" for cpu in row["train_cpu_seconds"])
            + " |"
        )
    lines += _robustness_sections(by_row)
    lines += _localization_section(by_row, floor)
    (out_dir / "ablation.md").write_text("\n".join(lines) + "\n")
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    _plots(rows, by_row, out_dir, floor)
    return result


def _robustness_sections(by_row: dict[str, list[dict]]) -> list[str]:
    compared = [row for row in ("plain", "full") if row in by_row]
    if not compared:
        return []
    label = {row: by_row[row][0]["label"] for row in compared}
    angles = list(by_row[compared[0]][0]["rotation"])
    lines = [
        "",
        "## Table 1: rotated test images (top-1 %, no rotation in training)",
        "",
        "| method | " + " | ".join(f"{float(a):g}°" for a in angles) + " | mean drop at 15-180° |",
        "|---|" + "---|" * (len(angles) + 1),
    ]
    for row in compared:
        runs = by_row[row]
        cells = [_pm([run["rotation"][a]["top1"] for run in runs]) for a in angles]
        drops = [
            sum(run["rotation"][angles[0]]["top1"] - run["rotation"][a]["top1"] for a in angles[1:])
            / max(1, len(angles) - 1)
            for run in runs
        ]
        lines.append(f"| {label[row]} | " + " | ".join(cells) + f" | {_pm(drops)} |")
    reduced = by_row[compared[0]][0]["reduced_input"]
    lines += [
        "",
        f"## Table 2: reduced input ({reduced['size']}x{reduced['size']} padded to "
        f"{reduced['canvas']}x{reduced['canvas']}; top-1 %)",
        "",
        "| method | original | reduced | drop |",
        "|---|---|---|---|",
    ]
    for row in compared:
        runs = by_row[row]
        original = [run["reduced_input"]["original"]["top1"] for run in runs]
        small = [run["reduced_input"]["reduced"]["top1"] for run in runs]
        drop = [a - b for a, b in zip(original, small, strict=True)]
        lines.append(f"| {label[row]} | {_pm(original)} | {_pm(small)} | {_pm(drop)} |")
    return lines


def _localization_section(by_row: dict[str, list[dict]], floor: dict | None = None) -> list[str]:
    located = [
        (row, run)
        for row, _ in ROWS
        for run in sorted(by_row.get(row, []), key=lambda run: run["seed"])
        if run.get("localization")
    ]
    if not located:
        return []
    parts = located[0][1]["localization"]["parts"]
    lines = [
        "",
        f"## Fig. 4: proposal centre to the nearest discriminative keypoint ({', '.join(parts)})",
        "",
        f"Mean over test images and proposals, in {located[0][1]['localization']['unit']}; "
        "random: boxes of the proposals' sizes placed uniformly in the image (10 draws each).",
        "",
        "| run | proposals | random boxes | ratio | per proposal index |",
        "|---|---|---|---|---|",
    ]
    for _, run in located:
        value = run["localization"]
        per_index = " / ".join(f"{d:.1f}" for d in value["proposal_per_index"])
        lines.append(
            f"| {_method_label(run)}, seed {run['seed']} | {value['proposal_mean']:.2f} | "
            f"{value['random_mean']:.2f} | {value['ratio']:.2f} | {per_index} |"
        )
    if floor is not None:
        per_index = " / ".join(f"{d:.1f}" for d in floor["proposal_per_index"])
        lines += [
            f"| ideal proposal head (the anchors' floor) | {floor['proposal_mean']:.2f} | "
            f"{floor['random_mean']:.2f} | {floor['ratio']:.2f} | {per_index} |",
            "",
            "The last row is no model: a proposal head that scores every anchor by minus its "
            "distance to the nearest discriminative keypoint, its top K chosen by the model's "
            "NMS (`ssanet.metrics.localization_floor`): about the lowest ratio these anchors, "
            "K and NMS threshold allow a learned head.",
        ]
    return lines


def _plots(
    rows: list[dict], by_row: dict[str, list[dict]], out_dir: Path, floor: dict | None
) -> None:
    if rows:
        plots.plot_ablation_rows(rows, out_dir / "ablation.png")
    compared = {row: by_row[row] for row in ("plain", "full") if row in by_row}
    if compared:
        plots.plot_rotation_runs(compared, out_dir / "rotation.png")
        plots.plot_reduced_input_runs(compared, out_dir / "reduced_input.png")
    located = [run for row, _ in ROWS for run in by_row.get(row, []) if run.get("localization")]
    if located:
        plots.plot_localization_runs(located, out_dir / "localization.png", floor)


def prediction_grid(
    work_dir: Path, data_root: str | os.PathLike, path: Path, count: int = 6
) -> None:
    """``count`` test images of different classes, each twice, upscaled and captioned
    (:func:`ssanet.predict.draw_parts`): the plain backbone's prediction (seed 0), then
    SSANet's with its K part boxes, numbered and scored; rows of two such pairs."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..data import config_test_split
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ..predict import draw_parts, picture_grid, write_picture

    plain = load_checkpoint(work_dir / "plain-s0" / "best.pt")
    full = load_checkpoint(work_dir / "full-s0" / "best.pt")
    dataset = config_test_split(full.extra, data_root)
    classes = len(dataset.classes)
    labels = list(range(0, classes, max(1, classes // count)))[:count]
    picked = [dataset.targets.index(label) for label in labels]
    images = torch.stack([dataset[index]["image"] for index in picked])
    with torch.no_grad():
        plain_predicted = plain.model(images).logits.argmax(dim=1).tolist()
        output = full.model(images)
    full_predicted = output.logits.argmax(dim=1).tolist()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    pictures = []
    for column, label in enumerate(labels):
        truth = f"true: {dataset.classes[label]}"
        for name, predicted in (("plain", plain_predicted), ("SSANet", full_predicted)):
            verdict = "right" if predicted[column] == label else "wrong"
            caption = [f"{name}: {dataset.classes[predicted[column]]} ({verdict})", truth]
            boxes = scores = None
            if name == "SSANet":
                boxes, scores = output.part_boxes[column], output.part_scores[column]
            pictures.append(draw_parts(pixels[column], boxes, part_scores=scores, caption=caption))
    write_picture(picture_grid(pictures, columns=4), path)
