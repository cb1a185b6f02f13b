"""A staged dataset as a ``torch.utils.data.IterableDataset`` (kept apart so ``shards`` needs no torch)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from vlm_core.data.shards import ShardSource
from vlm_core.data.types import RawSample


class ShardDataset(IterableDataset):
    """Yields this process's share of a staged dataset's ``RawSample``s for the current epoch.

    Rank and world size are fixed when the dataset is built: given, else from
    ``torch.distributed`` (build it after ``init_process_group``: data-loader worker processes
    do not inherit the process group), else torchrun's ``RANK`` / ``WORLD_SIZE``, else one
    process. The worker slot comes from ``get_worker_info``; ``ShardSource.iter_samples`` then
    hands every shard to exactly one (rank, worker). Call ``set_epoch`` before each epoch; with
    ``persistent_workers=True`` workers keep the epoch they were started with, so leave it off.
    """

    def __init__(
        self, source: ShardSource | str, *, seed: int = 0, shuffle: bool = True, rank: int | None = None, world_size: int | None = None
    ) -> None:
        self.source = ShardSource(source) if isinstance(source, str) else source
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        found_rank, found_world = _rank_and_world_size()
        self.rank = found_rank if rank is None else rank
        self.world_size = found_world if world_size is None else world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[RawSample]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.source.iter_samples(
            self.rank, self.world_size, worker, num_workers, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle
        )


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
