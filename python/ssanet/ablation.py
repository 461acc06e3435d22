"""The whole ablation study in one command (``ssanet ablation --train CONFIG``): Table 3, Tables 1
and 2 for the plain backbone and the full SSANet, and Fig. 4's statistic, trained and evaluated
from nothing on one dataset and written, with plots, into one folder.

Rows (:data:`ROWS`, the paper's Table 3 order), each a set of config overrides of the base
config: the plain backbone (``model.proposals=false``, trained with the config's ``plain``
strategy); proposals alone (P: no DSM, no OP, MAC's pair term off: ``mac_lambda=0``); P + MAC;
P + MAC + OP; P + MAC + DSM; the full SSANet; and the full SSANet with the other
``part_features`` mode. The plain backbone and the full model run with ``seeds`` seeds (mean
and standard deviation), the other rows with the first seed. Every SSANet run of seed s starts
from the plain run of seed s (``init_from``, :mod:`ssanet.warm_start`): the paper starts from an
ImageNet backbone; here the plain backbone, trained first on the same training split, plays
its part. All runs share the data, the validation split and the stages' epochs; each is
evaluated once on the test split, with the model its validation selected (``best.pt``).

Runs go to ``work_dir`` (checkpoints are large), as ``<row>-s<seed>/``; a finished run
(``job.json`` written) is not trained again, an interrupted one is resumed, so the command can
be rerun after an interruption. After every finished run the report is rewritten into
``out_dir``: ``ablation.md``, ``ablation.json``, ``ablation.png`` (Table 3), ``rotation.png``
(Table 1), ``reduced_input.png`` (Table 2), ``localization.png`` (Fig. 4), ``predictions.png``
(test images, plain prediction beside SSANet's with its part boxes) and each run's
``runs/<name>/`` (its evaluation, log and timing).

Fig. 4's statistic (:func:`localization`): the mean distance from each proposal's centre to
the nearest visible keypoint of a discriminative part (on the synthetic data the parts whose
look differs between classes: the head, the tail, the wing when the classes vary it), against
the same for random boxes of the same sizes placed uniformly inside the image; and
(:func:`localization_floor`) the same for an ideal proposal head on the config's anchors, about
the lowest value a learned one could reach.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# torch is imported where it is used: ``ssanet --help`` reads this module's options at once.

__all__ = ["ROWS", "Job", "localization", "localization_floor", "plan", "report", "run_study"]

# Table 3's rows: (key, overrides of the base config). "other_features" is filled in by plan().
ROWS: tuple[tuple[str, list[str]], ...] = (
    ("plain", ["model.proposals=false", "strategy=plain"]),
    ("P", ["model.dsm=none", "model.op=none", "loss.mac_lambda=0"]),
    ("P+MAC", ["model.dsm=none", "model.op=none"]),
    ("P+MAC+OP", ["model.dsm=none"]),
    ("P+MAC+DSM", ["model.op=none"]),
    ("full", []),
    ("full_other_features", []),
)
SEEDED_ROWS = ("plain", "full")  # the rows run with every seed
JOB_FILE = "job.json"
FLOOR_FILE = "localization_floor.json"  # the work folder's localization_floor() of the config


@dataclass
class Job:
    """One training run of the study and its evaluation."""

    row: str
    seed: int
    overrides: list[str]
    init_from: str | None = None  # name of the job whose best.pt starts this one
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.row}-s{self.seed}"


def plan(config: dict, seeds: int) -> list[Job]:
    """The study's jobs in the order they run: the first seed's plain and full runs first (so
    an interrupted study still has the headline comparison), then the other seeds, then the
    rows between, then the other ``crop_from`` mode (``part_features`` in older configs)."""
    key = "part_features" if "part_features" in config["model"] else "crop_from"
    other = "image" if config["model"].get(key, "image") == "shared" else "shared"
    overrides = dict(ROWS)
    overrides["full_other_features"] = [f"model.{key}={other}"]

    def job(row: str, seed: int) -> Job:
        parent = None if row == "plain" else f"plain-s{seed}"
        return Job(row, seed, [*overrides[row], f"seed={seed}"], parent)

    jobs = [job("plain", 0), job("full", 0)]
    for seed in range(1, seeds):
        jobs += [job("plain", seed), job("full", seed)]
    jobs += [job(row, 0) for row in ("P", "P+MAC", "P+MAC+OP", "P+MAC+DSM")]
    jobs.append(job("full_other_features", 0))
    return jobs


# One job (run in its own process) ---------------------------------------------------------


def run_job(spec: dict) -> dict:
    """Trains (or resumes) one run, evaluates its ``best.pt`` on the test split (Tables 1 and 2,
    :func:`ssanet.evaluate.evaluate_checkpoint`) and, with proposals, :func:`localization`;
    writes ``job.json`` into the run folder and returns it."""
    import torch

    from .evaluate import DEFAULT_ROTATION_ANGLES, evaluate_checkpoint
    from .train import LAST_CHECKPOINT, train

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    overrides = list(spec["overrides"])
    if spec["init_from"] is not None:
        overrides.append(f"init_from={spec['init_from']}")
    resume = (run_dir / LAST_CHECKPOINT).is_file()
    start = time.perf_counter()
    summary = train(
        None if resume else spec["config"],
        spec["data"],
        run_dir,
        resume=resume,
        overrides=() if resume else overrides,
        progress=False,
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    best = run_dir / "best.pt"
    # Tables 1 and 2 compare the plain backbone and the full model; the other rows are
    # evaluated without rotations (the reduced input is part of every evaluation).
    angles = DEFAULT_ROTATION_ANGLES if spec["row"] in SEEDED_ROWS else (0.0,)
    results = evaluate_checkpoint(
        best, spec["data"], run_dir / "eval", angles=angles, progress=False
    )
    located = None
    if results["model_config"].get("proposals", True):
        located = localization(best, spec["data"])
    record = {
        "name": spec["name"],
        "row": spec["row"],
        "seed": spec["seed"],
        "overrides": overrides,
        "resumed": resume,
        # A resumed run's time is the sum of its epochs (log.csv), not this process's.
        "train_seconds": _epoch_seconds(run_dir) if resume else train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "threads": spec["threads"],
        "best_epoch": summary["best_epoch"],
        "best_val_top1": summary["best_val_top1"],
        "epochs": summary["epochs"],
        "label": results["label"],
        "accuracy": results["accuracy"],
        "heads": results["heads"],
        "rotation": results["rotation"],
        "reduced_input": results["reduced_input"],
        "localization": located,
    }
    (run_dir / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "log.csv", newline="") as file:
        return sum(float(row["epoch_time_s"]) for row in csv.DictReader(file))


def discriminative_parts(num_classes: int) -> list[str]:
    """The synthetic parts whose look differs between the first ``num_classes`` classes."""
    from .data.synthetic import class_attributes

    attributes = list(zip(*(class_attributes(label) for label in range(num_classes)), strict=True))
    return [
        part
        for part, values in zip(("head", "tail", "wing"), attributes, strict=True)
        if len(set(values)) > 1
    ]


def _test_split(settings: dict, data_root: str | os.PathLike, with_keypoints: bool = False):
    """The test split of ``settings["dataset"]`` with the evaluation transform of
    ``settings["transform"]``'s sizes (a config, or a checkpoint's ``extra``)."""
    from .data import build_dataset, eval_transform

    transform = settings["transform"]
    size = lambda value: tuple(value) if isinstance(value, list) else value  # noqa: E731
    return build_dataset(
        settings["dataset"],
        data_root,
        False,
        eval_transform(size(transform["resize"]), size(transform["crop"])),
        with_keypoints=with_keypoints,
    )


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

    loaded = load_checkpoint(checkpoint)
    dataset = _test_split(loaded.extra, data_root, with_keypoints=True)

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

    from .metrics import proposal_keypoint_distance
    from .model import SSANet
    from .model.proposals import make_anchors, select_proposals

    dataset = _test_split(config, data_root, with_keypoints=True)
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

    from .metrics import proposal_keypoint_distance

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


# The study ----------------------------------------------------------------------------------


class _JobScheduler:
    """The state :func:`run_study`'s worker threads share: which jobs are done, failed (or
    skipped) and running, under one condition lock; each worker takes the next runnable job
    (:meth:`next_job`), runs it in its own process (:meth:`run_job`) and records it and
    rewrites the report (:meth:`finish`)."""

    def __init__(
        self,
        todo: list[Job],
        base: dict,
        config_path: Path,
        data_root: str | os.PathLike,
        out_dir: Path,
        work_dir: Path,
        threads: int,
    ) -> None:
        self.todo = todo
        self.base = base
        self.config_path = config_path
        self.data_root = data_root
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.threads = threads
        self.names = {job.name for job in todo}
        # With run_study's `only`, a job may start from a plain run outside `todo`: usable
        # when an earlier study finished it in the same work folder.
        parents = {job.init_from for job in todo if job.init_from is not None}
        self.done = {
            name for name in self.names | parents if (work_dir / name / JOB_FILE).is_file()
        }
        self.failed: set[str] = set()
        self.running: set[str] = set()
        self.lock = threading.Condition()
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(
            f"[{elapsed / 60:5.1f} min, {len(self.done & self.names)}/{len(self.todo)} done] "
            f"{message}",
            flush=True,
        )

    def finished(self) -> list[Job]:
        return [job for job in self.todo if job.name in self.done]

    def worker(self) -> None:
        while (job := self.next_job()) is not None:
            self.run_job(job)

    def next_job(self) -> Job | None:
        """The first pending job that starts from nothing or from a done plain run, marked
        running; None when no job is pending. Jobs whose plain run failed, or is neither done
        nor in the study, are skipped (marked failed); while every pending job waits for a
        running one, waits for a job to finish."""
        with self.lock:
            while True:
                pending = [
                    job
                    for job in self.todo
                    if job.name not in self.done | self.failed | self.running
                ]
                if not pending:
                    return None
                blocked = [job for job in pending if self._parent_missing(job)]
                for job in blocked:
                    self.failed.add(job.name)
                    reason = "failed" if job.init_from in self.failed else "is not done here"
                    self.log(f"{job.name}: skipped, {job.init_from} {reason}")
                if blocked:
                    continue  # they may have been the last pending jobs: nothing to wait for
                runnable = [
                    job for job in pending if job.init_from is None or job.init_from in self.done
                ]
                if runnable:
                    self.running.add(runnable[0].name)
                    return runnable[0]
                self.lock.wait()

    def _parent_missing(self, job: Job) -> bool:
        """Whether the plain run ``job`` starts from failed, or is neither done nor to run."""
        if job.init_from is None or job.init_from in self.done:
            return False
        return job.init_from in self.failed or job.init_from not in self.names

    def run_job(self, job: Job) -> None:
        """Runs ``job`` in its own process (``python -m ssanet.ablation SPEC``), then
        :meth:`finish`."""
        self.log(f"{job.name}: started")
        spec = {
            "name": job.name,
            "row": job.row,
            "seed": job.seed,
            "overrides": job.overrides,
            "init_from": str(self.work_dir / job.init_from / "best.pt") if job.init_from else None,
            "config": str(self.config_path),
            "data": str(self.data_root),
            "run_dir": str(self.work_dir / job.name),
            "threads": self.threads,
        }
        job_start = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-m", "ssanet.ablation", json.dumps(spec)],
            capture_output=True,
            text=True,
        )
        self.finish(job, process, job_start)

    def finish(self, job: Job, process: subprocess.CompletedProcess, job_start: float) -> None:
        """Records ``job`` as done or failed (its stderr into ``error.log``), rewrites the
        report (and the predictions once both seed-0 headline runs are done) and wakes the
        waiting workers."""
        run_dir = self.work_dir / job.name
        with self.lock:
            self.running.discard(job.name)
            if process.returncode == 0:
                self.done.add(job.name)
                record = json.loads((run_dir / JOB_FILE).read_text())
                self.log(
                    f"{job.name}: top-1 {record['accuracy']['top1']:.4f}, trained in "
                    f"{record['train_seconds']:.0f} s ({time.perf_counter() - job_start:.0f} s "
                    "with evaluation)"
                )
            else:
                self.failed.add(job.name)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.log").write_text(process.stderr)
                self.log(f"{job.name}: FAILED (rc {process.returncode}): {process.stderr[-800:]}")
            report(self.work_dir, self.out_dir, self.finished(), self.base)
            if job.name in ("plain-s0", "full-s0") and {"plain-s0", "full-s0"} <= self.done:
                prediction_grid(self.work_dir, self.data_root, self.out_dir / "predictions.png")
            self.lock.notify_all()


def run_study(
    config: str,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    seeds: int = 3,
    jobs: int = 2,
    threads: int = 1,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """Runs the jobs of :func:`plan` (``jobs`` at a time, each a process with ``threads``
    torch threads; a job waits for the plain run it starts from) and rewrites the report in
    ``out_dir`` after each. ``only``: run just these rows. Returns the final report."""
    from .train import load_config

    if seeds < 1 or jobs < 1 or threads < 1:
        raise ValueError(
            f"seeds, jobs and threads must be positive, got {seeds}, {jobs}, {threads}"
        )
    base = load_config(config, overrides)
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    todo = [job for job in plan(base, seeds) if only is None or job.row in only]
    config_path = work_dir / "base_config.json"
    config_path.write_text(json.dumps(base, indent=2) + "\n")
    if base["model"].get("proposals", True):
        # No training: a few seconds; the report reads it after every run.
        floor = localization_floor(base, data_root)
        (work_dir / FLOOR_FILE).write_text(json.dumps(floor, indent=2) + "\n")
    scheduler = _JobScheduler(todo, base, config_path, data_root, out_dir, work_dir, threads)
    scheduler.log(f"{len(todo)} runs, {len(scheduler.done)} already done; {jobs} at a time")
    workers = [threading.Thread(target=scheduler.worker) for _ in range(jobs)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    result = report(work_dir, out_dir, scheduler.finished(), base)
    if {"plain-s0", "full-s0"} <= scheduler.done:
        prediction_grid(work_dir, data_root, out_dir / "predictions.png")
    scheduler.log(f"finished; report in {out_dir / 'ablation.md'}")
    if scheduler.failed:
        scheduler.log(f"failed or skipped: {sorted(scheduler.failed)}")
    return result


# The report ---------------------------------------------------------------------------------


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


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


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
        "say: it changes the times).",
        "",
        "## Table 3",
        "",
        "| method | seeds | top-1 (%) | per seed | DSM / OP head top-1 | best epoch / epochs "
        "| training time per run (s) |",
        "|---|---|---|---|---|---|---|",
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
            "NMS (`ssanet.ablation.localization_floor`): about the lowest ratio these anchors, "
            "K and NMS threshold allow a learned head.",
        ]
    return lines


def _plots(
    rows: list[dict], by_row: dict[str, list[dict]], out_dir: Path, floor: dict | None
) -> None:
    if rows:
        _plot_ablation(rows, out_dir)
    compared = [row for row in ("plain", "full") if row in by_row]
    if compared:
        _plot_rotation(by_row, compared, out_dir)
        _plot_reduced_input(by_row, compared, out_dir)
    located = [run for row, _ in ROWS for run in by_row.get(row, []) if run.get("localization")]
    if located:
        _plot_localization(located, out_dir, floor)


def _plot_ablation(rows: list[dict], out_dir: Path) -> None:
    """Table 3: each row's mean test top-1 with the seeds' standard deviation."""
    figure = _figure(max(6.0, 1.3 * len(rows)), 4.5)
    axis = figure.add_subplot()
    means = [100 * row["top1_mean"] for row in rows]
    errors = [100 * (row["top1_std"] or 0.0) for row in rows]
    bars = axis.bar(range(len(rows)), means, yerr=errors, capsize=4, color="tab:blue")
    axis.bar_label(bars, fmt="%.1f", fontsize="small", padding=2)
    names = [row["method"].replace(" + ", "\n+ ").replace(" (", "\n(") for row in rows]
    axis.set_xticks(range(len(rows)), names, fontsize="x-small")
    axis.set_ylim(0, 100)
    axis.set_ylabel("test top-1 (%)")
    axis.set_title("Table 3: ablation (error bars: std over seeds)")
    figure.tight_layout()
    figure.savefig(out_dir / "ablation.png")


def _plot_rotation(by_row: dict[str, list[dict]], compared: list[str], out_dir: Path) -> None:
    """Table 1: top-1 against the test images' rotation, mean over seeds."""
    figure = _figure()
    axis = figure.add_subplot()
    for row in compared:
        runs = by_row[row]
        angles = list(runs[0]["rotation"])
        values = [100 * _mean_std([run["rotation"][a]["top1"] for run in runs])[0] for a in angles]
        axis.plot([float(a) for a in angles], values, marker="o", label=runs[0]["label"])
    axis.set_ylim(0, 100)  # from 0: a truncated axis exaggerates the drop
    axis.set_xlabel("rotation of the test images (degrees)")
    axis.set_ylabel("test top-1 (%), mean over seeds")
    axis.set_title("Table 1: rotation")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize="small")
    figure.tight_layout()
    figure.savefig(out_dir / "rotation.png")


