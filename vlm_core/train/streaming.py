"""Training from streamed sources (staged shards in object storage), seekable for resume.

Each (rank, data-loader worker) — a *consumer* — reads its own share of every source: whole
blocks (shards of a staged dataset, tars of an img2dataset folder) or a strided slice of a
random-access file, so each sample is read once per epoch across the job. The Trainer must not
shard the stream again (accelerate would make every rank read all of it and drop the batches of
the others): `VLMTrainer` hands this dataset to a plain `StreamLoader`.

What a consumer reads is a *plan* computed from metadata alone (each block's index and sample count
from the manifest, the seed, the epoch, the consumer): blocks of every source, interleaved at
random in proportion to what each source still has to give, and taken ``WINDOW_BLOCKS`` at a
time; the samples of a window are shuffled together (or, with ``group_by_length``, ordered in
LLaVA's modality-pure, length-sorted mega-batches using the staged length index). Weights keep
their map-style meaning: weight 2.5 streams a source's blocks twice plus the first half of each
block (in its shuffled order) once more per epoch.

Because the plan needs no sample, a consumer's position is two numbers: plan entries consumed
and samples yielded. ``StreamLoader`` records them for every batch it hands out; a resumed run
finds the window holding the position by summing window sizes (O(blocks)), reads only the
blocks that still hold unconsumed samples and builds only those samples (``resume_from``).

Every rank yields exactly ``len(self)`` samples per epoch: distributed training needs the same
number of steps on every rank (a rank that ran out early would leave the others waiting in a
collective forever). A consumer whose share is short continues into a fresh round of its plan
(a few samples are seen twice that epoch), one whose share is long stops at the quota. A sample
the encoder rejects takes a plan entry and yields nothing; the next entries make up for it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlm_core.data.shards import assign_shards
from vlm_core.data.types import BadSample, BadSampleStats, RawSample

WINDOW_BLOCKS = 2  # blocks read and shuffled together: the memory of one consumer, in blocks
CHUNK = 1000  # samples per block of a random-access source
DATA_STATE_DIR = "data_state"


def is_streaming(source: Any) -> bool:
    return not hasattr(source, "__getitem__")


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Block:
    """Plan entries of one block: positions within a streamed block (a shard, a tar), shuffled
    by ``key`` and cut to ``size``, or ``indices`` into a random-access source. Only ``size`` is
    needed to pass a block over, so the order is made only for blocks that are read."""

    source: int
    block: int  # index into the source's stream_blocks(), or -1 for a random-access chunk
    size: int
    samples: int = 0  # samples in the streamed block
    key: str = ""
    indices: tuple[int, ...] = ()

    def positions(self) -> list[int]:
        if self.block < 0:
            return list(self.indices)
        order = list(range(self.samples))
        random.Random(self.key).shuffle(order)
        return order[: self.size]


@dataclass
class StreamPosition:
    """Where one consumer stands in its epoch: plan entries consumed, samples yielded."""

    entries: int = 0
    yielded: int = 0


class StreamingMixture(IterableDataset):
    def __init__(
        self, sources: dict[str, tuple[Any, float]], encoder, seed: int = 0, group_by_length: int | None = None
    ) -> None:
        self.dataset_names = list(sources)
        self.sources = [source for source, _ in sources.values()]
        self.weights = [weight for _, weight in sources.values()]
        self.encoder = encoder
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0
        self.bad_stats = BadSampleStats()
        self.rank, self.world_size = _rank_and_world()
        self.resume: dict[str, Any] | None = None  # a StreamLoader state to continue from (this epoch)
        self._lengths: dict[int, Any] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.resume is not None and self.resume["epoch"] != epoch:
            self.resume = None

    def __len__(self) -> int:
        """Samples this rank yields per epoch."""
        total = sum(len(s) * w for s, w in zip(self.sources, self.weights))
        return math.ceil(total / self.world_size)

    def quota(self, worker: int, workers: int) -> int:
        per_rank = len(self)
        return per_rank // workers + (1 if worker < per_rank % workers else 0)

    # -- the plan

    def _source_blocks(self, d: int, worker: int, workers: int, round_: int) -> list[Block]:
        source, weight = self.sources[d], self.weights[d]
        blocks = []
        for p in range(math.ceil(weight)):
            keep = min(1.0, weight - p)
            epoch = ((self.epoch * 1009) + round_) * math.ceil(weight) + p  # a fresh order per epoch, round and pass
            if is_streaming(source):
                named = list(enumerate(source.stream_blocks()))
                mine = assign_shards(
                    named, rank=self.rank, world_size=self.world_size, worker=worker, num_workers=workers, epoch=epoch, seed=self.seed
                )
                # Keyed by the block's index, not its name: a staged shard's name hashes its
                # content, which records where the images were read from.
                for index, (_, samples) in mine:
                    blocks.append(Block(d, index, round(samples * keep), samples, f"{self.seed}:{epoch}:{index}"))
            else:
                slot, slots = self.rank * workers + worker, self.world_size * workers
                order = np.random.default_rng([self.seed, epoch]).permutation(len(source))[slot::slots]
                order = order[: round(len(order) * keep)].tolist()
                blocks += [Block(d, -1, len(order[i : i + CHUNK]), indices=tuple(order[i : i + CHUNK])) for i in range(0, len(order), CHUNK)]
        return [b for b in blocks if b.size]

    def _windows(self, worker: int, workers: int, round_: int) -> list[list[Block]]:
        """This consumer's blocks of one round, sources interleaved, in windows."""
        queues = [self._source_blocks(d, worker, workers, round_) for d in range(len(self.sources))]
        left = [sum(b.size for b in q) for q in queues]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, round_])
        order: list[Block] = []
        while any(left):
            p = np.array(left, dtype=np.float64)
            d = int(rng.choice(len(left), p=p / p.sum()))
            block = queues[d].pop(0)
            left[d] -= block.size
            order.append(block)
        return [order[i : i + WINDOW_BLOCKS] for i in range(0, len(order), WINDOW_BLOCKS)]

    def _window_entries(self, window: list[Block], key: list[int]) -> list[tuple[int, int, int]]:
        """(source, block, position) of a window's samples in reading order."""
        entries = [(b.source, b.block, pos) for b in window for pos in b.positions()]
        rng = np.random.default_rng(key)
        if self.group_by_length is None:
            return [entries[i] for i in rng.permutation(len(entries))]
        return self._grouped(entries, rng)

    def _grouped(self, entries: list[tuple[int, int, int]], rng: np.random.Generator) -> list[tuple[int, int, int]]:
        """LLaVA's grouping within a window, from the length index (no sample is read): images
        apart from text-only, mega-batches of similar length, mega-batches in random order."""
        lengths = [self._length(*e) for e in entries]
        mega = self.group_by_length
        batches = []
        for with_image in (True, False):
            members = [i for i in rng.permutation(len(entries)).tolist() if (lengths[i] > 0) == with_image]
            for start in range(0, len(members), mega):
                chunk = members[start : start + mega]
                batches.append(sorted(chunk, key=lambda i: abs(lengths[i]), reverse=True))
        return [entries[i] for b in (batches[j] for j in rng.permutation(len(batches))) for i in b]

    def _length(self, d: int, block: int, position: int) -> int:
        """LLaVA's modality length (+ with images, - without) of one plan entry."""
        if d not in self._lengths:
            source = self.sources[d]
            if hasattr(source, "lengths"):
                index = source.lengths()
                starts = np.cumsum([0] + [n for _, n in source.stream_blocks()])
                self._lengths[d] = (np.where(index[:, 1] > 0, index[:, 0], -index[:, 0]), starts)
            else:
                self._lengths[d] = (np.asarray(source.modality_lengths()), None)
        values, starts = self._lengths[d]
        return int(values[position if starts is None else starts[block] + position])

    def plan(self, worker: int, workers: int, start: int = 0) -> Iterator[tuple[int, list[tuple[int, int, int]]]]:
        """Windows from plan entry ``start`` on, without end (rounds follow each other), as
        ``(number of the first entry, [(source, block, position), ...])``. Whole windows before
        ``start`` are passed over by their size: nothing of them is read or even ordered."""
        number = 0
        for round_ in itertools.count():
            windows = self._windows(worker, workers, round_)
            if not windows:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} got nothing to read from {self.dataset_names}: fewer shards "
                    f"than ranks x data-loader workers ({self.world_size} x {workers}); stage with smaller shards or use fewer workers"
                )
            for w, window in enumerate(windows):
                size = sum(b.size for b in window)
                if number + size > start:
                    entries = self._window_entries(window, [self.seed, self.epoch, self.rank, worker, round_, w])
                    skip = max(start - number, 0)
                    yield number + skip, entries[skip:]
                number += size

    # -- reading

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resume = self.resume if self.resume is not None and self.resume["epoch"] == self.epoch else None
        # On resume, physical worker j continues logical consumer (j + offset): the DataLoader
        # restarts its round-robin at worker 0, the uninterrupted run was at batch `batches`.
        offset = resume["batches"] % workers if resume else 0
        worker = (physical + offset) % workers
        at = StreamPosition(**resume["consumers"].get(str(worker), {})) if resume else StreamPosition()
        quota, produced = self.quota(worker, workers), at.yielded
        if produced >= quota:
            return
        for number, entries in self.plan(worker, workers, start=at.entries):
            wanted: dict[tuple[int, int], set[int]] = {}
            for d, block, position in entries:
                wanted.setdefault((d, block), set()).add(position)
            blocks: dict[tuple[int, int], dict[int, RawSample]] = {}
            for n, (d, block, position) in enumerate(entries, start=number):
                raw = self._read(d, block, position, blocks, wanted)
                encoded = self._encode(raw, d) if raw is not None else None
                if encoded is None:
                    continue
                produced += 1
                encoded["_stream"] = (worker, n + 1, produced)
                yield encoded
                if produced == quota:
                    return

    def _read(self, d: int, block: int, position: int, blocks: dict, wanted: dict) -> RawSample | None:
        source = self.sources[d]
        if block < 0:
            try:
                return source[position]
            except BadSample as bad:
                self._count_bad(bad, d, f"#{position}")
                return None
        if (d, block) not in blocks:  # one read per block and window, only the positions still wanted
            blocks[(d, block)] = source.read_block(block, wanted[(d, block)])
        return blocks[(d, block)].get(position)

    def _count_bad(self, bad: BadSample, d: int, sample_id: str) -> None:
        if self.encoder.strict:
            raise bad if bad.dataset is not None else bad.located(sample_id, self.dataset_names[d])
        self.bad_stats.add(self.dataset_names[d], bad.reason)

    def _encode(self, raw: RawSample, d: int) -> dict[str, Any] | None:
        try:
            return self.encoder.encode(raw, self.dataset_names[d], d)
        except BadSample as bad:
            self._count_bad(bad, d, raw.id)
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


