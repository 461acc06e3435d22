"""Training SSANet: the paper's three-stage strategy (section 3.4) and the joint alternative.

A run is described by a JSON config (built in: ``cub``, ``cars``, ``aircraft``, ``synthetic``;
see ``python/ssanet/configs/``) and writes into its run folder:

- ``config.json``: the resolved config, the data root and the number of processes;
- ``last.pt`` (every epoch) and ``best.pt`` (best validation top-1 of the final logits), both
  written atomically (temporary file, then ``os.replace``) and loadable with
  ``torch.load(weights_only=True)`` and :func:`ssanet.load_checkpoint`;
- ``log.csv`` (one row per epoch), ``tensorboard/`` (scalars, when the ``tensorboard`` package is
  installed) and ``training_curves.png``.

``train(..., resume=True)`` continues a run from ``last.pt`` exactly: the model, the optimizer,
the learning-rate scheduler, the gradient scaler, the stage and epoch, and the random states
(torch, CUDA, numpy, python and the data loader's generator, one set per process).

Stages (config ``strategies``): each trains the parameters of the modules it names (the others
are frozen, their batch-norm statistics too), with SGD with momentum, its learning rate (times
``lr_scale`` per module), step decay at ``milestones`` (epochs of the stage), and the sum of
the loss terms it names (those of :class:`ssanet.SSANetLoss`: ``final``, ``dsm``, ``op``,
``mac``, ``rank``). A stage whose ``requires`` modules the model lacks (e.g. the OP stage of a
model built with ``op="none"``) is skipped.

Processes: run under ``torchrun`` for several GPUs or nodes (DistributedDataParallel with
NCCL on GPUs, gloo on CPUs; a DistributedSampler shards the data). ``batch_size`` is per
process and per step; the effective batch is ``batch_size * processes * accumulation_steps``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from . import metrics
from .checkpoint import save_checkpoint
from .data import DATASETS, PRESETS, build_dataset, eval_transform, train_transform
from .data.split import VALIDATION_MODES, training_splits
from .model import SSANet, SSANetLoss
from .warm_start import init_from_checkpoint

__all__ = [
    "BUILTIN_CONFIGS",
    "LOSS_TERMS",
    "check_config",
    "load_config",
    "resolve_stages",
    "stage_parameter_groups",
    "train",
]

BUILTIN_CONFIGS = ("cub", "cars", "aircraft", "synthetic", "synthetic_fine")
LOSS_TERMS = ("final", "dsm", "op", "mac", "rank")
# The modules a stage can name (attributes of SSANet); "classifier" exists only without
# proposals (the plain backbone), the others only with them.
MODULE_NAMES = ("backbone", "proposal_head", "part_classifier", "dsm", "op", "classifier")
AMP_MODES = ("auto", "off", "bf16", "fp16")
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "log.csv"
CONFIG_FILE = "config.json"
PLOT_FILE = "training_curves.png"

# Top-level keys: their default (None: required, or derived) and what they must be.
_DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "transform": None,  # {"resize": int | [H, W], "crop": int | null}; default PRESETS[dataset]
    "model": {},
    "loss": {"mac_lambda": 0.5, "rank_weight": 1.0},
    "optimizer": {"momentum": 0.9, "weight_decay": 1e-4, "nesterov": False},
    "batch_size": 24,
    "eval_batch_size": None,  # default: batch_size
    "accumulation_steps": 1,
    "workers": 4,
    "amp": "auto",
    "seed": 0,
    "validation": "test",  # one of VALIDATION_MODES (ssanet.data.split)
    "holdout_fraction": 0.2,  # of each class's training images, with validation "holdout"
    "init_from": None,  # a checkpoint whose backbone starts the model (ssanet.warm_start)
    "eval_every": 1,
    "find_unused_parameters": False,
    "clip_grad_norm": None,  # a float: clip the gradients' total norm to it at every step
    "tensorboard": True,
    "strategy": "three_stage",
    "strategies": None,
}
_STAGE_DEFAULTS: dict[str, Any] = {
    "name": None,
    "epochs": None,
    "lr": None,
    "milestones": [],
    "gamma": 0.1,
    "train": None,
    "lr_scale": {},
    "losses": None,
    "requires": [],  # modules the stage exists for: without them the stage is skipped
}
_LOG_FIELDS = (
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


# Configuration ------------------------------------------------------------------------------


def builtin_config_path(name: str) -> Path:
    """The JSON file of a built-in config (one of :data:`BUILTIN_CONFIGS`)."""
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"built-in configs are {BUILTIN_CONFIGS}, got {name!r}")
    return Path(str(resources.files("ssanet") / "configs" / f"{name}.json"))


def load_config(source: str | os.PathLike | dict, overrides: Sequence[str] = ()) -> dict:
    """A checked config (:func:`check_config`) from a built-in name, a JSON file or a dict.

    ``overrides``: ``"dotted.key=value"`` strings applied in order; the value is read as JSON
    when it parses (``5``, ``0.01``, ``false``, ``[30, 60]``, ``null``), else as a string.
    List items are addressed by index (``strategies.three_stage.0.epochs=5``).
    """
    if isinstance(source, dict):
        config = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.suffix and str(source) in BUILTIN_CONFIGS:
            path = builtin_config_path(str(source))
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {path} does not exist (or name a built-in: {BUILTIN_CONFIGS})"
            )
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
    for override in overrides:
        apply_override(config, override)
    return check_config(config)


def apply_override(config: dict, override: str) -> None:
    """Sets ``config[a][b]... = value`` for ``override = "a.b...=value"`` (in place)."""
    key, equals, text = override.partition("=")
    if not equals or not key:
        raise ValueError(f"an override must read KEY=VALUE, got {override!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, last = key.split(".")
    node: Any = config
    for part in parents:
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ValueError(f"override {key!r}: {part!r} is not an object or a list")
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"override {key!r}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def check_config(config: dict) -> dict:
    """Fills the defaults of a config and checks it; errors name the key at fault.

    Keys starting with ``_`` are comments and are kept as they are.
    """
    config = copy.deepcopy(config)
    unknown = [key for key in config if key not in _DEFAULTS and not key.startswith("_")]
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(_DEFAULTS)}")
    for key, default in _DEFAULTS.items():
        config.setdefault(key, copy.deepcopy(default))
    if config["dataset"] not in DATASETS:
        raise ValueError(f"config 'dataset' must be one of {DATASETS}, got {config['dataset']!r}")
    if config["transform"] is None:
        preset = PRESETS[config["dataset"]]
        resize = preset["resize"]
        config["transform"] = {
            "resize": list(resize) if isinstance(resize, tuple) else resize,
            "crop": preset["crop"],
        }
    if set(config["transform"]) - {"resize", "crop"} or "resize" not in config["transform"]:
        raise ValueError(
            f"config 'transform' must be {{'resize': ..., 'crop': ...}}, got {config['transform']}"
        )
    config["transform"].setdefault("crop", None)
    if not isinstance(config["model"], dict):
        raise ValueError("config 'model' must be an object of SSANet arguments")
    if "num_classes" in config["model"]:
        raise ValueError("config 'model.num_classes' is set from the dataset; remove it")
    config["loss"] = {**_DEFAULTS["loss"], **config["loss"]}
    config["optimizer"] = {**_DEFAULTS["optimizer"], **config["optimizer"]}
    unknown = set(config["optimizer"]) - set(_DEFAULTS["optimizer"])
    if unknown:
        raise ValueError(f"unknown config 'optimizer' keys {sorted(unknown)}")
    for key in ("batch_size", "accumulation_steps", "eval_every"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config {key!r} must be a positive integer, got {config[key]!r}")
    if config["eval_batch_size"] is None:
        config["eval_batch_size"] = config["batch_size"]
    clip = config["clip_grad_norm"]
    if clip is not None and not (isinstance(clip, int | float) and clip > 0):
        raise ValueError(f"config 'clip_grad_norm' must be null or positive, got {clip!r}")
    if not isinstance(config["workers"], int) or config["workers"] < 0:
        raise ValueError(f"config 'workers' must be an integer >= 0, got {config['workers']!r}")
    if config["amp"] not in AMP_MODES:
        raise ValueError(f"config 'amp' must be one of {AMP_MODES}, got {config['amp']!r}")
    if config["validation"] not in VALIDATION_MODES:
        raise ValueError(
            f"config 'validation' must be one of {VALIDATION_MODES}, got {config['validation']!r}"
        )
    fraction = config["holdout_fraction"]
    if not (isinstance(fraction, int | float) and 0 < fraction < 1):
        raise ValueError(f"config 'holdout_fraction' must be in (0, 1), got {fraction!r}")
    if config["init_from"] is not None and not isinstance(config["init_from"], str):
        raise ValueError(
            f"config 'init_from' must be null or a checkpoint path, got {config['init_from']!r}"
        )
    strategies = config["strategies"]
    if not isinstance(strategies, dict) or not strategies:
        raise ValueError("config 'strategies' must map strategy names to lists of stages")
    if config["strategy"] not in strategies:
        raise ValueError(
            f"config 'strategy' {config['strategy']!r} is not one of 'strategies': "
            f"{sorted(strategies)}"
        )
    for name, stages in strategies.items():
        if not isinstance(stages, list) or not stages:
            raise ValueError(f"config 'strategies.{name}' must be a non-empty list of stages")
        strategies[name] = [
            _check_stage(stage, f"strategies.{name}.{index}") for index, stage in enumerate(stages)
        ]
    return config


def _check_stage(stage: dict, where: str) -> dict:
    unknown = set(stage) - set(_STAGE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in config '{where}'")
    stage = {**copy.deepcopy(_STAGE_DEFAULTS), **stage}
    for key in ("name", "epochs", "lr", "train", "losses"):
        if stage[key] is None:
            raise ValueError(f"config '{where}' needs {key!r}")
    if not isinstance(stage["epochs"], int) or stage["epochs"] < 1:
        raise ValueError(f"config '{where}.epochs' must be a positive integer")
    if not stage["lr"] > 0:
        raise ValueError(f"config '{where}.lr' must be positive")
    if stage["train"] != "all":
        if not isinstance(stage["train"], list) or not set(stage["train"]) <= set(MODULE_NAMES):
            raise ValueError(
                f"config '{where}.train' must be 'all' or a list of {MODULE_NAMES}, "
                f"got {stage['train']!r}"
            )
    if stage["losses"] != "all":
        if not isinstance(stage["losses"], list) or not set(stage["losses"]) <= set(LOSS_TERMS):
            raise ValueError(
                f"config '{where}.losses' must be 'all' or a list of {LOSS_TERMS}, "
                f"got {stage['losses']!r}"
            )
    if not isinstance(stage["requires"], list) or not set(stage["requires"]) <= set(MODULE_NAMES):
        raise ValueError(f"config '{where}.requires' must be a list of {MODULE_NAMES}")
    if not set(stage["lr_scale"]) <= set(MODULE_NAMES):
        raise ValueError(f"config '{where}.lr_scale' keys must be among {MODULE_NAMES}")
    if sorted(stage["milestones"]) != stage["milestones"]:
        raise ValueError(f"config '{where}.milestones' must be increasing")
    return stage


# Stages -------------------------------------------------------------------------------------


def _present_modules(model: SSANet) -> dict[str, nn.Module]:
    return {
        name: module
        for name in MODULE_NAMES
        if isinstance(module := getattr(model, name, None), nn.Module)
    }


def resolve_stages(config: dict, model: SSANet) -> list[dict]:
    """The stages of the config's strategy that apply to ``model``, each with ``"modules"``:
    the names of its trained modules that the model has, ``"losses"`` as a list, and its
    position in the config's list as ``"index"``.

    A stage is left out when the model lacks a module of its ``requires`` (the OP stage of a
    model without OP) or every module it trains. A stage that would optimize no loss term the
    model produces is an error.
    """
    present = _present_modules(model)
    resolved = []
    for index, stage in enumerate(config["strategies"][config["strategy"]]):
        names = list(present) if stage["train"] == "all" else stage["train"]
        modules = [name for name in names if name in present]
        if not modules or not set(stage["requires"]) <= set(present):
            continue
        losses = list(LOSS_TERMS) if stage["losses"] == "all" else stage["losses"]
        produced = _loss_terms(model)
        if not set(losses) & produced:
            raise ValueError(
                f"stage {stage['name']!r} optimizes {losses}, none of which this model produces "
                f"({sorted(produced)}); the plain backbone (model.proposals=false) trains with "
                "strategy 'joint'"
            )
        resolved.append({**stage, "index": index, "modules": modules, "losses": losses})
    if not resolved:
        raise ValueError(
            f"no stage of strategy {config['strategy']!r} trains a module of the model"
        )
    return resolved


def _loss_terms(model: SSANet) -> set[str]:
    """The terms :class:`SSANetLoss` returns for ``model``'s outputs."""
    if not model.proposals:
        return {"final"}
    return {"final", "mac", "rank"} | {name for name in ("dsm", "op") if getattr(model, name)}


