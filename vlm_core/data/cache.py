"""Encoded-sample cache: each sample is tokenized (and its images turned into pixels) once per
run, not once per step.

An encoding depends on the dataset, the tokenizer, the template, the image processor's settings
and ``max_length``; their fingerprint is the cache key, so a change in any of them builds a new
cache and a restart of the same stage reuses the old one. Inside a cache, entries are found by
(dataset name, ``RawSample.id``) and checked against a digest of the sample's conversation and
image references: a sample that changed, or a second sample with the same id, is encoded live
instead of being served the wrong entry.

Local ranks build a cache together, each encoding its share into its own part file (so a job
that dies while building keeps the parts it finished); then every rank reads all parts. Parts
are written atomically and the folder is marked complete last.

Modes: ``tokens`` keeps ids and labels (images are still decoded per step), ``full`` also keeps
the pixels, once per distinct image: 3 x H x W float32 values, about 12 KB at 32 px but 1.3 MB at
336 px, so ``full`` is for small images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlm_core import storage
from vlm_core.data.encoding import SampleEncoder
from vlm_core.data.templates import IGNORE_INDEX
from vlm_core.data.types import BadSample, ImageRef, RawSample

log = logging.getLogger("vlm.data")

CACHE_MODES = ("none", "tokens", "full")
FORMAT_VERSION = 1  # bump when the part layout or what an encoding means changes
COMPLETE_FILE = "complete.json"


# ----------------------------------------------------------------------------- keys


def _digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def image_digest(ref: ImageRef) -> str:
    """Inline bytes by content; a URL by its text (the same URL is the same image within a dataset)."""
    return _digest(b"bytes", bytes(ref)) if isinstance(ref, (bytes, bytearray, memoryview)) else _digest(b"url", ref)


def sample_digest(raw: RawSample) -> str:
    return _digest(json.dumps(raw.conversations, sort_keys=True, ensure_ascii=False), *map(image_digest, raw.images))


def dataset_fingerprint(url: str, image_root: str | None = None) -> str:
    """What identifies a dataset's content cheaply: a staged dataset's manifest (its shard names
    are content hashes), else the file's (or folder's files') size and modification stamp."""
    from vlm_core.data.shards import dataset_root, manifest_url

    try:
        return _digest("manifest", storage.read_text(manifest_url(dataset_root(url))))
    except (OSError, ValueError):  # not a staged dataset
        pass
    fs, path = storage.filesystem(url)
    infos = [fs.info(path)] if fs.isfile(path) else [fs.info(p) for p in sorted(fs.find(path))]
    stamps = [
        f"{i['name']}:{i.get('size')}:{i.get('mtime') or i.get('LastModified') or i.get('ETag') or i.get('created')}"
        for i in infos
    ]
    return _digest("files", url, image_root or "", *stamps)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return _digest("fast", backend.to_str())
    return _digest("slow", type(tokenizer).__name__, json.dumps(sorted(tokenizer.get_vocab().items())))


def encoding_key(encoder: SampleEncoder, mode: str) -> str:
    """Fingerprint of everything besides the data that decides what ``encoder`` produces."""
    processor = encoder.processor
    settings = {
        "version": FORMAT_VERSION,
        "mode": mode,
        "template": repr(encoder.template),
        "max_length": encoder.max_length,
        "image_token_id": processor.image_token_id,
        "num_image_tokens": processor.num_image_tokens,
        "image_size": getattr(processor, "image_size", None),
        "image_aspect": getattr(processor, "image_aspect", None),
        "image_processor": processor.image_processor.to_json_string() if mode == "full" else None,
    }
    return _digest(json.dumps(settings, sort_keys=True, default=str), tokenizer_fingerprint(processor.tokenizer))


# ----------------------------------------------------------------------------- one part


def _share(source: Any, part: int, parts: int) -> Iterator[RawSample]:
    """Every ``parts``-th sample from ``part`` on. A stream is read whole by every part (reading
    is cheap next to encoding) so the parts stay even when its shards do not divide evenly."""
    samples = source.iter_samples(0, 1, 0, 1, epoch=0, shuffle=False) if hasattr(source, "iter_samples") else None
    if samples is None:
        for index in range(part, len(source), parts):
            yield source[index]
        return
    for index, sample in enumerate(samples):
        if index % parts == part:
            yield sample