def _plot_reduced_input(by_row: dict[str, list[dict]], compared: list[str], out_dir: Path) -> None:
    """Table 2: top-1 on the original and the reduced, padded test images, mean over seeds."""
    figure = _figure()
    axis = figure.add_subplot()
    width = 0.38
    for offset, row in enumerate(compared):
        runs = by_row[row]
        values = [
            100 * _mean_std([run["reduced_input"][key]["top1"] for run in runs])[0]
            for key in ("original", "reduced")
        ]
        bars = axis.bar(
            [x + (offset - 0.5) * width for x in (0, 1)], values, width, label=runs[0]["label"]
        )
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
    axis.set_xticks([0, 1], ["original", "reduced and padded"])
    axis.set_ylim(0, 100)
    axis.set_ylabel("test top-1 (%), mean over seeds")
    axis.set_title("Table 2: reduced input")
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(out_dir / "reduced_input.png")


def _plot_localization(located: list[dict], out_dir: Path, floor: dict | None) -> None:
    """Fig. 4: each run's mean proposal-to-keypoint distance beside the random boxes', and the
    ideal proposal head's (:func:`localization_floor`) as a line."""
    figure = _figure(max(6.0, 0.9 * len(located) + 2), 4.5)
    axis = figure.add_subplot()
    names = [f"{run['row']} s{run['seed']}" for run in located]
    positions = range(len(located))
    axis.bar(
        [p - 0.2 for p in positions],
        [run["localization"]["proposal_mean"] for run in located],
        0.4,
        label="proposals",
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [run["localization"]["random_mean"] for run in located],
        0.4,
        label="random boxes of the same sizes",
    )
    if floor is not None:
        axis.axhline(
            floor["proposal_mean"],
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"ideal proposal head (ratio {floor['ratio']:.2f})",
        )
    axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize="small")
    highest = max(
        max(run["localization"]["proposal_mean"], run["localization"]["random_mean"])
        for run in located
    )
    axis.set_ylim(0, 1.35 * highest)  # room for the legend above the bars
    axis.set_ylabel(f"mean distance ({located[0]['localization']['unit']})")
    axis.set_title("Fig. 4: to the nearest discriminative keypoint")
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(out_dir / "localization.png")


