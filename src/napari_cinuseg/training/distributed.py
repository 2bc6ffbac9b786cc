"""Training on several processes (``torchrun``): DistributedDataParallel, NCCL on GPUs and gloo on
the CPU, and the split of one *global* batch across ranks.

Launch any training command under torchrun and it runs data-parallel::

    torchrun --nproc_per_node 4 -m napari_cinuseg.cli step --prior base.cinuseg.pt \\
        --new-class Other --data ../shared/data/consep --out step1.cinuseg.pt

- Every rank builds the same model from the same seed and loads the frozen prior itself (the
  prior is replicated, never sent); DDP keeps the weights equal by averaging the gradients.
- ``batch_size`` stays the *global* batch: each of the W ranks takes ``batch_size / W`` crops of
  the same global batch that one process would take (:class:`GlobalBatchSampler`), so a W-rank
  run follows the one-process run up to floating-point summation order. Because the losses are
  means over images, the averaged gradient is the one-process gradient. (BatchNorm in a *base*
  step sees the rank's crops only, as in every DDP training without SyncBatchNorm; incremental
  steps freeze BatchNorm.)
- Only rank 0 writes model files; every rank returns the trained model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["GlobalBatchSampler", "all_reduce_mean", "init_from_env", "is_main", "rank", "world_size"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1),
    once; returns the device this rank trains on (``cuda:LOCAL_RANK`` on GPUs). Without torchrun
    it does nothing and returns ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a number over the ranks (the value itself in one process)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def average_gradients(params) -> None:
    """Average the gradients of parameters DDP does not own (a method's training-only heads)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Indices of this rank's share of every global batch of an epoch.

    Epoch e shuffles the dataset with a generator seeded by (seed, e) and cuts it into
    ``len // global_batch`` global batches (the rest is dropped); rank r of W takes the r-th
    contiguous ``global_batch / W`` of each. With W = 1 this is a seeded shuffle with drop_last.
    """

    def __init__(self, length: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(
                f"the batch size ({global_batch}) must be a multiple of the number of processes ({world}); "
                "choose another --batch-size or --nproc_per_node"
            )
        self.length, self.global_batch, self.seed = length, global_batch, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def __len__(self) -> int:
        return (self.length // self.global_batch) * self.local_batch

    def __iter__(self) -> Iterator[int]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        b, lb = self.global_batch, self.local_batch
        for k in range(self.length // b):
            yield from perm[k * b + self.rank * lb : k * b + (self.rank + 1) * lb].tolist()
