"""The staged-shard format and its streaming reader: determinism, manifest checks, rank/worker split."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from operators.staging import stage_source
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import open_source
from vlm_core.data.shards import (
    ManifestError,
    PackedSample,
    ShardSource,
    SourceInfo,
    assign_shards,
    load_manifest,
    pack_shard,
    read_shard,
)
from vlm_core.data.types import RawSample

INFO = SourceInfo(url="memory", format="list", fingerprint="0" * 64)


def _png(i: int, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, 4), (i % 256, 7, 9)).save(buf, "PNG")
    return buf.getvalue()


def _samples(n: int) -> list[RawSample]:
    return [
        RawSample(
            id=f"s{i}",
            images=[_png(i, 10 + i), _png(i, 2)] if i % 3 else [],
            conversations=[{"from": "human", "value": f"question {i} — ünïcode"}, {"from": "gpt", "value": str(i)}],
        )
        for i in range(n)
    ]


@pytest.fixture()
def staged(tmp_path) -> str:
    url = str(tmp_path / "staged")
    stage_source(_samples(23), url, source_info=INFO, shard_samples=2, workers=2, progress=False)  # 12 shards
    return url


def test_shard_bytes_are_deterministic_and_standard_tar():
    packed = [PackedSample.build(i, s, [("bin", b) for b in s.images], {"k": i}) for i, s in enumerate(_samples(5))]
    data = pack_shard(packed)
    assert data == pack_shard(packed)
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # plain tar tooling reads it
        names = tar.getnames()
        record = json.loads(tar.extractfile("000000001.json").read())
    assert names[:4] == ["000000000.json", "000000001.json", "000000001.0.bin", "000000001.1.bin"]
    assert record == {"id": "s1", "conversations": _samples(2)[1].conversations, "metadata": {"k": 1}}
    back = list(read_shard(io.BytesIO(data)))
    assert [(s.id, s.images, s.conversations) for s in back] == [(s.id, s.images, s.conversations) for s in _samples(5)]


def test_open_source_detects_a_staged_folder(staged):
    source = open_source(DatasetSpec(url=staged))
    assert isinstance(source, ShardSource)
    assert len(source) == 23
    got = {s.id: s for s in source.iter_samples(shuffle=False)}
    for want in _samples(23):
        assert (got[want.id].images, got[want.id].conversations) == (want.images, want.conversations)


@pytest.mark.parametrize("world_size,num_workers", [(2, 2), (3, 2), (1, 1)])
def test_each_sample_read_exactly_once_per_epoch(staged, world_size, num_workers):
    source = ShardSource(staged)
    per_epoch = []
    for epoch in range(2):
        seen = Counter(
            s.id
            for rank in range(world_size)
            for worker in range(num_workers)
            for s in source.iter_samples(rank, world_size, worker, num_workers, epoch=epoch, seed=7)
        )
        assert seen == Counter(f"s{i}" for i in range(23))  # 12 shards over 4 or 6 consumers, uneven for 6
        per_epoch.append([s.id for s in source.iter_samples(0, world_size, 0, num_workers, epoch=epoch, seed=7)])
    if world_size * num_workers > 1:
        assert per_epoch[0] != per_epoch[1], "shard order should change between epochs"


def test_uneven_split_differs_by_at_most_one_shard(staged):
    shards = load_manifest(staged).shards
    counts = [len(assign_shards(shards, rank=r, world_size=5, worker=0, num_workers=1, epoch=0)) for r in range(5)]
    assert sorted(counts) == [2, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="rank 2 of 2"):
        assign_shards(shards, rank=2, world_size=2, worker=0, num_workers=1, epoch=0)


def test_missing_and_unsupported_manifests_are_explained(tmp_path, staged):
    with pytest.raises(ManifestError, match="not a staged dataset"):
        ShardSource(str(tmp_path / "nothing"))
    path = tmp_path / "staged" / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(ManifestError, match="schema_version 99; this reader supports 2"):
        ShardSource(staged)
    path.write_text(json.dumps({**data, "total_samples": 5}))
    with pytest.raises(ManifestError, match="total_samples is 5 but the shards hold 23"):
        ShardSource(staged)


def test_ranks_and_workers_split_the_shards(staged):
    """Each (rank, worker) slot of 2 ranks x 2 workers gets whole shards; together they read
    every sample exactly once, in every epoch."""
    source = ShardSource(staged)
    for epoch in range(2):
        reads = {
            (rank, worker): [s.id for s in source.iter_samples(rank, 2, worker, 2, epoch=epoch, seed=3)]
            for rank in range(2)
            for worker in range(2)
        }
        assert all(reads.values()), "every slot should get some shards"
        assert Counter(i for ids in reads.values() for i in ids) == Counter(f"s{i}" for i in range(23))


@pytest.mark.parametrize("fmt", ["shards", "auto"])
def test_a_staged_dataset_is_named_by_its_folder_or_its_manifest(staged, fmt):
    by_folder = open_source(DatasetSpec(url=staged, format=fmt))
    by_manifest = open_source(DatasetSpec(url=f"{staged}/manifest.json", format=fmt))
    assert by_manifest.url == by_folder.url == staged
    assert [s.id for s in by_manifest.iter_samples(shuffle=False)] == [s.id for s in by_folder.iter_samples(shuffle=False)]


def test_staging_into_a_manifest_url_writes_the_folder(tmp_path):
    dest = tmp_path / "named"
    stage_source(_samples(3), f"{dest}/manifest.json", source_info=INFO, shard_samples=2, workers=1, progress=False)
    assert (dest / "manifest.json").is_file()
    assert load_manifest(str(dest)).total_samples == 3