def stage_parameter_groups(model: SSANet, stage: dict) -> list[dict]:
    """Freezes every parameter of ``model`` outside the stage's modules and returns the SGD
    parameter groups of the others: one per module, with ``lr = stage lr * lr_scale``.

    Also puts the frozen modules in eval mode (batch-norm statistics fixed); call
    :func:`set_train_mode` after every ``model.train()``.
    """
    present = _present_modules(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    groups = []
    for name in stage["modules"]:
        parameters = list(present[name].parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        lr = stage["lr"] * stage["lr_scale"].get(name, 1.0)
        groups.append({"params": parameters, "lr": lr, "module": name})
    return groups


def set_train_mode(model: SSANet, stage: dict) -> None:
    """``model.train()``, with the modules the stage does not train in eval mode."""
    model.train()
    trained = set(stage["modules"])
    for name, module in _present_modules(model).items():
        if name not in trained:
            module.eval()


# Processes ----------------------------------------------------------------------------------


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | torch.device | None = None) -> Distributed:
    """Joins the ``torchrun`` process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE`` > 1.

    ``device``: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    initialized_here = False
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend)
        initialized_here = True
    return Distributed(rank, world_size, local_rank, device, initialized_here)


def _all_gather(context: Distributed, value: Any) -> list[Any]:
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


# Random states ------------------------------------------------------------------------------


def _rng_state(loader_generator: torch.Generator) -> dict:
    """Every random state of this process, as tensors and primitives (weights_only-safe)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
        "loader": loader_generator.get_state(),
    }


