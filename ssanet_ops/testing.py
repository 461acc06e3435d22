"""Testing helpers: run the CUDA kernels' own code on the CPU.

The CUDA kernels are also compiled for a host simulator of CUDA (``csrc/common/simulation.h``),
built into the op library ``libssanet_ops_sim.so`` unless the build had ``SSANET_OPS_SIM=off``
(``ssanet_ops.build_info()["cuda_simulator"]``). It registers them as
``torch.ops.ssanet_ops_sim.*``, with the schemas of ``torch.ops.ssanet_ops.*``, and
:func:`simulate_cuda` routes the ops' CPU calls to them, so that the CUDA code is tested
against the same assertions as the CPU kernels on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch

from . import _extension, _tensor_scales

__all__ = [
    "NotSimulatedError",
    "simulate_cuda",
    "simulated_ops",
    "simulating",
    "simulator_available",
]

SIM_NAMESPACE = "ssanet_ops_sim"


class NotSimulatedError(NotImplementedError):
    """An op called inside :func:`simulate_cuda` whose CUDA kernels are not simulated yet.

    >>> issubclass(ssanet_ops.testing.NotSimulatedError, NotImplementedError)
    True
    """


_simulator = None  # the Simulator once its library is loaded
_schemas = None  # the torch.library.Library that defines ssanet_ops_sim's schemas
_active = None  # the Library that routes ssanet_ops's CPU kernels while simulate_cuda() runs
_depth = 0
_sim_names: set[str] = set()  # the ops defined in ssanet_ops_sim


def simulating() -> bool:
    """Whether a :func:`simulate_cuda` block is active.

    >>> from ssanet_ops.testing import simulate_cuda, simulating
    >>> simulating()
    False
    >>> with simulate_cuda():
    ...     simulating()
    True
    """
    return _depth > 0


def _op_names() -> list[str]:
    return sorted(
        name.removeprefix("ssanet_ops::")
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("ssanet_ops::")
    )


def _kernel_ops() -> list[str]:
    """The ops simulate_cuda() routes: all but those written in Python on top of other ops
    (the tensor-scales ops), which keep their CPU kernels and reach the simulated ones."""
    return [name for name in _op_names() if name not in _tensor_scales.OPS]


def simulator_available() -> bool:
    """Whether :func:`simulate_cuda` can run: the simulator is built, or
    ``SSANET_OPS_SIM_LIBRARY`` names a build of it (benchmarks/sim_coverage.py's).

    >>> ssanet_ops.testing.simulator_available()
    True
    """
    return _extension.simulator_built() or bool(os.environ.get("SSANET_OPS_SIM_LIBRARY"))


class Simulator:
    """The simulator's own ops (csrc/ssanet_ops_sim.cpp): the launch geometry every kernel uses,
    and self-tests of the simulated CUDA runtime."""

    _ops = getattr(torch.ops, SIM_NAMESPACE)

    def grid_stride(self, count: int) -> tuple[int, int, int]:
        """(blocks, threads, index bits) of a grid-stride loop over `count` items
        (common/launch.h)."""
        return tuple(self._ops._grid_stride(count))

    def set_int32_index_limit(self, limit: int) -> int:
        """Sets the largest index a simulated launch may form in int32; returns the previous."""
        return self._ops._set_int32_index_limit(limit)

    def barrier_exchange(
        self, blocks: int, threads: int, divergent: bool = False
    ) -> tuple[list[int], list[int]]:
        """Self-test of __syncthreads and shared memory: (values read from the neighbour,
        dynamic shared memory before the block wrote it)."""
        values, poison = self._ops._barrier_exchange(blocks, threads, divergent)
        return values.tolist(), poison.tolist()

    def multiply_add(self, a: float, b: float, c: float) -> float:
        """Self-test of contraction: a * b + c in a kernel, in float32."""
        return self._ops._multiply_add(a, b, c)

    @property
    def host_fma(self) -> bool:
        """Whether the simulator runs the host's FMA instructions (nvcc's contraction)."""
        return self._ops._host_fma()

    def atomic_order(self, blocks: int, threads: int) -> list[int]:
        """Self-test of atomicAdd: the order in which the grid's threads reached it."""
        return self._ops._atomic_order(blocks, threads).tolist()


