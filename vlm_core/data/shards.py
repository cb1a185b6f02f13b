"""Staged datasets: tar shards in WebDataset layout plus a ``manifest.json``.

Why tar (WebDataset layout) rather than parquet with image bytes:

- a reader streams a shard front to back with a single GET and never seeks: parquet needs its
  footer first and then ranged reads per row group, tar needs nothing but the bytes in order;
- images stay in their original encoding as ordinary files, so standard tools (``tar``,
  ``webdataset``, ``tarp``) read and inspect shards without our code;
- a shard is built by appending samples one after another, with no footer to finalise;
- with fixed member metadata the bytes are a pure function of the samples, so the sha256 of
  a shard is reproducible and a re-run can tell which shards already sit in storage intact.

Layout of a staged dataset at ``URL``::

    URL/manifest.json                 written last: its presence means the dataset is complete
    URL/shard-000000-<sha12>.tar      named by index and content, never overwritten in place
    URL/lengths-<sha12>.npy           the length index: per sample, in staged order, int32
                                      (text-token proxy, image count); read without the shards

The manifest also reports the source: rows it holds, rows selected (split, downsampling),
samples written, samples skipped by reason and the ids of the first skipped per reason.

Inside a shard, one sample is a run of consecutive members sharing a key (the sample's global
index, nine digits, so keys sort in dataset order and never contain a dot)::

    <key>.json        {"id", "conversations", "metadata"}   (UTF-8 JSON)
    <key>.<i>.<ext>   bytes of image i, in the encoding it had in the source

``ShardSource`` streams the shards of one epoch, split over ranks and data-loader workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlm_core import storage
from vlm_core.data.readers import register_reader
from vlm_core.data.types import RawSample

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
SHARD_FORMAT = "webdataset-tar"

# Tar stores members in 512-byte blocks; the archive ends with two zero blocks and is padded to
# a 10 KiB record. Knowing this lets the writer keep a shard under a byte budget.
_BLOCK = 512
TAR_TRAILER_MAX = tarfile.RECORDSIZE + 2 * _BLOCK


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or of an unsupported schema version."""


# ----------------------------------------------------------------------------- manifest


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardInfo(_Frozen):
    name: str
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SourceInfo(_Frozen):
    url: str = Field(description="The source URL, without any user info.")
    format: str
    fingerprint: str = Field(description="sha256 over the source files' names, sizes and versions.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Everything besides the source files that decides the staged bytes (reader settings, shard sizes): "
        "a dataset is up to date when fingerprint and options both match.",
    )


class LengthIndexInfo(_Frozen):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(_Frozen):
    schema_version: Literal[2] = SCHEMA_VERSION
    format: Literal["webdataset-tar"] = SHARD_FORMAT
    total_samples: int = Field(ge=0, description="Samples written.")
    shards: list[ShardInfo]
    rows_total: int = Field(0, ge=0, description="Rows the source holds (before split filter and downsampling).")
    rows_selected: int = Field(0, ge=0, description="Rows staging read: written + skipped.")
    skipped_samples: dict[str, int] = Field(default_factory=dict, description="Bad source samples left out, by reason.")
    skipped_ids: dict[str, list[str]] = Field(default_factory=dict, description="Ids of the first skipped samples per reason.")
    length_index: LengthIndexInfo | None = None
    source: SourceInfo
    created_at: str = Field(description="UTC time the staging finished, ISO 8601.")

    @model_validator(mode="after")
    def _totals_agree(self) -> Manifest:
        counted = sum(s.samples for s in self.shards)
        if counted != self.total_samples:
            raise ValueError(f"total_samples is {self.total_samples} but the shards hold {counted}")
        skipped = sum(self.skipped_samples.values())
        if self.rows_selected != self.total_samples + skipped:
            raise ValueError(f"rows_selected is {self.rows_selected} but {self.total_samples} written + {skipped} skipped")
        return self

    def shard_starts(self) -> list[int]:
        """Global index of each shard's first sample (the staged order)."""
        starts, total = [], 0
        for shard in self.shards:
            starts.append(total)
            total += shard.samples
        return starts

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def dataset_root(url: str) -> str:
    """The folder of a staged dataset named by its folder or by its ``manifest.json``."""
    stripped = url.rstrip("/")
    if stripped.rsplit("/", 1)[-1] == MANIFEST_NAME:
        return stripped[: -len(MANIFEST_NAME)].rstrip("/") or "/"
    return url