def prediction_grid(
    work_dir: Path, data_root: str | os.PathLike, path: Path, count: int = 6
) -> None:
    """``count`` test images of different classes, each twice, upscaled and captioned
    (:func:`ssanet.predict.draw_parts`): the plain backbone's prediction (seed 0), then
    SSANet's with its K part boxes, numbered and scored; rows of two such pairs."""
    import torch

    from .checkpoint import load_checkpoint
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from .predict import draw_parts, picture_grid, write_picture

    plain = load_checkpoint(work_dir / "plain-s0" / "best.pt")
    full = load_checkpoint(work_dir / "full-s0" / "best.pt")
    dataset = _test_split(full.extra, data_root)
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


# Command line -------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ssanet ablation --train`` options (the study); see :func:`run_study`."""
    parser.add_argument(
        "--train",
        default=None,
        metavar="CONFIG",
        help="train and evaluate the whole study with this config (e.g. synthetic_fine) "
        "instead of tabulating RUN_DIRs; needs --data",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="with --train: the runs' folder (OUT/work)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="with --train: seeds (3)")
    parser.add_argument("--jobs", type=int, default=2, help="with --train: runs at once (2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="with --train: torch threads per run (1)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --train: change the base config (repeatable)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help=f"with --train: only these rows {[r for r, _ in ROWS]}",
    )


def train_command(args: argparse.Namespace) -> int:
    from .cli import CommandError

    if args.data is None:
        raise CommandError("ablation --train needs --data")
    if args.runs:
        raise CommandError("ablation: give either RUN_DIRs or --train, not both")
    run_study(
        args.train,
        args.data,
        args.out,
        args.work if args.work is not None else args.out / "work",
        seeds=args.seeds,
        jobs=args.jobs,
        threads=args.threads,
        overrides=args.overrides,
        only=args.only,
    )
    return 0


if __name__ == "__main__":
    # The worker process of one job: python -m ssanet.ablation '<job spec as JSON>'.
    run_job(json.loads(sys.argv[1]))
