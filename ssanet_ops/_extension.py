"""Loads the compiled extension ssanet_ops._C, and explains what to do when it cannot."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import ModuleType

import torch

REBUILD_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps ."
EDITABLE_REBUILD_COMMAND = "pip install --no-build-isolation -e ."
HOW_TO_BUILD = (
    "From the ssanet_ops source folder, with the torch you want to use installed, run\n"
    f"    {REBUILD_COMMAND}\n"
    f"(or, for a development checkout, {EDITABLE_REBUILD_COMMAND}). See the README's "
    "'Building' and 'Troubleshooting' sections."
)


def _read_build_config() -> dict | None:
    try:
        text = resources.files(__package__).joinpath("_build_config.json").read_text()
    except (FileNotFoundError, OSError):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def simulator_built() -> bool:
    """Whether the build made ssanet_ops._sim, the host simulator of the CUDA kernels."""
    config = _read_build_config()
    return bool(config and config.get("cuda_simulator"))


def load() -> ModuleType:
    """Imports ssanet_ops._C after checking it was built against the torch imported now."""
    config = _read_build_config()
    if config is not None and config.get("torch_version") != torch.__version__:
        raise ImportError(
            "ssanet_ops was built against torch "
            f"{config.get('torch_version')}, but torch {torch.__version__} is installed. "
            "A C++ extension only works with the torch it was compiled for. Rebuild it:\n"
            + HOW_TO_BUILD
        )
    try:
        from . import _C
    except ImportError as error:
        if config is None:
            folder = Path(__file__).resolve().parent
            reason = (
                f"the compiled extension ssanet_ops._C is missing from {folder}: the package "
                "there was not built. If that is the source folder shadowing an installed "
                "ssanet_ops (`python -m pytest` or `python` started in the source root put it on "
                "sys.path), run `pytest`, or Python from another folder"
            )
        else:
            reason = f"the compiled extension ssanet_ops._C failed to load ({error})"
        raise ImportError(f"{reason}.\n{HOW_TO_BUILD}") from error
    return _C
