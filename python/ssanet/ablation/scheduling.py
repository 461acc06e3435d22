"""Running the study: each job in its own process (:func:`run_job`, ``python -m ssanet.ablation
SPEC``), ``jobs`` at a time, a job after the plain run it starts from, the report rewritten after
every finished run (:func:`run_study`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .planning import FLOOR_FILE, JOB_FILE, SEEDED_ROWS, Job, plan
from .reporting import prediction_grid, report

__all__ = ["run_job", "run_study"]


def run_job(spec: dict) -> dict:
    """Trains (or resumes) one run, evaluates its ``best.pt`` on the test split (Tables 1 and 2,
    :func:`ssanet.evaluate.evaluate_checkpoint`) and, with proposals,
    :func:`ssanet.metrics.localization`; writes ``job.json`` into the run folder and returns
    it."""
    import torch

    from ..evaluate import DEFAULT_ROTATION_ANGLES, evaluate_checkpoint
    from ..metrics import localization
    from ..train import LAST_CHECKPOINT, train

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    overrides = list(spec["overrides"])
    if spec["init_from"] is not None:
        overrides.append(f"init_from={spec['init_from']}")
    resume = (run_dir / LAST_CHECKPOINT).is_file()
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = train(
        None if resume else spec["config"],
        spec["data"],
        run_dir,
        resume=resume,
        overrides=() if resume else overrides,
        progress=False,
    )
    train_seconds = time.perf_counter() - start
    # This process's CPU time (all its threads): with one torch thread, about the time the
    # training would take on a core of its own, whatever else shares the machine.
    train_cpu_seconds = time.process_time() - cpu_start
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
        # Not measured for a resumed run (the epochs before the interruption ran elsewhere).
        "train_cpu_seconds": None if resume else train_cpu_seconds,
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


def _cpu_text(record: dict) -> str:
    cpu = record.get("train_cpu_seconds")
    return "CPU time not measured (resumed)" if cpu is None else f"{cpu:.0f} s of CPU"


def _epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "log.csv", newline="") as file:
        return sum(float(row["epoch_time_s"]) for row in csv.DictReader(file))


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
        """Runs ``job`` in its own process (``python -m ssanet.ablation SPEC``: :func:`run_job`),
        then :meth:`finish`."""
        self.log(f"{job.name}: started")
        work_dir = self.work_dir.resolve()
        spec = {
            "name": job.name,
            "row": job.row,
            "seed": job.seed,
            "overrides": job.overrides,
            "init_from": str(work_dir / job.init_from / "best.pt") if job.init_from else None,
            "config": str(self.config_path.resolve()),
            "data": str(Path(self.data_root).resolve()),
            "run_dir": str(work_dir / job.name),
            "threads": self.threads,
        }
        job_start = time.perf_counter()
        # In the work folder, with absolute paths: `python -m` puts its folder first on
        # sys.path, and started in the source root its ssanet_ops/ (with no compiled libraries
        # when the package is installed, not editable) would shadow the installed one.
        process = subprocess.run(
            [sys.executable, "-m", "ssanet.ablation", json.dumps(spec)],
            capture_output=True,
            text=True,
            cwd=work_dir,
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
                    f"with evaluation), {_cpu_text(record)}"
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
    from ..metrics import localization_floor
    from ..train import load_config

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
