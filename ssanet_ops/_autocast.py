"""Autocast for scale_correlation and scale_align: like a linear layer, under autocast their
floating inputs other than float64 are cast to the autocast dtype of their device type
(float16 or bfloat16, whichever the autocast region chose), which the kernels of both devices
take. ``_validation.autocast_dtype`` states that policy; the kernels here apply it.

They were C++ registrations until the port to torch's stable ABI (issue 11), which has no
autocast API. ``torch.library.register_autocast`` cannot replace them: it casts to one dtype
fixed when it is called (``cast_inputs``), where these ops, like ``torch.nn.functional.linear``,
follow the dtype of the region (``torch.autocast(device, dtype=torch.bfloat16)`` casts to
bfloat16, the default region of the CPU to bfloat16 and of CUDA to float16). So the autocast
kernels are registered here by hand on AutocastCPU and AutocastCUDA, as register_autocast
does its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._validation import autocast_dtype

_OPS = ("scale_correlation", "scale_align")

# Kept for the life of the process: destroying it would remove the registrations.
_library = torch.library.Library("ssanet_ops", "IMPL")


def _cast(value: object, device_type: str) -> object:
    """`value` as the kernels take it under autocast: tensors of `device_type` in the dtype of
    the autocast policy, anything else (None, other devices) as it is."""
    if isinstance(value, torch.Tensor) and value.device.type == device_type:
        return value.to(autocast_dtype(value))
    return value


def _autocast_kernel(op: torch._ops.OpOverload, device_type: str) -> Callable:
    dispatch_key = getattr(torch._C.DispatchKey, "Autocast" + device_type.upper())

    def kernel(_keys: torch._C.DispatchKeySet, *args: object) -> object:
        # Cast first: with the Autocast key excluded, torch.is_autocast_enabled says False.
        cast = [_cast(arg, device_type) for arg in args]
        # Below autocast, the op runs its autograd and device kernels on the cast inputs.
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return op(*cast)

    return kernel


for _name in _OPS:
    for _device_type in ("cpu", "cuda"):
        _library.impl(
            _name,
            _autocast_kernel(getattr(torch.ops.ssanet_ops, _name).default, _device_type),
            "Autocast" + _device_type.upper(),
            with_keyset=True,
        )
