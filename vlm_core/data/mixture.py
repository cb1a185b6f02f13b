"""A weighted mixture of map-style sources: one index space, bad samples skipped and counted."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vlm_core.data.encoding import SampleEncoder
from vlm_core.data.readers import Source
from vlm_core.data.types import BadSample, BadSampleStats


def weighted_indices(size: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """Indices into a source of ``size`` so each sample appears ``weight`` times per epoch:
    ``floor(weight)`` full copies plus a seeded random subset for the fractional part."""
    whole = math.floor(weight)
    extra = round((weight - whole) * size)
    parts = [np.arange(size, dtype=np.int64)] * whole
    parts.append(np.sort(rng.choice(size, size=extra, replace=False)).astype(np.int64))
    return np.concatenate(parts)


class MixtureDataset:
    """Map-style dataset over named ``(Source, weight)`` pairs.

    ``__getitem__`` returns the encoded sample, or ``None`` for a bad one (counted in
    ``bad_stats`` per dataset and reason; the collator drops it). With a strict encoder the
    first bad sample raises, naming the sample id and dataset.

    ``bad_stats`` lives in the process that encoded the sample: with DataLoader workers, gather
    it per worker/rank (``BadSampleStats.to_dict`` / ``merge``) to report totals.
    """

    def __init__(self, sources: dict[str, tuple[Source, float]], encoder: SampleEncoder, seed: int = 0) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        rng = np.random.default_rng(seed)
        self.dataset_names = list(sources)
        self.sources = [source for source, _ in sources.values()]
        self.encoder = encoder
        self.bad_stats = BadSampleStats()
        dataset_ids, sample_ids = [], []
        for d, (name, (source, weight)) in enumerate(sources.items()):
            if weight <= 0:
                raise ValueError(f"dataset {name!r} has weight {weight}; weights must be > 0")
            idx = weighted_indices(len(source), weight, rng)
            dataset_ids.append(np.full(len(idx), d, dtype=np.int64))
            sample_ids.append(idx)
        self._dataset = np.concatenate(dataset_ids)
        self._sample = np.concatenate(sample_ids)
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self._sample)

    def locate(self, index: int) -> tuple[str, int]:
        """(dataset name, index within that dataset) of mixture item ``index``."""
        return self.dataset_names[self._dataset[index]], int(self._sample[index])

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        d = int(self._dataset[index])
        name = self.dataset_names[d]
        try:
            raw = self.sources[d][int(self._sample[index])]
            return self.encoder.encode(raw, name, d)
        except BadSample as bad:
            if self.encoder.strict:
                raise bad if bad.dataset is not None else bad.located(f"#{self._sample[index]}", name)
            self.bad_stats.add(name, bad.reason)
            return None

    @property
    def lengths(self) -> list[int]:
        """Per-item LLaVA modality lengths (+ with image, - text-only) for a length-grouped sampler."""
        if self._lengths is None:
            per_source = [np.asarray(s.modality_lengths(), dtype=np.int64) for s in self.sources]
            self._lengths = [int(per_source[d][i]) for d, i in zip(self._dataset, self._sample)]
        return self._lengths
