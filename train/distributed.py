"""Processes and devices: rank and world size from torchrun's environment, the device, DDP's process group (gloo
on CPU, nccl on GPU), rank 0's results shared with every rank, and the gradient average DDP cannot do.

With one process (no torchrun) every function here is a no-op or returns at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig, TrainError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: `rank` of `world_size` processes, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder."""
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """Rank and device from torchrun's environment; DDP's process group with gloo on CPU, nccl on GPU."""
    d = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("device cuda was asked for but torch sees no CUDA device; use --device cpu")
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    elif kind == "cpu":
        device = torch.device("cpu")
    else:
        raise TrainError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if d.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return d, device


def on_main(d: Dist, fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0; its result, or its TrainError, on every rank (so that no rank waits for a failed one).
    The result must be small: it is pickled."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except TrainError as e:
            error = str(e)
    if d.world_size > 1:
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise TrainError(error)
    return result


def barrier(d: Dist) -> None:
    """Wait for every rank."""
    if d.world_size > 1:
        dist.barrier()


def shutdown(d: Dist, *, wait: bool) -> None:
    """End the process group; with `wait`, after every rank got here (after a failure the other ranks are not at
    the barrier: do not wait for them)."""
    if d.world_size > 1 and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def data_parallel(net: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """`net` wrapped in DistributedDataParallel with more than one process; `net` itself otherwise."""
    if d.world_size == 1:
        return net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_grads(module: nn.Module, world_size: int) -> None:
    """Average gradients over processes (the discriminator's: it runs twice per step, which DDP forbids)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(reduced)
