"""LLaVA's modality-and-length grouped sampler, deterministic per (seed, epoch).

Batches hold samples of one modality (image or text-only; LLaVA marks text-only lengths negative)
and similar length, which cuts padding; mega-batches are shuffled so training still sees a random
mix over time. Every rank builds the same order; accelerate shards it into per-rank batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def _grouped(indices: list[int], lengths: list[int], megabatch: int, generator: torch.Generator) -> list[list[int]]:
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    chunks = [order[i : i + megabatch] for i in range(0, len(order), megabatch)]
    return [sorted(chunk, key=lambda i: abs(lengths[i]), reverse=True) for chunk in chunks]


class ModalityLengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: list[int], batch_size: int, world_size: int, seed: int) -> None:
        self.lengths = lengths
        self.megabatch = batch_size * world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        with_image = [i for i, n in enumerate(self.lengths) if n > 0]
        text_only = [i for i, n in enumerate(self.lengths) if n <= 0]
        megabatches = _grouped(with_image, self.lengths, self.megabatch, generator)
        megabatches += _grouped(text_only, self.lengths, self.megabatch, generator)
        # The last, partial mega-batch of each modality stays last so full ones shuffle freely.
        full = [m for m in megabatches if len(m) == self.megabatch]
        partial = [m for m in megabatches if len(m) < self.megabatch]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        for chunk in shuffled + partial:
            yield from chunk
