"""The stream of training samples: which keys (image index, sample seed) each process trains on, in which order,
batch after batch, and the DataLoader over it.

A training sample of `train.data.TrainDataset` is a pure function of its key, and batch k of a rank is a pure
function of (seed, rank, world size, k): the sample stream is the same whatever the number of DataLoader workers,
and a run resumed at iteration N sees the batches it would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .data import TrainDataset

__all__ = ["InfiniteBatchSampler", "build_train_loader"]


def _sample_seed(seed: int, rank: int, position: int) -> int:
    """A 63-bit seed for stream position `position` of rank `rank`, a hash of (seed, rank, position)."""
    hi, lo = np.random.SeedSequence([seed, rank, position]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


class InfiniteBatchSampler(Sampler[list[tuple[int, int]]]):
    """An endless, resumable stream of batches of keys (image index, sample seed) for `TrainDataset`.

    The stream of a rank is the concatenation of epochs. Epoch e is `torch.randperm(num_images)` drawn from
    `torch.Generator().manual_seed(seed + e)`, padded to a multiple of world_size by repeating its head (as
    `DistributedSampler` does) and sharded as `padded[rank::world_size]`: every rank gets ceil(num_images /
    world_size) positions per epoch and no two ranks share a position. Batch k holds stream positions
    k·batch_size … (k+1)·batch_size − 1, running on into the next epoch as needed. The sample seed of position
    p is a 63-bit hash of (seed, rank, p).

    `batch(k)` is a pure function of k, so resuming at iteration N is constructing with start_batch=N.
    There is no `__len__`: the stream is infinite. Pass it to a DataLoader as `batch_sampler`.

    Args:
        num_images: the dataset length, > 0.
        batch_size: keys per batch (per rank), > 0.
        seed: non-negative base seed of the permutations and sample seeds.
        rank, world_size: this process's shard, 0 <= rank < world_size.
        start_batch: the index of the first batch `__iter__` yields, >= 0.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be positive, got {num_images}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be non-negative, got {start_batch}")
        self.num_images, self.batch_size = num_images, batch_size
        self.seed, self.rank, self.world_size, self.start_batch = seed, rank, world_size, start_batch
        self.shard_len = -(-num_images // world_size)  # positions of one rank per epoch
        self._shards: dict[int, list[int]] = {}  # a few recent epochs

    def _shard(self, epoch: int) -> list[int]:
        """This rank's image indices of `epoch`, in stream order."""
        shard = self._shards.get(epoch)
        if shard is None:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_images, generator=g).tolist()
            padding = self.shard_len * self.world_size - self.num_images
            perm += (perm * -(-padding // self.num_images))[:padding]
            shard = perm[self.rank:: self.world_size]
            if len(self._shards) >= 4:
                self._shards.pop(min(self._shards))
            self._shards[epoch] = shard
        return shard

    def batch(self, k: int) -> list[tuple[int, int]]:
        """Batch k of this rank: batch_size keys (image index, sample seed)."""
        if k < 0:
            raise ValueError(f"batch index must be non-negative, got {k}")
        keys = []
        for p in range(k * self.batch_size, (k + 1) * self.batch_size):
            epoch, offset = divmod(p, self.shard_len)
            keys.append((self._shard(epoch)[offset], _sample_seed(self.seed, self.rank, p)))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k in itertools.count(self.start_batch):
            yield self.batch(k)


def build_train_loader(dataset: TrainDataset, *, batch_size: int, seed: int, num_workers: int, rank: int = 0,
                       world_size: int = 1, start_batch: int = 0, pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader over `dataset` with an `InfiniteBatchSampler` as its batch_sampler.

    Batches are dicts {"lr": (B, 3, h, w), "hr": (B, 3, h·scale, w·scale), "name": list of B str, "skipped":
    list of B str} (`TrainDataset.__getitem__`). With
    num_workers 0 it loads in this process; otherwise the workers persist and prefetch 2 batches each. The
    batches do not depend on num_workers.
    """
    sampler = InfiniteBatchSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size,
                                   start_batch=start_batch)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )
