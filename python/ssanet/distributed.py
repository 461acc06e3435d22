"""Process setup for training: one process, or one of a ``torchrun`` job (DistributedDataParallel
with NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["Distributed", "all_gather", "all_reduce", "setup_distributed", "sharded_loader"]


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | torch.device | None = None) -> Distributed:
    """Joins the ``torchrun`` process group (NCCL on CUDA, gloo on CPU) when ``WORLD_SIZE`` > 1.

    ``device``: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    initialized_here = False
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend)
        initialized_here = True
    return Distributed(rank, world_size, local_rank, device, initialized_here)


def all_gather(context: Distributed, value: Any) -> list[Any]:
    """`value` of every process, in rank order (``[value]`` without a job)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    torch_dist.all_gather_object(gathered, value)
    return gathered


def all_reduce(context: Distributed, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes, in place."""
    if context.enabled:
        torch_dist.all_reduce(tensor)
    return tensor


def teardown(context: Distributed) -> None:
    """Leaves the process group if :func:`setup_distributed` joined it."""
    if context.initialized_here:
        torch_dist.destroy_process_group()


def sharded_loader(
    dataset: Dataset,
    context: Distributed,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader of this process's shard of `dataset` (a DistributedSampler, which with
    `shuffle` reshuffles per ``loader.sampler.set_epoch``, with one `seed` on every process)."""
    sampler = DistributedSampler(
        dataset,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        pin_memory=context.device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,
    )