def _part_name(part: int, parts: int) -> str:
    return f"part-{part:03d}-of-{parts:03d}.pt"


def encode_part(samples: Iterable[RawSample], encoder: SampleEncoder, *, pixels: bool, progress: Any = None) -> dict[str, Any]:
    """The part file's content: every sample's tokens (or why it is bad) and, with ``pixels``,
    each distinct image's pixels once."""
    import torch

    ids: list[str] = []
    digests: list[str] = []
    bad: list[str] = []  # "reason\tdetail", empty for a good sample
    tokens: list[torch.Tensor] = []
    trained: list[torch.Tensor] = []
    lengths: list[int] = []
    image_rows: list[int] = []
    image_counts: list[int] = []
    rows: dict[str, int] = {}
    pixel_list: list[torch.Tensor] = []
    for raw in samples:
        ids.append(raw.id)
        digests.append(sample_digest(raw))
        try:
            input_ids, labels = encoder.encode_tokens(raw)
            sample_rows = []
            if pixels:
                for ref in raw.images:
                    key = image_digest(ref)
                    if key not in rows:
                        rows[key] = len(pixel_list)
                        pixel_list.append(encoder.pixel_values([ref])[0])
                    sample_rows.append(rows[key])
        except BadSample as err:
            bad.append(f"{err.reason}\t{err.detail}")
            lengths.append(0)
            image_counts.append(0)
        else:
            bad.append("")
            tokens.append(torch.tensor(input_ids, dtype=torch.int32))
            trained.append(torch.tensor([label != IGNORE_INDEX for label in labels], dtype=torch.bool))
            lengths.append(len(input_ids))
            image_counts.append(len(sample_rows))
            image_rows += sample_rows
        if progress is not None:
            progress.update(1)
    empty_int = torch.zeros(0, dtype=torch.int32)
    return {
        "ids": ids,
        "digests": digests,
        "bad": bad,
        "input_ids": torch.cat(tokens) if tokens else empty_int,
        "trained": torch.cat(trained) if trained else torch.zeros(0, dtype=torch.bool),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "image_rows": torch.tensor(image_rows, dtype=torch.int64),
        "image_counts": torch.tensor(image_counts, dtype=torch.int64),
        "pixels": torch.stack(pixel_list) if pixel_list else None,
    }


# ----------------------------------------------------------------------------- a loaded cache


@dataclass
class _Entry:
    part: int
    digest: str
    bad: str
    token_start: int
    length: int
    image_start: int
    image_count: int


@dataclass
class EncodedSamples:
    """A dataset's cache in memory (tensors memory-mapped from the part files)."""

    parts: list[dict[str, Any]]
    entries: dict[str, list[_Entry]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str) -> EncodedSamples:
        import torch

        with open(os.path.join(folder, COMPLETE_FILE)) as f:
            names = json.load(f)["parts"]
        parts = [torch.load(os.path.join(folder, name), weights_only=True, mmap=True) for name in names]
        out = cls(parts)
        for p, part in enumerate(parts):
            token_start = image_start = 0
            for i, sample_id in enumerate(part["ids"]):
                length, count = int(part["lengths"][i]), int(part["image_counts"][i])
                entry = _Entry(p, part["digests"][i], part["bad"][i], token_start, length, image_start, count)
                out.entries.setdefault(sample_id, []).append(entry)
                token_start += length
                image_start += count
        return out

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries.values())

    def find(self, raw: RawSample) -> _Entry | None:
        candidates = self.entries.get(raw.id)
        if not candidates:
            return None
        digest = sample_digest(raw)
        return next((e for e in candidates if e.digest == digest), None)

    def sample(self, entry: _Entry, dataset_index: int, live_pixels: Callable[[], Any]) -> dict[str, Any]:
        import torch

        if entry.bad:
            reason, _, detail = entry.bad.partition("\t")
            raise BadSample(reason, detail)
        part = self.parts[entry.part]
        span = slice(entry.token_start, entry.token_start + entry.length)
        input_ids = part["input_ids"][span].long()
        labels = torch.where(part["trained"][span], input_ids, IGNORE_INDEX)
        if part["pixels"] is not None:
            rows = part["image_rows"][entry.image_start : entry.image_start + entry.image_count]
            pixel_values = part["pixels"].index_select(0, rows)
        else:
            pixel_values = live_pixels()
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values, "dataset_index": dataset_index}


