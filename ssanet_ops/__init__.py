"""ssanet_ops: C++/CUDA operators of the SSANET network for fine-grained recognition.

The operators are registered with the PyTorch dispatcher as ``torch.ops.ssanet_ops.*``; the
functions here check their arguments and call them. ``ssanet_ops.reference`` holds plain PyTorch
versions of each, and ``ssanet_ops.nn`` the modules.
"""

from __future__ import annotations

import torch.fx

from . import _extension

_C = _extension.load()

# The registrations need the schemas that loading _C defines.
from . import _autocast, _autograd, _fake, nn, reference, testing  # noqa: E402, F401  (registers autocast, autograd and fake kernels)
from ._roi_crop import BATCH_INDEX_LIMIT, check_boxes  # noqa: E402
from ._validation import MAX_SAMPLING_RATIO  # noqa: E402
from .ops import (  # noqa: E402
    multiscale_roi_crop,
    oriented_pool,
    scale_align,
    scale_candidates,
    scale_correlation,
    scale_factors,
)

# Leaves of torch.fx.symbolic_trace when called as ssanet_ops.<op> (torch.fx.wrap patches the
# globals of the module that calls it; ops.py wraps its own).
torch.fx.wrap("oriented_pool")
torch.fx.wrap("scale_candidates")
torch.fx.wrap("multiscale_roi_crop")
torch.fx.wrap("scale_correlation")
torch.fx.wrap("scale_align")

__version__: str = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled operators were built.

    Returns a dict with ``version``; ``torch_version`` (the torch whose headers it was compiled
    with) and ``target_torch_version`` (the oldest torch it runs on: it uses that torch's
    stable ABI only); ``cuda`` (whether the CUDA kernels are compiled in), ``cuda_version``,
    ``cuda_architectures`` (a list such as ``["90-real"]``), ``cxx_compiler``,
    ``cuda_compiler``; ``cuda_simulator`` (whether the host simulator of the CUDA kernels,
    ``ssanet_ops.testing.simulate_cuda``, is built); and the file names of the op libraries
    (``cpu_library``, ``cuda_library``, ``simulator_library``; None where not built).

    >>> info = ssanet_ops.build_info()
    >>> info["version"] == ssanet_ops.__version__, info["target_torch_version"]
    (True, '2.11')
    """
    info = dict(_C.build_info())
    info["cuda_simulator"] = info["simulator_library"] is not None
    if info["cuda_architectures"] is not None:
        info["cuda_architectures"] = info["cuda_architectures"].split(",")
    return info


__all__ = [
    "BATCH_INDEX_LIMIT",
    "MAX_SAMPLING_RATIO",
    "build_info",
    "check_boxes",
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
