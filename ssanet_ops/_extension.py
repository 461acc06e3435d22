"""Loads the compiled operators, and explains what to do when they cannot be used.

A build is the Python module ssanet_ops._C (pybind11, no torch: it only says how the build was
made and names the other files) and the op libraries it names, which reach torch through its
stable ABI only (issue 11): one build serves the torch it was built for and every later one,
on the CPU with any torch, on CUDA with a torch of the same CUDA major version.
"""

from __future__ import annotations

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


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _import_module() -> ModuleType:
    try:
        from . import _C
    except ImportError as error:
        folder = Path(__file__).resolve().parent
        reason = (
            f"the compiled extension ssanet_ops._C is missing from {folder}: the package "
            "there was not built. If that is the source folder shadowing an installed "
            "ssanet_ops (`python -m pytest` or `python` started in the source root put it on "
            "sys.path), run `pytest`, or Python from another folder"
            if not any(folder.glob("_C*"))
            else f"the compiled extension ssanet_ops._C failed to load ({error})"
        )
        raise ImportError(f"{reason}.\n{HOW_TO_BUILD}") from error
    return _C


def check_torch(info: dict, torch_version: str, torch_cuda: str | None) -> None:
    """Raises ImportError when the build `info` cannot serve this torch (`torch_version`,
    CUDA version `torch_cuda` or None for a CPU-only torch)."""
    target = info["target_torch_version"]
    if _major_minor(torch_version) < _major_minor(target):
        raise ImportError(
            f"ssanet_ops was built for torch >= {target} (with the headers of torch "
            f"{info['torch_version']}), but torch {torch_version} is installed. Upgrade torch "
            f"to {target} or later, or build ssanet_ops for this torch:\n" + HOW_TO_BUILD
        )
    if info["cuda"] and torch_cuda is not None:
        built = info["cuda_version"].split(".")[0]
        if built != torch_cuda.split(".")[0]:
            raise ImportError(
                f"ssanet_ops's CUDA kernels were built with CUDA {info['cuda_version']}, but the "
                f"installed torch {torch_version} uses CUDA {torch_cuda}: the CUDA major "
                f"versions must match. Install a torch built for CUDA {built} (or a CPU-only "
                "torch, which runs the CPU operators), or rebuild ssanet_ops with this torch:\n"
                + HOW_TO_BUILD
            )


def load() -> ModuleType:
    """Imports ssanet_ops._C, checks that its build serves the torch imported now, and loads the
    op libraries: the CPU one always, the CUDA one when both torch and the build have CUDA."""
    module = _import_module()
    info = module.build_info()
    check_torch(info, torch.__version__, torch.version.cuda)
    folder = Path(module.__file__).resolve().parent
    torch.ops.load_library(str(folder / info["cpu_library"]))
    if info["cuda"] and torch.version.cuda is not None:
        torch.ops.load_library(str(folder / info["cuda_library"]))
    return module


def simulator_library() -> Path | None:
    """The op library of the host simulator of the CUDA kernels, or None when the build has
    none (SSANET_OPS_SIM=off)."""
    module = _import_module()
    name = module.build_info()["simulator_library"]
    return None if name is None else Path(module.__file__).resolve().parent / name


def simulator_built() -> bool:
    """Whether the build made the host simulator of the CUDA kernels."""
    return simulator_library() is not None