def _set_rng_state(state: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    loader_generator.set_state(state["loader"])


# Logging ------------------------------------------------------------------------------------


class RunLog:
    """The CSV log, the TensorBoard scalars and the curves' plot of a run (main process)."""

    def __init__(self, run_dir: Path, use_tensorboard: bool, resume_epoch: int) -> None:
        self.path = run_dir / LOG_FILE
        self.plot_path = run_dir / PLOT_FILE
        self.rows: list[dict] = []
        if resume_epoch > 0:
            # Rows written after the checkpoint (an interrupted epoch) are dropped.
            with open(self.path, newline="") as file:
                self.rows = [
                    row for row in csv.DictReader(file) if int(row["epoch"]) <= resume_epoch
                ]
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

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=_LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)

    def step(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def epoch(self, row: dict) -> None:
        row = {field: row.get(field, "") for field in _LOG_FIELDS}
        self.rows.append({key: "" if value is None else value for key, value in row.items()})
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=_LOG_FIELDS).writerow(self.rows[-1])
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "stage") and isinstance(value, int | float):
                    if not (isinstance(value, float) and math.isnan(value)):
                        self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self.writer.flush()
        self.plot()

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
            metrics.plot_training_curves(history, self.plot_path, title=self.path.parent.name)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Checkpoints --------------------------------------------------------------------------------


