"""Training SSANet: the paper's three-stage strategy (section 3.4) and the joint alternative.

A run is described by a JSON config (built in: :data:`ssanet.config.BUILTIN_CONFIGS`; see
``python/ssanet/configs/`` and :mod:`ssanet.config`) and writes into its run folder:

- ``config.json``: the resolved config, the data root and the number of processes;
- ``last.pt`` (every epoch) and ``best.pt`` (best validation top-1 of the final logits), both
  written atomically, with a checksum, and loadable with ``torch.load(weights_only=True)`` and
  :func:`ssanet.load_checkpoint` (:mod:`ssanet.checkpoint`);
- ``log.csv`` (one row per epoch), ``tensorboard/`` (scalars, when the ``tensorboard`` package is
  installed) and ``training_curves.png`` (:mod:`ssanet.run_log`).

``train(..., resume=True)`` continues a run from ``last.pt`` exactly: the model, the optimizer,
the learning-rate scheduler, the gradient scaler, the stage and epoch, and the random states
(torch, CUDA, numpy, python and the data loader's generator, one set per process).

A run survives a kill at any instant: an epoch ends by writing its log row, then ``best.pt``
(when it is a new best), then ``last.pt``, so whatever ``last.pt`` counts as done is already in
the log and in ``best.pt``; a resume redoes, exactly, an epoch that got further than
``last.pt`` (dropping its row, rewriting ``best.pt``), and deletes the temporary files of an
interrupted save. A run killed before its first ``last.pt`` has nothing to resume: its original
command starts it again.

Stages (config ``strategies``): each trains the parameters of the modules it names (the others
are frozen, their batch-norm statistics too), with SGD with momentum, its learning rate (times
``lr_scale`` per module), step decay at ``milestones`` (epochs of the stage), and the sum of
the loss terms it names (those of :class:`ssanet.SSANetLoss`: ``final``, ``dsm``, ``op``,
``mac``, ``rank``). A stage whose ``requires`` modules the model lacks (e.g. the OP stage of a
model built with ``op="none"``) is skipped.

Processes: run under ``torchrun`` for several GPUs or nodes (DistributedDataParallel with
NCCL on GPUs, gloo on CPUs, :mod:`ssanet.distributed`; a DistributedSampler shards the data).
``batch_size`` is per process and per step; the effective batch is
``batch_size * processes * accumulation_steps``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    TrainingState,
    load_checkpoint,
    load_scheduler_state,
    load_training_state,
    remove_leftover_temporaries,
    rng_state,
    save_checkpoint,
    save_training_state,
    scheduler_state,
    set_rng_state,
)
from .config import (
    BUILTIN_CONFIGS,
    CONFIG_FILE,
    LOSS_TERMS,
    apply_override,
    check_config,
    load_config,
    run_config,
    write_run_config,
)
from .data import build_dataset
from .data.split import training_splits
from .data.transforms import config_image_size, config_transform
from .distributed import (
    Distributed,
    all_gather,
    setup_distributed,
    sharded_loader,
    teardown,
)
from .evaluate import validation_metrics
from .model import SSANet, SSANetLoss
from .run_log import PLOT_FILE, EpochTotals, RunLog
from .stages import resolve_stages, set_train_mode, stage_parameter_groups
from .warm_start import init_from_checkpoint

__all__ = [
    "BUILTIN_CONFIGS",
    "LOSS_TERMS",
    "apply_override",
    "check_config",
    "load_config",
    "resolve_stages",
    "stage_parameter_groups",
    "train",
]

# Training -----------------------------------------------------------------------------------


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{module} is needed for {purpose}: pip install {module} "
            "(or the package's [train] extra)"
        )


class Trainer:
    """One run: see :func:`train`."""

    def __init__(
        self,
        config: dict,
        data_root: Path,
        run_dir: Path,
        context: Distributed,
        progress: bool,
    ) -> None:
        self.config = config
        self.data_root = data_root
        self.run_dir = run_dir
        self.context = context
        self.progress = progress and context.is_main
        self.device = context.device
        if context.is_main:
            _require("matplotlib", f"the run's {PLOT_FILE}")
            if self.progress:
                _require("tqdm", "the progress bars (progress=False / --quiet turns them off)")
        self._build_data()
        self._build_model()
        self._build_loaders()
        self.state = TrainingState()
        self.log: RunLog | None = None

    def _build_data(self) -> None:
        config = self.config
        self.train_set, self.val_set = training_splits(
            lambda train, transform: build_dataset(
                config["dataset"], self.data_root, train, transform
            ),
            config["validation"],
            config_transform(config["transform"], train=True),
            config_transform(config["transform"], train=False),
            config["holdout_fraction"],
        )
        self.image_size = config_image_size(config["transform"])

    def _build_model(self) -> None:
        config, rank = self.config, self.context.rank
        torch.manual_seed(config["seed"])
        model_arguments = {**config["model"], "num_classes": self.train_set.num_classes}
        self.model = SSANet(**model_arguments).to(self.device)
        # After the (identical) initialisation, each process draws its own augmentations.
        torch.manual_seed(config["seed"] + rank)
        np.random.seed(config["seed"] + rank)
        random.seed(config["seed"] + rank)
        self.criterion = SSANetLoss(config["loss"]["mac_lambda"], config["loss"]["rank_weight"])
        self.stages = resolve_stages(config, self.model)
        self.amp_dtype = _amp_dtype(config["amp"], self.device)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )

    def _build_loaders(self) -> None:
        config, context = self.config, self.context
        self.loader_generator = torch.Generator().manual_seed(config["seed"] + context.rank)
        self.loader = sharded_loader(
            self.train_set,
            context,
            config["batch_size"],
            config["workers"],
            shuffle=True,
            seed=config["seed"],
            generator=self.loader_generator,
            drop_last=len(self.train_set) // context.world_size >= config["batch_size"],
        )
        self.val_loader = None
        if self.val_set is not None:
            self.val_loader = sharded_loader(
                self.val_set, context, config["eval_batch_size"], config["workers"], False
            )

    def _start_run(self) -> None:
        """A new run: the folder and its config.json (main process), and the weights of
        ``init_from`` (every process; a resumed run has its own in last.pt)."""
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(self.run_dir, self.config, self.data_root, self.context.world_size)
        if self.config["init_from"] is not None:
            init_from_checkpoint(self.model, self.config["init_from"])

    def _resume(self) -> tuple[TrainingState, dict | None]:
        """Loads last.pt: the weights and the scaler here, the counters into ``self.state``;
        returns the states the first stage to run restores (optimizer, scheduler: None when
        the checkpoint's stage had finished; this process's random states), and the log row
        last.pt recorded."""
        path = self.run_dir / LAST_CHECKPOINT
        try:
            loaded, contents = load_training_state(path, self.model)
        except ValueError as error:
            raise ValueError(f"cannot resume: {error}; {self._damaged_advice()}") from None
        if len(loaded.rng) != self.context.world_size:
            raise ValueError(
                f"{path} was written by {len(loaded.rng)} processes; resume it with as many "
                f"(this job has {self.context.world_size}) to continue exactly"
            )
        self.scaler.load_state_dict(loaded.scaler)
        self.state = dataclasses.replace(
            loaded, optimizer=None, scheduler=None, scaler=None, rng=None
        )
        resumed = dataclasses.replace(loaded, rng=[loaded.rng[self.context.rank]])
        # The current stage finished: the next one starts afresh.
        if self.state.stage_epoch == self.stages[self.state.stage_position]["epochs"]:
            self.state.stage_position += 1
            self.state.stage_epoch = 0
            resumed.optimizer = resumed.scheduler = None
        return resumed, contents.get("metrics")

    def _damaged_advice(self) -> str:
        """What to do when last.pt cannot be read: best.pt's weights, when they load, and a
        fresh start."""
        best = self.run_dir / BEST_CHECKPOINT
        restart = "to train again, rerun the run's original command with another --out"
        try:
            epoch = load_checkpoint(best).extra.get("epoch", "?")
        except (OSError, ValueError, RuntimeError):
            return restart
        return f"{best} (epoch {epoch}) is intact and can be evaluated or used; {restart}"

    def _metadata(self) -> dict:
        return {
            "class_names": list(self.train_set.classes),
            "image_size": self.image_size,
            "dataset": self.config["dataset"],
            "transform": self.config["transform"],
            "train_config": self.config,
        }

    def run(self, resume: bool, stop_after_epochs: int | None = None) -> dict:
        resumed, resume_row = self._resume() if resume else (None, None)
        if not resume:
            self._start_run()
        if self.context.is_main:
            for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                remove_leftover_temporaries(self.run_dir / name)
            self.log = RunLog(
                self.run_dir, self.config["tensorboard"], self.state.epoch, resume_row
            )
        epochs_run = 0
        try:
            while self.state.stage_position < len(self.stages):
                stage = self.stages[self.state.stage_position]
                optimizer, scheduler, network = self._start_stage(stage, resumed)
                resumed = None
                while self.state.stage_epoch < stage["epochs"]:
                    if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                        return self._summary(stopped=True)
                    self._run_epoch(stage, optimizer, scheduler, network)
                    epochs_run += 1
                self.state.stage_position += 1
                self.state.stage_epoch = 0
        finally:
            if self.log is not None:
                self.log.close()
        return self._summary(stopped=False)

    def _start_stage(self, stage: dict, resumed: TrainingState | None):
        """The stage's optimizer, scheduler and (under torchrun) DDP wrapper; with `resumed`,
        their states and the random states of the checkpoint."""
        groups = stage_parameter_groups(self.model, stage)
        optimizer_config = self.config["optimizer"]
        optimizer = torch.optim.SGD(
            groups,
            lr=stage["lr"],
            momentum=optimizer_config["momentum"],
            weight_decay=optimizer_config["weight_decay"],
            nesterov=optimizer_config["nesterov"],
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=stage["milestones"], gamma=stage["gamma"]
        )
        if resumed is not None and resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
            load_scheduler_state(scheduler, resumed.scheduler)
        network: nn.Module = self.model
        if self.context.enabled:
            network = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config["find_unused_parameters"],
            )
        if resumed is not None:
            # Restored after the stage's setup, exactly where the checkpoint was written.
            set_rng_state(resumed.rng[0], self.loader_generator)
        if self.progress:
            print(
                f"stage {stage['name']!r} ({self.state.stage_position + 1}/{len(self.stages)}): "
                f"training {stage['modules']} on {stage['losses']}, "
                f"epochs {self.state.stage_epoch + 1}..{stage['epochs']}",
                file=sys.stderr,
            )
        return optimizer, scheduler, network

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _run_epoch(self, stage: dict, optimizer, scheduler, network: nn.Module) -> None:
        start = time.perf_counter()
        set_train_mode(self.model, stage)
        self.loader.sampler.set_epoch(self.state.epoch)
        lr = optimizer.param_groups[0]["lr"]
        totals = EpochTotals(self.device)
        bar = self._bar(self.loader, f"epoch {self.state.epoch + 1} [{stage['name']}]")
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            loss = self._train_step(step, batch, stage, optimizer, network, totals)
            self._log_step(step, loss, bar)
        scheduler.step()
        row = {"lr": lr, **totals.row(self.context)}
        self._end_epoch(stage, optimizer, scheduler, row, start)

    def _train_step(self, step, batch, stage, optimizer, network, totals) -> torch.Tensor:
        """Forward and backward of one batch; the optimizer steps at the last batch of each
        group of ``accumulation_steps`` (the gradients of a group are all-reduced once)."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        group_size, last_in_group = self._accumulation_group(step)
        sync = contextlib.nullcontext()
        if isinstance(network, DistributedDataParallel) and not last_in_group:
            sync = network.no_sync()  # gradients are all-reduced at the group's last step
        with sync:
            with self._autocast():
                output = network(images)
                losses = self.criterion(output, labels)
                loss = sum(losses[term] for term in stage["losses"] if term in losses)
            self.scaler.scale(loss / group_size).backward()
        if last_in_group:
            self._optimizer_step(optimizer)
        totals.add(loss, losses, output.logits, labels)
        return loss

    def _accumulation_group(self, step: int) -> tuple[int, bool]:
        """The size of the accumulation group of batch `step`, and whether it is its last."""
        accumulation = self.config["accumulation_steps"]
        group_start = step - step % accumulation
        group_size = min(accumulation, len(self.loader) - group_start)
        return group_size, step == group_start + group_size - 1

    def _optimizer_step(self, optimizer) -> None:
        if self.config["clip_grad_norm"] is not None:
            self.scaler.unscale_(optimizer)
            trained = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(trained, self.config["clip_grad_norm"])
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def _log_step(self, step: int, loss: torch.Tensor, bar) -> None:
        """Every 10th optimizer step's loss to TensorBoard and the progress bar."""
        accumulation = self.config["accumulation_steps"]
        _, last_in_group = self._accumulation_group(step)
        if self.log is None or not last_in_group or (step // accumulation) % 10:
            return
        value = loss.item()
        steps_per_epoch = math.ceil(len(self.loader) / accumulation)
        self.log.step("step/loss", value, self.state.epoch * steps_per_epoch + step // accumulation)
        if self.progress:
            bar.set_postfix(loss=f"{value:.4f}")

    def _end_epoch(self, stage: dict, optimizer, scheduler, row: dict, start: float) -> None:
        """Validate, track the best, log and checkpoint."""
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(
                f"the training loss became non-finite in epoch {self.state.epoch + 1} (stage "
                f"{stage['name']!r}); {self.run_dir / LAST_CHECKPOINT} holds the previous "
                "epoch. Lower the learning rate or set clip_grad_norm"
            )
        self.state.epoch += 1
        self.state.stage_epoch += 1
        validation = None
        if self.val_loader is not None and (
            self.state.stage_epoch % self.config["eval_every"] == 0
            or self.state.stage_epoch == stage["epochs"]
        ):
            validation = validation_metrics(
                self.model, self.val_loader, self.context, self._autocast, self._bar
            )
        row = {
            "epoch": self.state.epoch,
            "stage": stage["name"],
            "stage_epoch": self.state.stage_epoch,
            **row,
            "epoch_time_s": round(time.perf_counter() - start, 3),
            **(validation or {}),
        }
        is_best = self._track_best(validation)
        self._commit_epoch(stage, optimizer, scheduler, row, is_best)

    def _track_best(self, validation: dict | None) -> bool:
        """Whether this epoch's model is the best so far (updating the record if so)."""
        if validation is None:
            # Without validation the latest model is the one kept.
            is_best = self.val_loader is None
            score = -math.inf
        else:
            is_best = validation["val_top1"] > self.state.best_score
            score = validation["val_top1"]
        if is_best:
            self.state.best_score = score
            self.state.best_epoch = self.state.epoch
        return is_best

    def _bar(self, iterable, description: str):
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True)

    def _commit_epoch(self, stage: dict, optimizer, scheduler, row: dict, is_best: bool) -> None:
        """The log row, then best.pt (a new best), then last.pt: a kill between two of these
        leaves files ahead of last.pt, which a resume redoes; never last.pt ahead of them."""
        rng = all_gather(self.context, rng_state(self.loader_generator))
        if not self.context.is_main:
            return
        self.log.epoch(row, print_summary=self.progress)
        epoch_record = {key: value for key, value in row.items() if value is not None}
        extra = {**self._metadata(), "epoch": self.state.epoch, "metrics": epoch_record}
        state = dataclasses.replace(
            self.state,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler_state(scheduler),
            scaler=self.scaler.state_dict(),
            rng=rng,
        )
        if is_best:
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, self.model, **extra)
        save_training_state(self.run_dir / LAST_CHECKPOINT, self.model, state, stage, **extra)

    def _summary(self, stopped: bool) -> dict:
        best = self.state.best_score
        return {
            "run_dir": str(self.run_dir),
            "epochs": self.state.epoch,
            "stopped": stopped,
            "best_epoch": self.state.best_epoch,
            "best_val_top1": best if best > -math.inf else None,
            "last_checkpoint": str(self.run_dir / LAST_CHECKPOINT),
            "best_checkpoint": str(self.run_dir / BEST_CHECKPOINT),
        }


