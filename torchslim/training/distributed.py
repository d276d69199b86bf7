"""Data-parallel training on one machine or many, as `torchrun --nproc_per_node N` starts it.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `start()` joins the
process group with gloo on CPU and NCCL on CUDA. The reference loop then wraps the model in
DistributedDataParallel and splits every global batch across the processes (each sees
batch_size / world consecutive samples of the same shuffled order, so the union of the shards is
the global batch one process would see). DDP averages the gradients, so N processes follow the
single-process loss curve up to float summation order. BatchNorm is the exception: its batch
statistics are per process (SyncBatchNorm needs CUDA), so BN models drift apart slightly.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import SlimError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (or anything else that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The process group this process is in (a world of one when none was started)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def device_for(world: World, requested: torch.device) -> torch.device:
    """One GPU per process (by LOCAL_RANK) when training on CUDA; CPU stays CPU."""
    if requested.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return requested


@contextlib.contextmanager
def started(device: torch.device):
    """Join the torchrun process group for the block (gloo on CPU, NCCL on CUDA) and leave it after;
    a plain single process passes through."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if not dist.is_available():
        raise SlimError("this PyTorch build has no torch.distributed", "run one process, or install a build with distributed support")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise SlimError(f"WORLD_SIZE is set but {key} is not", "start distributed runs with torchrun --nproc_per_node N")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` in a world of more than one process (else `model`)."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[device.index])
    return DDP(model)


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (itself in a world of one)."""
    if world.size == 1:
        return value
    v = value.detach().clone().float()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / world.size


def gather(obj, world: World) -> list:
    """Every process's `obj`, in rank order (picklable objects)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