def atomic_save_checkpoint(path: Path, model: SSANet, **kwargs: Any) -> None:
    """:func:`ssanet.save_checkpoint` into a temporary file beside ``path``, synced to disk, then
    renamed over ``path``: a crash leaves the previous file whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_checkpoint(temporary, model, **kwargs)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR) -> dict:
    state = scheduler.state_dict()
    state["milestones"] = dict(state["milestones"])  # a Counter does not load with weights_only
    return state


def _load_scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR, state: dict) -> None:
    state = dict(state)
    state["milestones"] = Counter(state["milestones"])
    scheduler.load_state_dict(state)


# Training -----------------------------------------------------------------------------------


def _image_size(transform: dict) -> int:
    size = transform["crop"] if transform["crop"] is not None else transform["resize"]
    return int(size if isinstance(size, int) else size[0])


def _as_size(value):
    return tuple(value) if isinstance(value, list) else value


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
        resume: bool,
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

        transform = config["transform"]
        train_tf = train_transform(_as_size(transform["resize"]), _as_size(transform["crop"]))
        test_tf = eval_transform(_as_size(transform["resize"]), _as_size(transform["crop"]))
        self.train_set, self.val_set = training_splits(
            lambda train, tf: build_dataset(config["dataset"], data_root, train, tf),
            config["validation"],
            train_tf,
            test_tf,
            config["holdout_fraction"],
        )
        self.image_size = _image_size(transform)

        torch.manual_seed(config["seed"])
        model_arguments = {**config["model"], "num_classes": self.train_set.num_classes}
        self.model = SSANet(**model_arguments).to(self.device)
        if config["init_from"] is not None and not resume:
            init_from_checkpoint(self.model, config["init_from"])
        # After the (identical) initialisation, each process draws its own augmentations.
        torch.manual_seed(config["seed"] + context.rank)
        np.random.seed(config["seed"] + context.rank)
        random.seed(config["seed"] + context.rank)
        self.criterion = SSANetLoss(config["loss"]["mac_lambda"], config["loss"]["rank_weight"])
        self.stages = resolve_stages(config, self.model)
        self.amp_dtype = _amp_dtype(config["amp"], self.device)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )

        self.loader_generator = torch.Generator().manual_seed(config["seed"] + context.rank)
        self.sampler = DistributedSampler(
            self.train_set,
            num_replicas=context.world_size,
            rank=context.rank,
            shuffle=True,
            seed=config["seed"],
            drop_last=False,
        )
        self.loader = DataLoader(
            self.train_set,
            batch_size=config["batch_size"],
            sampler=self.sampler,
            num_workers=config["workers"],
            generator=self.loader_generator,
            pin_memory=self.device.type == "cuda",
            drop_last=len(self.train_set) // context.world_size >= config["batch_size"],
            persistent_workers=False,
        )
        self.val_loader = None
        if self.val_set is not None:
            val_sampler = DistributedSampler(
                self.val_set, context.world_size, context.rank, shuffle=False
            )
            self.val_loader = DataLoader(
                self.val_set,
                batch_size=config["eval_batch_size"],
                sampler=val_sampler,
                num_workers=config["workers"],
                pin_memory=self.device.type == "cuda",
            )

        self.epoch = 0  # global epochs done
        self.stage_position = 0  # position in self.stages of the current stage
        self.stage_epoch = 0  # epochs done in the current stage
        self.best_score = -math.inf
        self.best_epoch = 0
        self.optimizer_state = None
        self.scheduler_state = None
        self.rng_states = None
        if resume:
            self._load_resume_state()
        elif context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            record = {
                "config": config,
                "data_root": str(data_root),
                "world_size": context.world_size,
            }
            (run_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
        self.log = None
        if context.is_main:
            self.log = RunLog(run_dir, config["tensorboard"], self.epoch)

    def _load_resume_state(self) -> None:
        path = self.run_dir / LAST_CHECKPOINT
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        training = state["training"]
        self.epoch = training["epoch"]
        self.stage_position = training["stage_position"]
        self.stage_epoch = training["stage_epoch"]
        self.best_score = training["best_score"]
        self.best_epoch = training["best_epoch"]
        self.optimizer_state = training["optimizer"]
        self.scheduler_state = training["scheduler"]
        self.scaler.load_state_dict(training["scaler"])
        rng = training["rng"]
        if len(rng) != self.context.world_size:
            raise ValueError(
                f"{path} was written by {len(rng)} processes; resume it with as many "
                f"(this job has {self.context.world_size}) to continue exactly"
            )
        self.rng_states = rng[self.context.rank]
        # The current stage finished: the next one starts afresh.
        if self.stage_epoch == self.stages[self.stage_position]["epochs"]:
            self.stage_position += 1
            self.stage_epoch = 0
            self.optimizer_state = self.scheduler_state = None

    def _metadata(self) -> dict:
        return {
            "class_names": list(self.train_set.classes),
            "image_size": self.image_size,
            "dataset": self.config["dataset"],
            "transform": self.config["transform"],
            "train_config": self.config,
        }

    def run(self, stop_after_epochs: int | None = None) -> dict:
        epochs_run = 0
        try:
            while self.stage_position < len(self.stages):
                stage = self.stages[self.stage_position]
                optimizer, scheduler, network = self._start_stage(stage)
                while self.stage_epoch < stage["epochs"]:
                    if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                        return self._summary(stopped=True)
                    self._run_epoch(stage, optimizer, scheduler, network)
                    epochs_run += 1
                self.stage_position += 1
                self.stage_epoch = 0
        finally:
            if self.log is not None:
                self.log.close()
        return self._summary(stopped=False)

    def _start_stage(self, stage: dict):
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
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            _load_scheduler_state(scheduler, self.scheduler_state)
            self.optimizer_state = self.scheduler_state = None
        network: nn.Module = self.model
        if self.context.enabled:
            network = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config["find_unused_parameters"],
            )
        if self.rng_states is not None:
            # Restored after the stage's setup, exactly where the checkpoint was written.
            _set_rng_state(self.rng_states, self.loader_generator)
            self.rng_states = None
        if self.progress:
            print(
                f"stage {stage['name']!r} ({self.stage_position + 1}/{len(self.stages)}): "
                f"training {stage['modules']} on {stage['losses']}, "
                f"epochs {self.stage_epoch + 1}..{stage['epochs']}",
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
        self.sampler.set_epoch(self.epoch)
        accumulation = self.config["accumulation_steps"]
        batches = len(self.loader)
        # Sums over this process's samples, on the device (no sync per step): count, loss,
        # correct, then each loss term; term_seen marks the terms the model produced.
        totals = torch.zeros(3 + len(LOSS_TERMS), dtype=torch.float64, device=self.device)
        term_seen = [False] * len(LOSS_TERMS)
        lr = optimizer.param_groups[0]["lr"]
        steps_per_epoch = math.ceil(batches / accumulation)
        bar = self._bar(self.loader, f"epoch {self.epoch + 1} [{stage['name']}]")
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            images = batch["image"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device, non_blocking=True)
            group_start = step - step % accumulation
            group_size = min(accumulation, batches - group_start)
            last_in_group = step == group_start + group_size - 1
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
                if self.config["clip_grad_norm"] is not None:
                    self.scaler.unscale_(optimizer)
                    trained = [p for group in optimizer.param_groups for p in group["params"]]
                    nn.utils.clip_grad_norm_(trained, self.config["clip_grad_norm"])
                self.scaler.step(optimizer)
                self.scaler.update()
                optimizer.zero_grad(set_to_none=True)
            count = labels.shape[0]
            with torch.no_grad():
                totals[0] += count
                totals[1] += loss.detach().double() * count
                totals[2] += (output.logits.argmax(dim=1) == labels).sum()
                for index, term in enumerate(LOSS_TERMS):
                    if term in losses:
                        totals[3 + index] += losses[term].detach().double() * count
                        term_seen[index] = True
            if self.log is not None and last_in_group and (step // accumulation) % 10 == 0:
                value = loss.item()
                self.log.step(
                    "step/loss", value, self.epoch * steps_per_epoch + step // accumulation
                )
                if self.progress:
                    bar.set_postfix(loss=f"{value:.4f}")
        scheduler.step()
        if self.context.enabled:
            torch_dist.all_reduce(totals)
        totals = totals.cpu()
        if not math.isfinite(totals[1].item()):
            raise FloatingPointError(
                f"the training loss became non-finite in epoch {self.epoch + 1} (stage "
                f"{stage['name']!r}); {self.run_dir / LAST_CHECKPOINT} holds the previous "
                "epoch. Lower the learning rate or set clip_grad_norm"
            )
        self.epoch += 1
        self.stage_epoch += 1

        validation = None
        if self.val_loader is not None and (
            self.stage_epoch % self.config["eval_every"] == 0 or self.stage_epoch == stage["epochs"]
        ):
            validation = self._validate()
        samples = max(totals[0].item(), 1.0)
        row = {
            "epoch": self.epoch,
            "stage": stage["name"],
            "stage_epoch": self.stage_epoch,
            "lr": lr,
            "train_samples": int(totals[0].item()),
            "train_loss": totals[1].item() / samples,
            "train_top1": totals[2].item() / samples,
            "epoch_time_s": round(time.perf_counter() - start, 3),
        }
        for index, term in enumerate(LOSS_TERMS):
            if term_seen[index]:
                row[f"train_loss_{term}"] = totals[3 + index].item() / samples
        if validation is not None:
            row.update(validation)
        is_best = validation is not None and validation["val_top1"] > self.best_score
        if validation is None and self.val_loader is None:
            is_best = True  # without validation the latest model is the one kept
        if is_best:
            self.best_score = validation["val_top1"] if validation is not None else -math.inf
            self.best_epoch = self.epoch
        self._checkpoint(optimizer, scheduler, row, is_best)
        if self.log is not None:
            self.log.epoch(row)
            if self.progress:
                summary = ", ".join(
                    f"{key} {value:.4f}" for key, value in row.items() if isinstance(value, float)
                )
                print(f"epoch {self.epoch} [{stage['name']}]: {summary}", file=sys.stderr)

    def _bar(self, iterable, description: str):
        if not self.progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True)

    @torch.no_grad()
    def _validate(self) -> dict:
        self.model.eval()
        indices, logits, dsm_logits, op_logits, labels = [], [], [], [], []
        for batch in self._bar(self.val_loader, "validation"):
            images = batch["image"].to(self.device, non_blocking=True)
            with self._autocast():
                output = self.model(images)
            indices.append(batch["index"])
            labels.append(batch["label"])
            logits.append(output.logits.float().cpu())
            if output.dsm_logits is not None:
                dsm_logits.append(output.dsm_logits.float().cpu())
            if output.op_logits is not None:
                op_logits.append(output.op_logits.float().cpu())
        local = {
            "index": torch.cat(indices),
            "label": torch.cat(labels),
            "logits": torch.cat(logits),
            "dsm": torch.cat(dsm_logits) if dsm_logits else None,
            "op": torch.cat(op_logits) if op_logits else None,
        }
        parts = _all_gather(self.context, local)
        # The DistributedSampler repeats samples to even out the shards: keep each index once.
        index = torch.cat([part["index"] for part in parts])
        order = torch.argsort(index, stable=True)
        keep = torch.ones_like(order, dtype=torch.bool)
        keep[1:] = index[order][1:] != index[order][:-1]
        order = order[keep]

        def merged(key: str) -> torch.Tensor:
            return torch.cat([part[key] for part in parts])[order]

        result = metrics.classification_metrics(merged("logits"), merged("label"))
        row = {
            "val_top1": result["top1"],
            "val_top5": result["top5"],
            "val_mean_class_accuracy": result["mean_class_accuracy"],
        }
        for head in ("dsm", "op"):
            if local[head] is not None:
                row[f"val_top1_{head}"] = metrics.topk_accuracy(merged(head), merged("label"))
        return row

    def _checkpoint(self, optimizer, scheduler, row: dict, is_best: bool) -> None:
        rng = _all_gather(self.context, _rng_state(self.loader_generator))
        if not self.context.is_main:
            return
        metadata = self._metadata()
        epoch_record = {key: value for key, value in row.items() if value is not None}
        training = {
            "epoch": self.epoch,
            "stage_position": self.stage_position,
            "stage_index": self.stages[self.stage_position]["index"],
            "stage_name": self.stages[self.stage_position]["name"],
            "stage_epoch": self.stage_epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": _scheduler_state(scheduler),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world_size": self.context.world_size,
        }
        atomic_save_checkpoint(
            self.run_dir / LAST_CHECKPOINT,
            self.model,
            **metadata,
            epoch=self.epoch,
            metrics=epoch_record,
            training=training,
        )
        if is_best:
            atomic_save_checkpoint(
                self.run_dir / BEST_CHECKPOINT,
                self.model,
                **metadata,
                epoch=self.epoch,
                metrics=epoch_record,
            )

    def _summary(self, stopped: bool) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "stopped": stopped,
            "best_epoch": self.best_epoch,
            "best_val_top1": self.best_score if self.best_score > -math.inf else None,
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
        for required in (CONFIG_FILE, LAST_CHECKPOINT):
            if not (run_dir / required).is_file():
                raise FileNotFoundError(f"cannot resume: {run_dir / required} does not exist")
        record_path = run_dir / CONFIG_FILE
        record = json.loads(record_path.read_text())
        stored = check_config(record["config"])
        if config is not None or overrides:
            given = load_config(config if config is not None else stored, overrides)
            if given != stored:
                changed = sorted(key for key in stored if given.get(key) != stored.get(key))
                raise ValueError(
                    f"the config differs from the one of the run in {run_dir} (keys {changed}); "
                    "--resume continues a run with its own config"
                )
        config = stored
        data_root = data_root if data_root is not None else record["data_root"]
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
        trainer = Trainer(config, Path(data_root), run_dir, context, resume, progress)
        return trainer.run(stop_after_epochs)
    finally:
        if context.initialized_here:
            torch_dist.destroy_process_group()
