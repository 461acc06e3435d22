"""Training configurations: the built-in configs, ``--set`` overrides and the checks.

A config is a JSON object (built in: ``cub``, ``cars``, ``aircraft``, ``synthetic``,
``synthetic_fine``, ``synthetic_demo``, in ``python/ssanet/configs/``); :func:`load_config`
reads one, applies overrides and returns it checked, with every default filled in
(:func:`check_config`). Errors name the key at fault.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .data import DATASETS, PRESETS
from .data.split import VALIDATION_MODES

__all__ = [
    "AMP_MODES",
    "BUILTIN_CONFIGS",
    "CONFIG_FILE",
    "LOSS_TERMS",
    "MODULE_NAMES",
    "apply_override",
    "builtin_config_path",
    "check_config",
    "load_config",
    "run_config",
    "write_run_config",
]

#: The configs shipped in ``python/ssanet/configs/``, by name.
BUILTIN_CONFIGS = (
    "cub",
    "cars",
    "aircraft",
    "synthetic",
    "synthetic_fine",
    "synthetic_fine_fast",
    "synthetic_demo",
)
#: The loss terms a stage can train on.
LOSS_TERMS = ("final", "dsm", "op", "mac", "rank")
#: The modules a stage can name (attributes of SSANet); "classifier" exists only without
#: proposals (the plain backbone), the others only with them.
MODULE_NAMES = ("backbone", "proposal_head", "part_classifier", "dsm", "op", "classifier")
#: The config's mixed-precision settings.
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: A run folder's record of its config, data root and number of processes.
CONFIG_FILE = "config.json"

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


def builtin_config_path(name: str) -> Path:
    """The JSON file of a built-in config (one of :data:`BUILTIN_CONFIGS`)."""
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"built-in configs are {BUILTIN_CONFIGS}, got {name!r}")
    return Path(str(resources.files("ssanet") / "configs" / f"{name}.json"))


def _read_config_file(source: str | os.PathLike) -> dict:
    path = Path(source)
    if not path.suffix and str(source) in BUILTIN_CONFIGS:
        path = builtin_config_path(str(source))
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} does not exist (or name a built-in: {BUILTIN_CONFIGS})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a JSON text file (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    return config


def load_config(source: str | os.PathLike | dict, overrides: Sequence[str] = ()) -> dict:
    """A checked config (:func:`check_config`) from a built-in name, a JSON file or a dict.

    ``overrides``: ``"dotted.key=value"`` strings applied in order; the value is read as JSON
    when it parses (``5``, ``0.01``, ``false``, ``[30, 60]``, ``null``), else as a string.
    List items are addressed by index (``strategies.three_stage.0.epochs=5``).
    """
    config = copy.deepcopy(source) if isinstance(source, dict) else _read_config_file(source)
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
    _check_transform(config)
    _check_model_and_optimizer(config)
    _check_scalars(config)
    _check_strategies(config)
    return config


def _check_transform(config: dict) -> None:
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
    for key in ("resize", "crop"):
        value = config["transform"][key]
        if not (key == "crop" and value is None or _is_size(value)):
            allowed = "a positive integer or a [height, width] pair"
            raise ValueError(
                f"config 'transform.{key}' must be {allowed}"
                f"{' or null' if key == 'crop' else ''}, got {value!r}"
            )


def _is_size(value) -> bool:
    """A square side or a [height, width] pair of positive integers (JSON has no tuples)."""
    sides = value if isinstance(value, list | tuple) and len(value) == 2 else [value]
    return all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides)


def _check_model_and_optimizer(config: dict) -> None:
    if not isinstance(config["model"], dict):
        raise ValueError("config 'model' must be an object of SSANet arguments")
    if "num_classes" in config["model"]:
        raise ValueError("config 'model.num_classes' is set from the dataset; remove it")
    config["loss"] = {**_DEFAULTS["loss"], **config["loss"]}
    config["optimizer"] = {**_DEFAULTS["optimizer"], **config["optimizer"]}
    unknown = set(config["optimizer"]) - set(_DEFAULTS["optimizer"])
    if unknown:
        raise ValueError(f"unknown config 'optimizer' keys {sorted(unknown)}")


def _check_scalars(config: dict) -> None:
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


def _check_strategies(config: dict) -> None:
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


def _check_names(stage: dict, key: str, names: tuple[str, ...], where: str) -> None:
    """``stage[key]`` must be "all" or a list of `names`."""
    value = stage[key]
    if value != "all" and (not isinstance(value, list) or not set(value) <= set(names)):
        raise ValueError(
            f"config '{where}.{key}' must be 'all' or a list of {names}, got {value!r}"
        )


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
    _check_names(stage, "train", MODULE_NAMES, where)
    _check_names(stage, "losses", LOSS_TERMS, where)
    if not isinstance(stage["requires"], list) or not set(stage["requires"]) <= set(MODULE_NAMES):
        raise ValueError(f"config '{where}.requires' must be a list of {MODULE_NAMES}")
    if not set(stage["lr_scale"]) <= set(MODULE_NAMES):
        raise ValueError(f"config '{where}.lr_scale' keys must be among {MODULE_NAMES}")
    if sorted(stage["milestones"]) != stage["milestones"]:
        raise ValueError(f"config '{where}.milestones' must be increasing")
    return stage


def write_run_config(
    run_dir: Path, config: dict, data_root: str | os.PathLike, world_size: int
) -> None:
    """A new run's :data:`CONFIG_FILE`: the checked config, the data root and the number of
    processes."""
    record = {"config": config, "data_root": str(data_root), "world_size": world_size}
    (run_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")


def run_config(
    run_dir: Path, config: str | os.PathLike | dict | None, overrides: Sequence[str]
) -> tuple[dict, str]:
    """The config and data root of the run in `run_dir` (its :data:`CONFIG_FILE`). A config or
    overrides given to resume it must give the same config."""
    record = json.loads((run_dir / CONFIG_FILE).read_text())
    stored = check_config(record["config"])
    if config is not None or overrides:
        given = load_config(config if config is not None else stored, overrides)
        if given != stored:
            changed = sorted(key for key in stored if given.get(key) != stored.get(key))
            raise ValueError(
                f"the config differs from the one of the run in {run_dir} (keys {changed}); "
                "--resume continues a run with its own config"
            )
    return stored, record["data_root"]
