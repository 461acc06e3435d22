"""Shared fixtures: every op test runs on the CPU, and on CUDA where a GPU is present."""

from __future__ import annotations

import pytest
import torch

import ssanet_ops

CUDA_AVAILABLE = torch.cuda.is_available() and ssanet_ops.build_info()["cuda"]

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a GPU and the CUDA kernels"),
    ),
]

requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a GPU and the CUDA kernels")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes most of a minute on a small CPU (deselect with -m 'not slow')"
    )
