"""Staging into a real S3 API (moto's server, through s3fs): round trip, resume, verify, atomicity, secrets."""

from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from click.testing import CliRunner
from PIL import Image

from operators.staging import (
    TMP_DIR,
    source_fingerprint,
    stage_dataset,
    stage_source,
    verify_dataset,
)
from operators.staging_cli import stage_command
from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import open_source
from vlm_core.data.shards import ManifestError, ShardSource, SourceInfo, load_manifest


def _image(i: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12 + i % 5, 10), (i * 9 % 256, 40, 200)).save(buf, fmt)
    return buf.getvalue()


def _llava_jsonl(root: str, n: int) -> str:
    """``n`` LLaVA records (every 4th text-only) + images under ``root``; returns the JSONL URL."""
    lines = []
    for i in range(n):
        record = {"id": f"r{i}", "conversations": [{"from": "human", "value": f"<image>\nwhat is {i}?"}, {"from": "gpt", "value": f"thing {i}"}]}
        if i % 4:
            name = f"images/{i:03d}.{'png' if i % 2 else 'jpg'}"
            storage.write_bytes_atomic(storage.join(root, name), _image(i, "PNG" if i % 2 else "JPEG"))
            record["image"] = name
        lines.append(json.dumps(record))
    url = storage.join(root, "data.jsonl")
    storage.write_text_atomic(url, "\n".join(lines) + "\n")
    return url


def _assert_same_samples(source_url: str, staged_url: str) -> None:
    want = open_source(DatasetSpec(url=source_url))
    staged = open_source(DatasetSpec(url=staged_url))
    assert isinstance(staged, ShardSource) and len(staged) == len(want)
    got = {s.id: s for s in staged.iter_samples(0, 1, 0, 1, epoch=0)}
    for i in range(len(want)):
        sample = want[i]
        images = [ref if isinstance(ref, bytes) else storage.read_bytes(ref) for ref in sample.images]
        assert got[sample.id].images == images, sample.id
        assert got[sample.id].conversations == sample.conversations, sample.id


def _objects(bucket_url: str) -> dict[str, bytes]:
    fs, path = storage.filesystem(bucket_url)
    fs.invalidate_cache()
    return {p[len(path) + 1 :]: fs.cat_file(p) for p in fs.find(path)}


def test_llava_jsonl_on_s3_round_trips_byte_identical(s3_bucket):
    src = _llava_jsonl(f"{s3_bucket}/raw", 30)
    dest = f"{s3_bucket}/staged/llava"
    manifest = stage_dataset(DatasetSpec(url=src), dest, shard_samples=4, workers=4, progress=False)

    assert manifest.total_samples == 30 and len(manifest.shards) == 8
    assert manifest.source.format == "llava_jsonl" and manifest.source.fingerprint == source_fingerprint(src)
    names = {n for n in _objects(dest)}
    assert names == {"manifest.json", manifest.length_index.name} | {s.name for s in manifest.shards}, "no temporaries left behind"
    _assert_same_samples(src, dest)
    assert verify_dataset(dest) == []
    # Original encodings are kept, named by their extension.
    sample = next(s for s in ShardSource(dest).iter_samples(shuffle=False) if s.id == "r2")
    assert sample.images[0][:3] == b"\xff\xd8\xff" and sample.meta["image_refs"][0].endswith("images/002.jpg")


def test_parquet_with_image_bytes_round_trips(tmp_path, s3_bucket):
    rows = [
        {"id": f"p{i}", "image": {"bytes": _image(i, "PNG"), "path": None}, "prompt": f"<image>\ncolour {i}?", "ground_truth": "blue"}
        for i in range(12)
    ]
    src = str(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=5)
    dest = f"{s3_bucket}/staged/parquet"
    manifest = stage_dataset(DatasetSpec(url=src), dest, shard_samples=5, workers=2, progress=False)
    assert [s.samples for s in manifest.shards] == [5, 5, 2]
    _assert_same_samples(src, dest)


def test_max_shard_bytes_bounds_every_shard(tmp_path):
    src = _llava_jsonl(str(tmp_path / "raw"), 24)
    manifest = stage_dataset(DatasetSpec(url=src), str(tmp_path / "out"), shard_samples=1000, max_shard_bytes=20 * 1024, progress=False)
    assert len(manifest.shards) > 1 and all(s.bytes <= 20 * 1024 for s in manifest.shards)
    assert manifest.total_samples == 24


class _FailingAt:
    """The real source, but reading sample ``at`` fails: a staging run interrupted midway."""

    def __init__(self, source, at: int) -> None:
        self.source, self.at = source, at

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        if index == self.at:
            raise ConnectionError("network went away")
        return self.source[index]


def _uploaded(caplog) -> set[str]:
    return {r.args[0] for r in caplog.records if r.name == "operators.staging" and r.msg == "uploaded %s"}


