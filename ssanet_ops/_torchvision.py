"""torchvision, an optional dependency (issue 11), imported with its failures in one line.

Every torchvision release is built for one exact torch, and for one kind of it: PyPI's
torchvision is a CUDA build, which fails to load beside a CPU-only torch (``operator
torchvision::nms does not exist``). :func:`import_torchvision` turns a missing, mismatched or
unloadable torchvision into a :class:`TorchvisionUnavailable` whose message names both versions
and the pip command that fixes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from importlib import metadata
from types import ModuleType

__all__ = ["TorchvisionUnavailable", "import_torchvision", "install_command", "torchvision_problem"]

# The local version labels of the builds PyTorch publishes on its own index, one index per
# label (https://download.pytorch.org/whl/cpu, .../cu130, ...).
_PYTORCH_INDEX_LABEL = re.compile(r"cpu|cu\d+|rocm[\d.]+|xpu")


class TorchvisionUnavailable(ImportError):
    """torchvision is missing, or not the build made for the installed torch."""


def _torch_version() -> str:
    import torch

    return torch.__version__


def install_command() -> str:
    """The pip command that adds the torchvision made for the installed torch and keeps it.

    torch is pinned to its release without the local label: ``==2.13.0`` matches the installed
    2.13.0+cpu, which PyPI, with no labelled builds, would not. A labelled torch came from
    PyTorch's index for that label, where the torchvision built for it is (PyPI's is a CUDA
    build).
    """
    release, _, label = _torch_version().partition("+")
    command = f"pip install torchvision 'torch=={release}'"
    if _PYTORCH_INDEX_LABEL.fullmatch(label):
        command += f" --index-url https://download.pytorch.org/whl/{label}"
    return command


def _required_torch() -> str | None:
    """The exact torch release the installed torchvision declares (``torch==X``), if any."""
    for requirement in metadata.requires("torchvision") or []:
        match = re.fullmatch(r"torch\s*\(?\s*==\s*([^\s;)]+)\s*\)?", requirement)
        if match:
            return match.group(1)
    return None


def torchvision_problem() -> str | None:
    """Why torchvision cannot be used beside the installed torch (one clause), or None.

    Imports torchvision where its declared torch matches: a build for CUDA beside a CPU-only
    torch shows itself only then.
    """
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    torch_version = _torch_version()
    try:
        version = metadata.version("torchvision")
        required = _required_torch()
    except metadata.PackageNotFoundError:  # importable without metadata: a source tree
        version, required = "(from source)", None
    if required is not None and required.split("+")[0] != torch_version.split("+")[0]:
        return f"torchvision {version} is made for torch {required}, not torch {torch_version}"
    try:
        importlib.import_module("torchvision")
    except Exception as error:  # whatever its compiled part raises (RuntimeError, OSError)
        lines = str(error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        return (
            f"torchvision {version} does not load beside torch {torch_version} ({reason}); "
            "the two must come from the same index (a CPU-only torch needs a CPU torchvision)"
        )
    return None


def import_torchvision(needed_by: str, extra: str) -> ModuleType:
    """``torchvision``, or TorchvisionUnavailable saying what `needed_by` lacks, the `extra`
    of ssanet-ops that provides it, and the command that installs the right build."""
    problem = torchvision_problem()
    if problem is None:
        return importlib.import_module("torchvision")
    fix = install_command()
    if importlib.util.find_spec("torchvision") is not None:
        # pip would keep the installed torchvision, which satisfies "torchvision".
        fix = f"pip uninstall -y torchvision && {fix}"
    raise TorchvisionUnavailable(
        f"{needed_by} needs torchvision, but {problem}. Install the torchvision made for your "
        f"torch (the '{extra}' extra of ssanet-ops) with torch pinned, so that pip keeps it: "
        f"{fix}"
    )