class _PositionedCollate:
    """The collator, run where the batch is made (a worker), with the stream positions of the
    batch's samples taken off first and returned beside the batch."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, items: list[dict[str, Any]]) -> tuple[Any, tuple[int, int, int]]:
        positions = [item.pop("_stream") for item in items]
        return self.collate(items), positions[-1]


class StreamLoader(DataLoader):
    """A plain DataLoader over a `StreamingMixture` that passes the Trainer's epoch on to the
    stream (a new order each epoch) and knows, after each batch it hands out, where every
    consumer stands (``state_dict``), so a checkpoint can record it."""

    def __init__(self, dataset: StreamingMixture, *, collate_fn, **kwargs) -> None:
        super().__init__(dataset, collate_fn=_PositionedCollate(collate_fn), **kwargs)
        self._reset(dataset.resume if dataset.resume is not None and dataset.resume["epoch"] == dataset.epoch else None)

    def _reset(self, resume: dict[str, Any] | None) -> None:
        self.batches = resume["batches"] if resume else 0
        self.consumers: dict[str, dict[str, int]] = dict(resume["consumers"]) if resume else {}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self._reset(self.dataset.resume)

    def __iter__(self):
        for batch, (worker, entries, yielded) in super().__iter__():
            self.batches += 1
            self.consumers[str(worker)] = {"entries": entries, "yielded": yielded}
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """This rank's stream position after the last batch handed out."""
        return {
            "epoch": self.dataset.epoch,
            "batches": self.batches,
            "rank": self.dataset.rank,
            "world_size": self.dataset.world_size,
            "workers": max(self.num_workers, 1),
            "seed": self.dataset.seed,
            "consumers": dict(self.consumers),
        }


def data_state_path(checkpoint: str, rank: int) -> str:
    return os.path.join(checkpoint, DATA_STATE_DIR, f"rank-{rank}.json")


def save_data_state(checkpoint: str, state: dict[str, Any]) -> None:
    path = data_state_path(checkpoint, state["rank"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def load_data_state(checkpoint: str, mixture: StreamingMixture, workers: int) -> dict[str, Any] | None:
    """The stream position this rank saved in ``checkpoint``, when it fits this run (same world
    size, data-loader workers and seed); ``None`` otherwise (the Trainer then re-reads)."""
    path = data_state_path(checkpoint, mixture.rank)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    fits = (state.get("world_size"), state.get("workers"), state.get("seed")) == (mixture.world_size, max(workers, 1), mixture.seed)
    return state if fits else None