def manifest_url(dataset_url: str) -> str:
    return storage.join(dataset_root(dataset_url), MANIFEST_NAME)


def load_manifest(dataset_url: str) -> Manifest:
    url = manifest_url(dataset_url)
    try:
        data = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise ManifestError(f"{url} does not exist: {dataset_url} is not a staged dataset, or its staging has not finished") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{url} is not valid JSON: {err}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{url} has schema_version {version!r}; this reader supports {SCHEMA_VERSION}")
    try:
        return Manifest.model_validate(data)
    except ValueError as err:
        raise ManifestError(f"{url} is malformed: {err}") from None


# ----------------------------------------------------------------------------- writing


def sample_key(index: int) -> str:
    return f"{index:09d}"


def image_member_name(key: str, position: int, ext: str) -> str:
    return f"{key}.{position}.{ext}"


@dataclass(frozen=True)
class PackedSample:
    """One sample ready for a shard: its tar members, in order."""

    key: str
    members: tuple[tuple[str, bytes], ...]
    sample_id: str = ""

    @classmethod
    def build(cls, index: int, sample: RawSample, images: list[tuple[str, bytes]], metadata: dict[str, Any]) -> PackedSample:
        """``images``: (extension, encoded bytes) in the sample's image order."""
        key = sample_key(index)
        record = {"id": sample.id, "conversations": sample.conversations, "metadata": metadata}
        text = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        members = [(f"{key}.json", text.encode("utf-8"))]
        members += [(image_member_name(key, i, ext), data) for i, (ext, data) in enumerate(images)]
        return cls(key, tuple(members), str(sample.id))

    @property
    def tar_bytes(self) -> int:
        """Bytes these members take in a tar: a header block each, data padded to blocks."""
        return sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for _, data in self.members)


def pack_shard(samples: Iterable[PackedSample]) -> bytes:
    """The tar bytes of a shard; the same samples always give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for name, data in sample.members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0  # fixed metadata keeps the checksum reproducible
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_name(index: int, sha256: str) -> str:
    """Content-addressed: re-staging changed data never overwrites a shard a reader may hold."""
    return f"shard-{index:06d}-{sha256[:12]}.tar"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LENGTH_COLUMNS = ("text_tokens", "images")


def text_token_proxy(conversations: list[dict[str, Any]]) -> int:
    """LLaVA's length proxy: whitespace words over all turns. Never more than the real token
    count for tokenizers that split on whitespace (so a sample over budget by this proxy is over
    budget in tokens); Chinese text without spaces counts low."""
    return sum(len(str(turn.get("value", "")).split()) for turn in conversations)


def pack_length_index(rows: list[tuple[int, int]]) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(rows, dtype=np.int32).reshape(-1, len(LENGTH_COLUMNS)), allow_pickle=False)
    return buf.getvalue()


def length_index_name(sha256: str) -> str:
    return f"lengths-{sha256[:12]}.npy"


# ----------------------------------------------------------------------------- reading


def read_shard(stream: IO[bytes], wanted: Container[int] | None = None) -> Iterator[RawSample]:
    """Samples of a shard, read front to back (tar streaming mode: no seeks). With ``wanted``
    (positions within the shard), only those samples are built; the others are passed over
    without decoding their members."""
    for _, sample in read_shard_positions(stream, wanted):
        yield sample


def read_shard_positions(stream: IO[bytes], wanted: Container[int] | None = None) -> Iterator[tuple[int, RawSample]]:
    """``(position in the shard, sample)`` for each (wanted) sample of a shard."""
    key: str | None = None
    record: dict[str, Any] | None = None
    images: dict[int, bytes] = {}
    position = -1
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, _, field = member.name.partition(".")
            if member_key != key:
                if key is not None and (wanted is None or position in wanted):
                    yield position, _sample(key, record, images)
                key, record, images = member_key, None, {}
                position += 1
            if wanted is not None and position not in wanted:
                continue
            data = tar.extractfile(member).read()
            if field == "json":
                record = json.loads(data)
            else:
                index, _, _ext = field.partition(".")
                images[int(index)] = data
        if key is not None and (wanted is None or position in wanted):
            yield position, _sample(key, record, images)


def _sample(key: str, record: dict[str, Any] | None, images: dict[int, bytes]) -> RawSample:
    if record is None:
        raise ValueError(f"sample {key} has no {key}.json member")
    return RawSample(
        id=record["id"],
        images=[images[i] for i in sorted(images)],
        conversations=record["conversations"],
        meta=record.get("metadata", {}),
    )


_Shard = TypeVar("_Shard")  # a ShardInfo, or anything standing for a shard (e.g. (index, shard))


def assign_shards(
    shards: list[_Shard], *, rank: int, world_size: int, worker: int, num_workers: int, epoch: int, seed: int = 0, shuffle: bool = True
) -> list[_Shard]:
    """The shards one (rank, worker) reads in ``epoch``.

    Every consumer shuffles the shard list with the same ``(seed, epoch)`` and takes every
    ``world_size * num_workers``-th shard starting at its own slot, so each shard (and thus each
    sample) is read by exactly one consumer per epoch. When the shards do not divide evenly,
    the first consumers get one shard more, so sample counts per rank differ by up to one shard
    (and a consumer gets nothing when there are fewer shards than consumers): stage with enough
    shards (many more than ranks x workers) or let the trainer bound an epoch by steps.
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank} of {world_size} / worker {worker} of {num_workers} is out of range")
    order = list(shards)
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)  # str seeds hash the same in every process
    consumers = world_size * num_workers
    return order[rank * num_workers + worker :: consumers]