class CachedEncoder:
    """A ``SampleEncoder`` that serves samples from per-dataset caches; samples it does not find
    there (or that changed) are encoded live. Same interface: ``encode``, ``strict``."""

    def __init__(self, encoder: SampleEncoder, caches: dict[str, EncodedSamples]) -> None:
        self.encoder = encoder
        self.caches = caches
        self.hits = 0
        self.misses = 0

    @property
    def strict(self) -> bool:
        return self.encoder.strict

    def encode(self, raw: RawSample, dataset_name: str = "", dataset_index: int = 0) -> dict[str, Any]:
        cache = self.caches.get(dataset_name)
        entry = cache.find(raw) if cache is not None else None
        if entry is None:
            self.misses += 1
            return self.encoder.encode(raw, dataset_name, dataset_index)
        self.hits += 1
        try:
            return cache.sample(entry, dataset_index, lambda: self.encoder.pixel_values(raw.images))
        except BadSample as bad:
            raise bad.located(raw.id, dataset_name) from None

    __call__ = encode


# ----------------------------------------------------------------------------- building


def build_cache(
    folder: str,
    source: Any,
    encoder: SampleEncoder,
    *,
    mode: str,
    part: int,
    parts: int,
    barrier: Callable[[], None],
    description: str = "encoding",
) -> EncodedSamples:
    """Build (or reuse) the cache in ``folder``: this process encodes part ``part`` of ``parts``;
    every process of the group must call it. Returns the whole cache, loaded."""
    if mode not in ("tokens", "full"):
        raise ValueError(f"unknown cache mode {mode!r}; allowed: tokens, full")
    complete = os.path.join(folder, COMPLETE_FILE)
    path = os.path.join(folder, _part_name(part, parts))
    # A part finished before a restart is kept. Every process passes both barriers, whatever it
    # found, so none waits for a peer that took another branch.
    if not os.path.exists(complete) and not os.path.exists(path):
        _write_part(path, source, encoder, mode=mode, part=part, parts=parts, description=description)
    barrier()
    if part == 0 and not os.path.exists(complete):
        names = [_part_name(p, parts) for p in range(parts)]
        missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
        if missing:
            raise RuntimeError(
                f"encoded-sample cache {folder}: parts {missing} were not written; "
                "the folder must be shared by the local ranks that build it"
            )
        storage.write_text_atomic(complete, json.dumps({"parts": names}) + "\n")
    barrier()
    return EncodedSamples.load(folder)


def _write_part(path: str, source: Any, encoder: SampleEncoder, *, mode: str, part: int, parts: int, description: str) -> None:
    import torch
    from tqdm import tqdm

    os.makedirs(os.path.dirname(path), exist_ok=True)
    start = time.perf_counter()
    expected = len(range(part, len(source), parts))
    with tqdm(total=expected, desc=description, unit="sample", disable=True if part else None) as bar:
        content = encode_part(_share(source, part, parts), encoder, pixels=mode == "full", progress=bar)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(content, tmp)
    os.replace(tmp, path)
    log.info("%s: %d samples in %.1f s", description, len(content["ids"]), time.perf_counter() - start)


def cached_encoder(
    encoder: SampleEncoder,
    sources: dict[str, Any],
    fingerprints: dict[str, str],
    root: str,
    *,
    mode: str,
    part: int,
    parts: int,
    barrier: Callable[[], None],
) -> CachedEncoder:
    """``encoder`` behind a cache of every source (name -> source), each in
    ``<root>/<name>-<key>``; ``fingerprints`` name each source's content (``dataset_fingerprint``)."""
    key = encoding_key(encoder, mode)
    caches = {}
    for name, source in sources.items():
        folder = os.path.join(root, f"{name}-{_digest(key, fingerprints[name])[:16]}")
        caches[name] = build_cache(
            folder, source, encoder, mode=mode, part=part, parts=parts, barrier=barrier, description=f"encoding {name}"
        )
    return CachedEncoder(encoder, caches)
