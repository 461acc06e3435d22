"""Which implementation of the ssanet_ops operators the model calls.

By default the model runs the compiled kernels (``ssanet_ops.oriented_pool``,
``multiscale_roi_crop``, ``scale_align``). Inside ``with ssanet.use_reference_ops():`` it runs
the plain PyTorch versions of ``ssanet_ops.reference`` instead, with the same parameters, so the
two can be timed and compared end to end (benchmarks/bench_model.py). The switch is read at
every forward, so one model serves both; ``torch.compile`` guards on it and recompiles when it
changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import ssanet_ops
import ssanet_ops.reference

__all__ = ["operators", "use_reference_ops"]

_use_reference = False


@contextlib.contextmanager
def use_reference_ops(enabled: bool = True) -> Iterator[None]:
    """Within this context every SSANet forward calls ``ssanet_ops.reference`` (enabled=True)
    or the compiled kernels (enabled=False); the previous choice returns on exit."""
    global _use_reference
    previous = _use_reference
    _use_reference = enabled
    try:
        yield
    finally:
        _use_reference = previous


def operators() -> ModuleType:
    """``ssanet_ops.reference`` inside :func:`use_reference_ops`, else ``ssanet_ops``."""
    return ssanet_ops.reference if _use_reference else ssanet_ops