class ShardSource:
    """A staged dataset, streamed shard by shard (one GET per shard)."""

    def __init__(self, url: str) -> None:
        self.url = dataset_root(url)
        self.manifest = load_manifest(self.url)

    def __len__(self) -> int:
        return self.manifest.total_samples

    def __repr__(self) -> str:
        return f"ShardSource({self.url!r}, {len(self)} samples in {len(self.manifest.shards)} shards)"

    def iter_samples(
        self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1, epoch: int = 0, seed: int = 0, shuffle: bool = True
    ) -> Iterator[RawSample]:
        """This consumer's share of one epoch (see ``assign_shards``).

        With ``shuffle`` the shard order changes every epoch and samples are shuffled within a
        shard (cheap: the shard is in memory after its one GET).
        """
        mine = assign_shards(
            list(enumerate(self.manifest.shards)), rank=rank, world_size=world_size, worker=worker, num_workers=num_workers,
            epoch=epoch, seed=seed, shuffle=shuffle,
        )
        # Shuffled by the shard's index, not its name: the name hashes the content, which records
        # where the images were read from, and one seed must give one order wherever that was.
        for index, shard in mine:
            samples = list(self.read(shard))
            if shuffle:
                random.Random(f"{seed}:{epoch}:{index}").shuffle(samples)
            yield from samples

    def read(self, shard: ShardInfo) -> Iterator[RawSample]:
        data = storage.read_bytes(storage.join(self.url, shard.name))
        yield from read_shard(io.BytesIO(data))

    # The block interface of streamed training sources (vlm_core/train/streaming.py): a list of
    # (name, samples) known without reading, and the samples of one block at given positions.

    def stream_blocks(self) -> list[tuple[str, int]]:
        return [(s.name, s.samples) for s in self.manifest.shards]

    def read_block(self, block: int, positions: Container[int]) -> dict[int, RawSample]:
        """Samples at ``positions`` of shard ``block``: one GET, only those samples built."""
        data = storage.read_bytes(storage.join(self.url, self.manifest.shards[block].name))
        return dict(read_shard_positions(io.BytesIO(data), positions))

    def lengths(self) -> Any:
        """The length index: an int32 array (samples, 2) of (text-token proxy, image count) in
        staged order, from one small file (no shard is read)."""
        import numpy as np

        info = self.manifest.length_index
        if info is None:
            raise ManifestError(f"{self.url} has no length index; stage it again")
        return np.load(io.BytesIO(storage.read_bytes(storage.join(self.url, info.name))), allow_pickle=False)

    def modality_lengths(self) -> list[int]:
        """LLaVA's modality lengths (+ with images, - text-only) from the length index."""
        index = self.lengths()
        return [int(t) if n > 0 else -int(t) for t, n in index.tolist()]


register_reader("shards", lambda spec: ShardSource(spec.url))