def load_simulator() -> Simulator:
    """Loads the simulator's op library after defining its kernels' schemas (from
    ``SSANET_OPS_SIM_LIBRARY`` when that names a file)."""
    global _simulator, _schemas
    if _simulator is None:
        if not simulator_available():
            raise RuntimeError(
                "the CUDA simulator is not built (ssanet_ops was built with SSANET_OPS_SIM=off). "
                "Rebuild with SSANET_OPS_SIM=on.\n" + _extension.HOW_TO_BUILD
            )
        # Copies of ssanet_ops's own schemas, so the two can never differ.
        schemas = torch.library.Library(SIM_NAMESPACE, "DEF")
        for name in _op_names():
            _sim_names.add(name)
            schema = str(getattr(torch.ops.ssanet_ops, name).default._schema)
            schemas.define(schema.removeprefix("ssanet_ops::"))
        _schemas = schemas
        path = os.environ.get("SSANET_OPS_SIM_LIBRARY") or _extension.simulator_library()
        torch.ops.load_library(str(path))
        _simulator = Simulator()
    return _simulator


def simulated_ops() -> list[str]:
    """The ssanet_ops ops whose CUDA kernels the simulator runs (their backward ops included).

    >>> [name for name in ssanet_ops.testing.simulated_ops() if not name.startswith("_")]
    ['multiscale_roi_crop', 'oriented_pool', 'scale_align', 'scale_candidates', 'scale_correlation']
    """
    load_simulator()
    return [
        name
        for name in sorted(_sim_names)
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"{SIM_NAMESPACE}::{name}", "CPU")
    ]


def _route_to_simulator(name: str):
    simulated = getattr(getattr(torch.ops, SIM_NAMESPACE), name).default

    def kernel(*args, **kwargs):
        return simulated(*args, **kwargs)

    return kernel


def _not_simulated(name: str):
    def kernel(*args, **kwargs):
        raise NotSimulatedError(
            f"ssanet_ops.{name}: its CUDA kernels are not simulated yet (inside "
            "ssanet_ops.testing.simulate_cuda(), CPU tensors run the CUDA kernels' code)"
        )

    return kernel


@contextlib.contextmanager
def simulate_cuda(int32_index_limit: int | None = None) -> Iterator[None]:
    """Inside this block, every ssanet_ops op called with CPU tensors runs the code of its CUDA
    kernels in the host simulator instead of its CPU kernels: forward and backward (through the
    same autograd), every dtype the CUDA kernels take (float16 and bfloat16 included), the
    deterministic or the atomic backward as ``torch.are_deterministic_algorithms_enabled()``
    says, scales given as a list or as a tensor. Launches run synchronously, blocks and threads
    in a shuffled order (set ``SSANET_OPS_SIM_SEED`` to fix it). An op whose kernels are not
    simulated raises :class:`NotSimulatedError`.

    The routing is a dispatcher registration, so it holds for every thread of the process
    while the block runs. Blocks nest.

    Args:
        int32_index_limit: the largest index a launch may form in int32 (``2**31 - 1``, as on
            a GPU, when None). A small limit runs the int64-indexed kernels on small tensors.

    Example: the CUDA kernels' float16 code on the CPU, forward and backward.

    >>> from ssanet_ops.testing import simulate_cuda
    >>> x = torch.randn(2, 8, 7, 7, dtype=torch.float16, requires_grad=True)
    >>> with simulate_cuda():
    ...     simulated = ssanet_ops.oriented_pool(x)
    ...     simulated.float().sum().backward()
    >>> torch.testing.assert_close(simulated, ssanet_ops.reference.oriented_pool(x))
    """
    global _active, _depth
    simulator = load_simulator()
    previous_limit = None
    if int32_index_limit is not None:
        previous_limit = simulator.set_int32_index_limit(int32_index_limit)
    if _depth == 0:
        simulated = set(simulated_ops())
        library = torch.library.Library("ssanet_ops", "IMPL")
        with warnings.catch_warnings():
            # Replacing the CPU kernels is the point: not worth the dispatcher's warning, which
            # some torch releases (2.13) give on the first override of a process.
            warnings.filterwarnings("ignore", "Warning only once for all operators", UserWarning)
            for name in _kernel_ops():
                kernel = _route_to_simulator(name) if name in simulated else _not_simulated(name)
                # allow_override: an op whose CPU kernel was registered from Python (torch
                # 2.11 refuses to replace those otherwise).
                library.impl(name, kernel, "CPU", allow_override=True)
        _active = library
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _active._destroy()  # the CPU kernels are back
            _active = None
        if previous_limit is not None:
            simulator.set_int32_index_limit(previous_limit)