def test_interrupted_staging_resumes_uploading_only_missing_shards(s3_bucket, caplog):
    caplog.set_level(logging.DEBUG, logger="operators.staging")
    src = _llava_jsonl(f"{s3_bucket}/raw", 60)
    dest = f"{s3_bucket}/staged/resume"
    info = SourceInfo(url=src, format="llava_jsonl", fingerprint=source_fingerprint(src))
    source = open_source(DatasetSpec(url=src))

    with pytest.raises(ConnectionError):  # workers=2 reads 32 samples per batch: 8 shards go out first
        stage_source(_FailingAt(source, 50), dest, source_info=info, shard_samples=4, workers=2, progress=False)
    first = _uploaded(caplog)
    present = {n for n in _objects(dest) if n.startswith("shard-")}
    assert first and present == first
    with pytest.raises(ManifestError):  # a reader sees no dataset, not a partial one
        ShardSource(dest)

    caplog.clear()
    manifest = stage_source(source, dest, source_info=info, shard_samples=4, workers=2, progress=False)
    second = _uploaded(caplog)
    assert len(manifest.shards) == 15
    assert second == {s.name for s in manifest.shards} - first
    _assert_same_samples(src, dest)

    caplog.clear()  # a third run finds everything in place
    assert stage_source(source, dest, source_info=info, shard_samples=4, workers=2, progress=False).shards == manifest.shards
    assert _uploaded(caplog) == set()


def test_manifest_is_written_after_every_shard(tmp_path):
    src = _llava_jsonl(str(tmp_path / "raw"), 20)
    dest = tmp_path / "out"
    source = open_source(DatasetSpec(url=src))
    info = SourceInfo(url=src, format="llava_jsonl", fingerprint="0" * 64)
    with pytest.raises(ConnectionError):
        stage_source(_FailingAt(source, 19), str(dest), source_info=info, shard_samples=2, workers=1, progress=False)
    assert not (dest / "manifest.json").exists()
    manifest = stage_source(source, str(dest), source_info=info, shard_samples=2, workers=1, progress=False)
    shard_times = [(dest / s.name).stat().st_mtime_ns for s in manifest.shards]
    assert (dest / "manifest.json").stat().st_mtime_ns >= max(shard_times)
    assert not (dest / TMP_DIR).exists()


def test_verify_catches_corruption_and_restaging_repairs_it(s3_bucket, caplog):
    src = _llava_jsonl(f"{s3_bucket}/raw", 16)
    dest = f"{s3_bucket}/staged/verify"
    manifest = stage_dataset(DatasetSpec(url=src), dest, shard_samples=4, workers=2, progress=False)
    fs, path = storage.filesystem(dest)
    flipped, removed = manifest.shards[1], manifest.shards[3]
    data = bytearray(fs.cat_file(f"{path}/{flipped.name}"))
    data[700] ^= 0xFF  # inside the first member's data: same size, different bytes
    fs.pipe_file(f"{path}/{flipped.name}", bytes(data))
    fs.rm(f"{path}/{removed.name}")

    problems = verify_dataset(dest)
    assert problems == [f"{flipped.name}: sha256 {_sha(bytes(data))}, manifest says {flipped.sha256}", f"{removed.name}: missing"]

    caplog.set_level(logging.DEBUG, logger="operators.staging")
    result = CliRunner().invoke(stage_command, [src, dest, "--shard-size", "4", "--workers", "2", "--verify"])
    assert result.exit_code == 0, result.output
    assert "16 samples in 4 shards (verified)" in result.output
    assert any("checksum mismatch" in r.getMessage() and flipped.name in r.getMessage() for r in caplog.records)
    assert _uploaded(caplog) == {flipped.name, removed.name}
    assert verify_dataset(dest) == []


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_bad_samples_are_skipped_and_counted(tmp_path):
    src = _llava_jsonl(str(tmp_path / "raw"), 8)
    (tmp_path / "raw" / "images" / "001.png").unlink()
    with open(src, "a") as f:
        f.write("{not json\n")
    manifest = stage_dataset(DatasetSpec(url=src), str(tmp_path / "out"), progress=False)
    assert manifest.total_samples == 7
    assert manifest.skipped_samples == {"malformed": 1, "missing_image": 1}


def test_secrets_never_reach_manifest_shards_or_logs(s3_bucket, monkeypatch, caplog):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIDSTAGINGKEY1234", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-never-log", "AWS_SESSION_TOKEN": "session-token-never-log"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # new clients pick the credentials up from the environment
    caplog.set_level(logging.DEBUG, logger="operators")
    caplog.set_level(logging.DEBUG, logger="vlm_core")

    src = _llava_jsonl(f"{s3_bucket}/raw", 9)
    dest = f"{s3_bucket}/staged/secret"
    result = CliRunner().invoke(stage_command, [src, dest, "--shard-size", "3", "--verify", "-v"])
    assert result.exit_code == 0, result.output

    written = b"".join(_objects(dest).values())
    logged = result.output + "\n".join(r.getMessage() for r in caplog.records)
    assert any("uploaded shard-" in r.getMessage() for r in caplog.records)
    for value in secrets.values():
        assert value.encode() not in written
        assert value not in logged
    assert load_manifest(dest).source.url == src


def test_user_info_in_urls_is_redacted():
    from operators.staging import redact_url

    assert redact_url("s3://AKID:secret@bucket/data") == "s3://bucket/data"
    assert redact_url("https://bucket.example.com/a@b.json") == "https://bucket.example.com/a@b.json"
    assert redact_url("/local/path") == "/local/path"


def test_cli_explains_a_missing_source(tmp_path):
    result = CliRunner().invoke(stage_command, [str(tmp_path / "nope.jsonl"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error:" in result.output and "nope.jsonl" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()
