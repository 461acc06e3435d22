"""ssanet_ops: C++/CUDA operators of the SSANET network for fine-grained recognition.

The operators are registered with the PyTorch dispatcher as ``torch.ops.ssanet_ops.*``; the
functions here check their arguments and call them. ``ssanet_ops.reference`` holds plain PyTorch
versions of each, and ``ssanet_ops.nn`` the modules.
"""

from __future__ import annotations

from . import _extension

_C = _extension.load()

# The registrations need the schemas that loading _C defines.
from . import _autograd, _fake, nn, reference, testing  # noqa: E402, F401  (registers autograd and fake kernels)  # noqa: E402
from .ops import (  # noqa: E402
    multiscale_roi_crop,
    oriented_pool,
    scale_align,
    scale_candidates,
    scale_correlation,
    scale_factors,
)

__version__: str = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled extension was built.

    Returns a dict with ``version``, ``torch_version`` (the torch it was compiled against),
    ``cuda`` (whether the CUDA kernels are compiled in), ``cuda_version``,
    ``cuda_architectures`` (a list such as ``["90-real"]``), ``cxx_compiler``,
    ``cuda_compiler`` and ``cuda_simulator`` (whether the host simulator of the CUDA kernels,
    ``ssanet_ops.testing.simulate_cuda``, is built).
    """
    info = dict(_C.build_info())
    info["cuda_simulator"] = _extension.simulator_built()
    if info["cuda_architectures"] is not None:
        info["cuda_architectures"] = info["cuda_architectures"].split(",")
    return info


__all__ = [
    "build_info",
    "multiscale_roi_crop",
    "nn",
    "oriented_pool",
    "reference",
    "scale_align",
    "scale_candidates",
    "scale_correlation",
    "scale_factors",
    "testing",
    "__version__",
]
