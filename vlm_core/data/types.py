"""The data layer's small shared types: a raw sample, the bad-sample error and its tally."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ImageRef = str | bytes
"""A URL (already resolved against the dataset's image root) or the encoded image itself."""

Conversation = list[dict[str, str]]
"""LLaVA turns: ``{"from": "human" | "gpt" | "system", "value": str}``."""


@dataclass
class RawSample:
    id: str
    images: list[ImageRef]
    conversations: Conversation
    meta: dict[str, Any] = field(default_factory=dict)


BAD_SAMPLE_REASONS = (
    "missing_image",
    "corrupt_image",  # undecodable bytes
    "image_count_mismatch",
    "too_long",
    "no_assistant_turn",
    "no_answer",  # an assistant turn, but empty
    "duplicate_id",  # an id seen before in the same source (ids key the encoded-sample cache)
    "malformed",
)


class BadSample(Exception):
    """A sample that cannot be trained on. ``reason`` is one of ``BAD_SAMPLE_REASONS``.

    Non-strict datasets count and skip these; strict ones re-raise with the sample id and the
    dataset name filled in, so the message points at the record to fix.
    """

    def __init__(self, reason: str, detail: str = "", *, sample_id: str | None = None, dataset: str | None = None):
        if reason not in BAD_SAMPLE_REASONS:
            raise ValueError(f"unknown bad-sample reason {reason!r}; allowed: {', '.join(BAD_SAMPLE_REASONS)}")
        self.reason = reason
        self.detail = detail
        self.sample_id = sample_id
        self.dataset = dataset
        super().__init__(str(self))

    def located(self, sample_id: str, dataset: str) -> BadSample:
        return BadSample(self.reason, self.detail, sample_id=sample_id, dataset=dataset)

    def __str__(self) -> str:
        where = ""
        if self.sample_id is not None or self.dataset is not None:
            where = f"sample {self.sample_id!r} of dataset {self.dataset!r}: "
        return f"{where}{self.reason}" + (f" ({self.detail})" if self.detail else "")

    def __reduce__(self):  # keep the fields across process boundaries (DataLoader workers)
        return (_rebuild_bad_sample, (self.reason, self.detail, self.sample_id, self.dataset))


def _rebuild_bad_sample(reason: str, detail: str, sample_id: str | None, dataset: str | None) -> BadSample:
    return BadSample(reason, detail, sample_id=sample_id, dataset=dataset)


class BadSampleStats:
    """Counts of skipped samples per (dataset, reason).

    Plain data (``to_dict`` / ``from_dict``) so per-worker or per-rank tallies can be gathered
    (e.g. ``torch.distributed.all_gather_object``) and summed with ``merge`` or ``+``.
    """

    def __init__(self, counts: dict[tuple[str, str], int] | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter(counts or {})

    def add(self, dataset: str, reason: str, n: int = 1) -> None:
        self.counts[(dataset, reason)] += n

    def merge(self, other: BadSampleStats) -> BadSampleStats:
        self.counts.update(other.counts)
        return self

    def __add__(self, other: BadSampleStats) -> BadSampleStats:
        return BadSampleStats(dict(self.counts)).merge(other)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_dataset(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (dataset, _), n in self.counts.items():
            out[dataset] += n
        return dict(out)

    def to_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (dataset, reason), n in sorted(self.counts.items()):
            out.setdefault(dataset, {})[reason] = n
        return out

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, int]]) -> BadSampleStats:
        return cls({(d, r): n for d, reasons in data.items() for r, n in reasons.items()})

    def summary(self) -> str:
        if not self.counts:
            return "no bad samples"
        parts = [
            f"{dataset}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items())
            for dataset, reasons in self.to_dict().items()
        ]
        return f"{self.total} bad samples skipped ({'; '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadSampleStats) and +self.counts == +other.counts

    def __repr__(self) -> str:
        return f"BadSampleStats({self.to_dict()})"
