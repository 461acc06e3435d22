"""The run log of a training run (main process): ``log.csv`` (one row per epoch),
``tensorboard/`` (scalars, when the ``tensorboard`` package is installed) and
``training_curves.png``."""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

import torch

from .config import LOSS_TERMS
from .distributed import Distributed, all_reduce
from .plots import plot_training_curves

__all__ = ["LOG_FILE", "LOG_FIELDS", "PLOT_FILE", "EpochTotals", "RunLog"]

#: The run folder's CSV log, one row per epoch.
LOG_FILE = "log.csv"
#: The run folder's plot of the losses and accuracies per epoch.
PLOT_FILE = "training_curves.png"
#: The columns of the CSV log.
LOG_FIELDS = (
    "epoch",
    "stage",
    "stage_epoch",
    "lr",
    "train_samples",
    "train_loss",
    *(f"train_loss_{term}" for term in LOSS_TERMS),
    "train_top1",
    "val_top1",
    "val_top5",
    "val_mean_class_accuracy",
    "val_top1_dsm",
    "val_top1_op",
    "epoch_time_s",
)


class RunLog:
    """The CSV log, the TensorBoard scalars and the curves' plot of a run (main process)."""

    def __init__(
        self,
        run_dir: Path,
        use_tensorboard: bool,
        resume_epoch: int,
        resume_row: dict | None = None,
    ) -> None:
        """`resume_epoch`: the epochs the run's last.pt has done (0: a new run, whose log
        starts empty); `resume_row`: that epoch's row as last.pt recorded it."""
        self.path = run_dir / LOG_FILE
        self.plot_path = run_dir / PLOT_FILE
        self.rows: list[dict] = []
        if resume_epoch > 0:
            self.rows = self._resumed_rows(resume_epoch, resume_row)
        self._rewrite()
        self.writer = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "TensorBoard scalars are off: the 'tensorboard' package is not installed "
                    "(pip install tensorboard, or the package's [train] extra); log.csv and "
                    f"{PLOT_FILE} are written regardless",
                    file=sys.stderr,
                )
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_epoch)

    def _resumed_rows(self, resume_epoch: int, resume_row: dict | None) -> list[dict]:
        """The rows of the epochs up to `resume_epoch`. Rows of later epochs (written before
        a kill let last.pt record them; resuming redoes those epochs) and a half-written row
        (a kill mid-write: fields missing) are dropped; the last epoch's row is the one last.pt
        recorded, when it has one, which also restores a row a kill kept from the file."""
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as file:
                for row in csv.DictReader(file):
                    complete = None not in row and None not in row.values()
                    if complete and row["epoch"].isdigit() and int(row["epoch"]) <= resume_epoch:
                        rows.append(row)
        if resume_row is not None:
            rows = [row for row in rows if int(row["epoch"]) < resume_epoch]
            rows.append(_csv_row(resume_row))
        return rows

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)

    def step(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def epoch(self, row: dict, print_summary: bool = False) -> None:
        """Appends an epoch's row (the CSV, TensorBoard, the plot); with `print_summary`, a
        line on stderr too."""
        row = {field: row.get(field, "") for field in LOG_FIELDS}
        self.rows.append(_csv_row(row))
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=LOG_FIELDS).writerow(self.rows[-1])
            # On disk before the epoch's checkpoints, which count the epoch as done.
            file.flush()
            os.fsync(file.fileno())
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "stage") and isinstance(value, int | float):
                    if not (isinstance(value, float) and math.isnan(value)):
                        self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()
        self.plot()
        if print_summary:
            summary = ", ".join(
                f"{key} {value:.4f}" for key, value in row.items() if isinstance(value, float)
            )
            print(f"epoch {row['epoch']} [{row['stage']}]: {summary}", file=sys.stderr)

    def plot(self) -> None:
        # train_loss sums the terms of each stage's own choice; train_loss_final (the final
        # logits' cross-entropy) compares across stages.
        history: dict[str, list[float]] = {"epoch": [], "train_loss": []}
        for key in ("train_loss_final", "train_top1", "val_top1"):
            if any(row[key] not in ("", None) for row in self.rows):
                history[key] = []
        for row in self.rows:
            for key in history:
                value = row[key]
                history[key].append(float(value) if value not in ("", None) else float("nan"))
        if history["epoch"]:
            stages = [row["stage"] for row in self.rows]
            plot_training_curves(
                history, self.plot_path, title=self.path.parent.name, stages=stages
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _csv_row(row: dict) -> dict:
    """A log row as the CSV holds it: every field, "" where a value is missing."""
    return {field: "" if row.get(field) is None else row[field] for field in LOG_FIELDS}


class EpochTotals:
    """Sums over one epoch of this process's samples, kept on the device (no sync per step):
    the count, the loss, the correct predictions and each loss term the model produced."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3 + len(LOSS_TERMS), dtype=torch.float64, device=device)
        self.term_seen = [False] * len(LOSS_TERMS)

    @torch.no_grad()
    def add(self, loss: torch.Tensor, losses: dict, logits: torch.Tensor, labels: torch.Tensor):
        count = labels.shape[0]
        self.sums[0] += count
        self.sums[1] += loss.detach().double() * count
        self.sums[2] += (logits.argmax(dim=1) == labels).sum()
        for index, term in enumerate(LOSS_TERMS):
            if term in losses:
                self.sums[3 + index] += losses[term].detach().double() * count
                self.term_seen[index] = True

    def row(self, context: Distributed) -> dict:
        """The log row's training entries, summed over the processes."""
        sums = all_reduce(context, self.sums).cpu()
        samples = max(sums[0].item(), 1.0)
        row = {
            "train_samples": int(sums[0].item()),
            "train_loss": sums[1].item() / samples,
            "train_top1": sums[2].item() / samples,
        }
        for index, term in enumerate(LOSS_TERMS):
            if self.term_seen[index]:
                row[f"train_loss_{term}"] = sums[3 + index].item() / samples
        return row
