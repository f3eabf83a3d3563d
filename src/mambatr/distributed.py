"""Data-parallel evaluation under ``torchrun`` (PyTorch's own launcher and ``torch.distributed``).

Sharding is by whole batches: the single-process run's batches are numbered 0, 1, 2, ... and rank r
evaluates batches r, r + N, r + 2N, ... Every batch holds exactly the images it holds in a
single-process run, so every logit is computed on the same batch as there and nothing is padded or
repeated (``DistributedSampler`` pads the last shard with repeated images, which would be counted).
Counts and loss sums are all-reduced; rank 0 alone prints and writes files.

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the run; the default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``) under torchrun."""
        if device == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return torch.device(device)


SINGLE = Context()


def launched() -> bool:
    """True inside a torchrun worker of a run with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> Context:
    """Join the process group torchrun set up: ``nccl`` for GPUs, ``gloo`` for CPUs."""
    if not launched():
        return SINGLE
    missing = [key for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun")
    context = Context(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        backend="nccl" if device.startswith("cuda") else "gloo",
    )
    if context.backend == "nccl":
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(context.backend, rank=context.rank, world_size=context.world_size)
    return context


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's batches of ``range(size)``: batch b (``[b * batch_size, (b + 1) * batch_size)``)
    goes to rank ``b % world_size``. Usable as a DataLoader ``batch_sampler``."""

    def __init__(self, size: int, batch_size: int, context: Context = SINGLE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.size, self.batch_size, self.context = size, batch_size, context

    def _batches(self) -> range:
        count = -(-self.size // self.batch_size)
        return range(self.context.rank, count, self.context.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield list(range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(self._batches())

    def images(self) -> int:
        """How many images this rank evaluates."""
        return sum(min(self.batch_size, self.size - b * self.batch_size) for b in self._batches())


def all_reduce(values: list[float], context: Context, op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks, in float64; identity in a single process."""
    if not context.distributed:
        return values
    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def all_gather_list(items: list, context: Context) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order; the list itself in one process."""
    if not context.distributed:
        return items
    parts: list[list] = [[] for _ in range(context.world_size)]
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