def train(
    config: str | os.PathLike | dict | None,
    data_root: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    stop_after_epochs: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Trains SSANet as ``config`` says on the data under ``data_root``; writes ``run_dir``.

    Args:
        config: a built-in name, a JSON file or a dict (see :func:`load_config`); with
            ``resume`` it may be None (the run's own ``config.json``) and must otherwise equal it.
        data_root: the dataset's folder; with ``resume`` None reuses the run's.
        run_dir: the run folder (created; it must not hold a run unless ``resume``).
        resume: continue the run in ``run_dir`` from its ``last.pt``.
        overrides: ``"key=value"`` changes of the config (:func:`load_config`).
        stop_after_epochs: return after this many epochs (``resume`` continues), e.g. to fit
            a job into a time slot.
        device: None: ``cuda:LOCAL_RANK`` where CUDA is available, else the CPU.
        progress: tqdm bars and a line per epoch on stderr (main process only).

    Returns a summary: epochs done, best epoch and validation top-1, checkpoint paths.
    Run it under ``torchrun`` for several processes (see the module docstring).
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir / CONFIG_FILE} does not exist")
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"cannot resume: {run_dir / LAST_CHECKPOINT} does not exist (a run stopped "
                "before its first epoch ended has nothing to resume: rerun its original command)"
            )
        config, stored_root = run_config(run_dir, config, overrides)
        data_root = data_root if data_root is not None else stored_root
    else:
        if config is None or data_root is None:
            raise ValueError("a new run needs a config and a data root")
        if (run_dir / LAST_CHECKPOINT).exists():
            raise FileExistsError(
                f"{run_dir / LAST_CHECKPOINT} exists: pass --resume {run_dir} to continue "
                "that run, or choose another output folder"
            )
        config = load_config(config, overrides)
    context = setup_distributed(device)
    try:
        trainer = Trainer(config, Path(data_root), run_dir, context, progress)
        return trainer.run(resume, stop_after_epochs)
    finally:
        teardown(context)
