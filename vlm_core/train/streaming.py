"""Training from streamed sources (staged shards in object storage).

Each (rank, data-loader worker) reads its own share of every source — whole shards for staged
data, a strided slice for random-access files — so each sample is read once per epoch across the
job. The Trainer must not shard the stream again (accelerate would make every rank read all of
it and drop the batches of the others): `VLMTrainer` hands this dataset to a plain DataLoader.

Weights keep their map-style meaning: a source of weight 2.5 is streamed twice plus half of it
once more (a seeded coin per sample) per epoch. Sources are interleaved at random in proportion
to what each still has to give, through a small shuffle buffer.

Every rank yields exactly ``len(self)`` samples per epoch: distributed training needs the same
number of steps on every rank (a rank that ran out early would leave the others waiting in a
collective forever). Shards rarely split evenly, so a consumer whose share is short continues
into a fresh pass over its own shards (a few samples are seen twice that epoch), and one whose
share is long stops at the quota (a few samples wait for a later epoch).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlm_core.data.types import BadSample, BadSampleStats, RawSample

SHUFFLE_BUFFER = 512


def is_streaming(source: Any) -> bool:
    return not hasattr(source, "__getitem__")


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamingMixture(IterableDataset):
    def __init__(self, sources: dict[str, tuple[Any, float]], encoder, seed: int = 0) -> None:
        self.dataset_names = list(sources)
        self.sources = [source for source, _ in sources.values()]
        self.weights = [weight for _, weight in sources.values()]
        self.encoder = encoder
        self.seed = seed
        self.epoch = 0
        self.bad_stats = BadSampleStats()
        self.rank, self.world_size = _rank_and_world()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (an estimate when shards are uneven)."""
        total = sum(len(s) * w for s, w in zip(self.sources, self.weights))
        return math.ceil(total / self.world_size)

    def _quota(self, worker: int, workers: int) -> int:
        per_rank = len(self)
        return per_rank // workers + (1 if worker < per_rank % workers else 0)

    def _passes(self, d: int, worker: int, workers: int, rng: np.random.Generator, round_: int) -> Iterator[RawSample]:
        source, weight = self.sources[d], self.weights[d]
        for p in range(math.ceil(weight)):
            keep = min(1.0, weight - p)
            # a fresh shard order per epoch, per extra round and per pass
            epoch = ((self.epoch * 1009) + round_) * math.ceil(weight) + p
            if is_streaming(source):
                samples = source.iter_samples(
                    self.rank, self.world_size, worker, workers, epoch=epoch, seed=self.seed, shuffle=True
                )
            else:
                slot, slots = self.rank * workers + worker, self.world_size * workers
                order = np.random.default_rng([self.seed, epoch]).permutation(len(source))[slot::slots]
                samples = (source[int(i)] for i in order)
            for sample in samples:
                if keep >= 1.0 or rng.random() < keep:
                    yield sample

    def _rounds(self, worker: int, workers: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """This consumer's encoded samples, one weighted pass of its share after another."""
        for round_ in itertools.count():
            streams = {d: self._passes(d, worker, workers, rng, round_) for d in range(len(self.sources))}
            share = {d: max(len(self.sources[d]) * self.weights[d], 1e-9) for d in streams}
            produced = 0
            while streams:
                keys = list(streams)
                p = np.array([share[d] for d in keys])
                d = keys[rng.choice(len(keys), p=p / p.sum())]
                raw = next(streams[d], None)
                if raw is None:
                    del streams[d]
                    continue
                encoded = self._encode(raw, d)
                if encoded is not None:
                    produced += 1
                    yield encoded
            if produced == 0:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} got no usable sample from {self.dataset_names}: fewer shards "
                    f"than ranks x data-loader workers ({self.world_size} x {workers}), or every sample bad; "
                    "stage with smaller shards or use fewer workers"
                )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        quota = self._quota(worker, workers)
        stream = self._rounds(worker, workers, rng)
        buffer = list(itertools.islice(stream, min(SHUFFLE_BUFFER, quota)))
        for produced in range(quota):
            slot = int(rng.integers(len(buffer)))
            sample = buffer[slot]
            if quota - produced > len(buffer):
                buffer[slot] = next(stream)
            else:
                buffer.pop(slot)
            yield sample

    def _encode(self, raw: RawSample, d: int) -> dict[str, Any] | None:
        name = self.dataset_names[d]
        try:
            return self.encoder.encode(raw, name, d)
        except BadSample as bad:
            if self.encoder.strict:
                raise bad if bad.dataset is not None else bad.located(raw.id, name)
            self.bad_stats.add(name, bad.reason)
            return None


def first_samples(source: Any, limit: int) -> Iterator[RawSample]:
    """Up to ``limit`` samples of any source, in its stored order (for the tokenizer corpus)."""
    if is_streaming(source):
        for i, sample in enumerate(source.iter_samples(0, 1, 0, 1, epoch=0, seed=0, shuffle=False)):
            if i >= limit:
                return
            yield sample
    else:
        for i in range(min(len(source), limit)):
            yield source[i]


class StreamLoader(DataLoader):
    """A plain DataLoader that passes the Trainer's epoch on to the stream (a new shard order)."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
