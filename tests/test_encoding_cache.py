"""The encoded-sample cache serves exactly what live encoding gives, builds in parts, and never
serves a stale or foreign entry."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
import torch
from PIL import Image

from operators.staging import stage_source
from tests.fixtures.data.helpers import make_processor
from vlm_core.config import DatasetSpec
from vlm_core.data import open_source
from vlm_core.data.cache import (
    CachedEncoder,
    EncodedSamples,
    _part_name,
    _write_part,
    build_cache,
    cached_encoder,
    dataset_fingerprint,
)
from vlm_core.data.encoding import SampleEncoder
from vlm_core.data.mixture import MixtureDataset
from vlm_core.data.shards import ShardSource, SourceInfo
from vlm_core.data.types import BadSample, RawSample

COLOURS = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 200, 30)]


def png(colour, size=(12, 9)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def turns(question: str, answer: str | None) -> list[dict[str, str]]:
    out = [{"from": "human", "value": question}]
    return out + ([{"from": "gpt", "value": answer}] if answer is not None else [])


def samples(image_dir) -> list[RawSample]:
    """Images on disk and inline, shared between samples, text-only, multi-image, and bad ones."""
    paths = []
    for i, colour in enumerate(COLOURS):
        path = image_dir / f"{i}.png"
        path.write_bytes(png(colour, (12 + i, 9)))
        paths.append(str(path))
    out = []
    for i in range(24):
        image = paths[i % 4] if i % 3 else png(COLOURS[i % 4])
        out.append(RawSample(f"s{i}", [image], turns("<image>\nWhat colour?", ["red", "green", "blue", "yellow"][i % 4])))
    out += [
        RawSample("two", [paths[0], paths[1]], turns("<image> then <image>: same?", "no")),
        RawSample("text", [], turns("Say hi", "hi")),
        RawSample("long", [paths[2]], turns("<image>\n" + "Why? " * 60, "because")),
        RawSample("silent", [paths[3]], turns("<image>\nWhat?", None)),
        RawSample("gone", [str(image_dir / "missing.png")], turns("<image>\nWhat?", "red")),
    ]
    return out


def write_jsonl(tmp_path, raws: list[RawSample]) -> str:
    """The samples as a LLaVA JSONL file (inline images saved next to it)."""
    records = []
    for raw in raws:
        images = []
        for k, ref in enumerate(raw.images):
            if isinstance(ref, bytes):
                (tmp_path / f"{raw.id}-{k}.png").write_bytes(ref)
                ref = str(tmp_path / f"{raw.id}-{k}.png")
            images.append(ref)
        record = {"id": raw.id, "conversations": raw.conversations}
        if images:
            record["image"] = images[0] if len(images) == 1 else images
        records.append(json.dumps(record))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(records) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def encoder():
    return SampleEncoder(make_processor(num_image_tokens=4), "vicuna_v1", max_length=96)


@pytest.fixture()
def source(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    return open_source(DatasetSpec(url=write_jsonl(tmp_path, samples(images))))


def live(encoder, raw, name="d"):
    try:
        return encoder.encode(raw, name, 0)
    except BadSample as bad:
        return bad


def assert_same(got, want):
    if isinstance(want, BadSample):
        assert isinstance(got, BadSample)
        assert (got.reason, got.detail, got.sample_id, got.dataset) == (want.reason, want.detail, want.sample_id, want.dataset)
        return
    assert set(got) == set(want)
    for key in ("input_ids", "labels", "pixel_values"):
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert got["dataset_index"] == want["dataset_index"]


def one_process(folder, source, encoder, mode="full"):
    return build_cache(str(folder), source, encoder, mode=mode, part=0, parts=1, barrier=lambda: None)


def served(cache: EncodedSamples, encoder, raw, name="d"):
    try:
        return CachedEncoder(encoder, {name: cache}).encode(raw, name, 0)
    except BadSample as bad:
        return bad


@pytest.mark.parametrize("mode", ["tokens", "full"])
def test_cache_serves_what_live_encoding_gives(tmp_path, source, encoder, mode):
    cache = one_process(tmp_path / "cache", source, encoder, mode)
    assert len(cache) == len(source)
    for i in range(len(source)):
        raw = source[i]
        assert_same(served(cache, encoder, raw), live(encoder, raw))
    reasons = {source[i].id: live(encoder, source[i]).reason for i in range(len(source)) if isinstance(live(encoder, source[i]), BadSample)}
    assert reasons == {"long": "too_long", "silent": "no_assistant_turn", "gone": "missing_image"}


def test_full_cache_keeps_each_distinct_image_once(tmp_path, source, encoder):
    cache = one_process(tmp_path / "cache", source, encoder, "full")
    good = [source[i] for i in range(len(source)) if not isinstance(live(encoder, source[i]), BadSample)]
    distinct = {ref for raw in good for ref in raw.images}
    assert sum(len(raw.images) for raw in good) > len(distinct) == cache.parts[0]["pixels"].shape[0]


def test_shard_source_in_two_parts(tmp_path, encoder):
    """Two local ranks build one cache together (threads stand in for the processes); a staged
    source is split by shards; both see every sample."""
    images = tmp_path / "images"
    images.mkdir()
    raws = samples(images)  # staging inlines the images and skips the missing image and the silent sample
    url = str(tmp_path / "staged")
    stage_source(raws, url, source_info=SourceInfo(url="memory://t", format="llava_jsonl", fingerprint="t"),
                 shard_samples=5, workers=1, progress=False)
    shards = ShardSource(url)
    barrier = threading.Barrier(2)
    caches = [None, None]

    def rank(part):
        caches[part] = build_cache(str(tmp_path / "cache"), shards, encoder, mode="full", part=part, parts=2, barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(os.listdir(tmp_path / "cache")) == ["complete.json", "part-000-of-002.pt", "part-001-of-002.pt"]
    for cache in caches:
        assert len(cache) == len(shards) == len(raws) - 2
        for raw in shards.iter_samples(shuffle=False):
            assert_same(served(cache, encoder, raw), live(encoder, raw))


def test_a_restart_reuses_finished_parts_and_complete_caches(tmp_path, source, encoder):
    class Counting(SampleEncoder):
        calls = 0

        def encode_tokens(self, raw):
            Counting.calls += 1
            return super().encode_tokens(raw)

    counting = Counting(encoder.processor, "vicuna_v1", max_length=96)
    folder = tmp_path / "cache"
    # a job that died after rank 0 wrote its part: the restart encodes only part 1
    _write_part(str(folder / _part_name(0, 2)), source, counting, mode="full", part=0, parts=2, description="part 0")
    assert Counting.calls == len(range(0, len(source), 2))
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=build_cache, args=(str(folder), source, counting),
                                kwargs={"mode": "full", "part": p, "parts": 2, "barrier": barrier.wait}) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counting.calls == len(source)
    one_process(folder, source, counting)  # complete: nothing encoded again
    assert Counting.calls == len(source)


def test_changed_or_duplicate_samples_are_encoded_live(tmp_path, source, encoder):
    cache = one_process(tmp_path / "cache", source, encoder)
    raw = source[1]
    changed = RawSample(raw.id, raw.images, turns("<image>\nWhich colour is it?", "green"))
    assert_same(served(cache, encoder, changed), live(encoder, changed))
    other_image = RawSample(raw.id, [source[2].images[0]], raw.conversations)
    assert_same(served(cache, encoder, other_image), live(encoder, other_image))
    unknown = RawSample("never-seen", raw.images, raw.conversations)
    assert_same(served(cache, encoder, unknown), live(encoder, unknown))


def test_duplicate_ids_keep_both_entries(tmp_path, encoder):
    images = tmp_path / "images"
    images.mkdir()
    raws = samples(images)[:4]
    raws.append(RawSample("s1", raws[2].images, turns("<image>\nAnd now?", "blue")))
    cache = one_process(tmp_path / "cache", raws, encoder)
    for raw in raws:
        assert_same(served(cache, encoder, raw), live(encoder, raw))


def test_the_key_follows_the_encoding_settings(tmp_path, source, encoder):
    """Same settings reuse the folder; another max_length, template or tokenizer gets its own."""
    fingerprints = {"d": dataset_fingerprint(str(tmp_path / "data.jsonl"))}

    def folders(enc):
        cached_encoder(enc, {"d": source}, fingerprints, str(tmp_path / "root"), mode="full", part=0, parts=1, barrier=lambda: None)
        return set(os.listdir(tmp_path / "root"))

    first = folders(encoder)
    assert folders(SampleEncoder(encoder.processor, "vicuna_v1", max_length=96)) == first
    assert len(folders(SampleEncoder(encoder.processor, "vicuna_v1", max_length=97))) == 2
    assert len(folders(SampleEncoder(encoder.processor, "chatml", max_length=97))) == 3
    other = make_processor(num_image_tokens=2)
    assert len(folders(SampleEncoder(other, "chatml", max_length=97))) == 4


def test_dataset_fingerprint(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "conversations": []}\n')
    before = dataset_fingerprint(str(path))
    assert dataset_fingerprint(str(path)) == before
    path.write_text('{"id": "a", "conversations": [], "x": 1}\n')
    os.utime(path, (1, 1))
    assert dataset_fingerprint(str(path)) != before
    url = str(tmp_path / "staged")
    raws = [RawSample("a", [], turns("q", "a"))]
    stage_source(raws, url, source_info=SourceInfo(url="memory://t", format="llava_jsonl", fingerprint="t"), workers=1, progress=False)
    assert dataset_fingerprint(url) == dataset_fingerprint(url + "/manifest.json")


def test_mixture_over_the_cache_counts_bad_samples_like_live(tmp_path, source, encoder):
    cached = cached_encoder(encoder, {"d": source}, {"d": "x"}, str(tmp_path), mode="full", part=0, parts=1, barrier=lambda: None)
    with_cache, without = MixtureDataset({"d": (source, 1.0)}, cached, seed=3), MixtureDataset({"d": (source, 1.0)}, encoder, seed=3)
    for i in range(len(without)):
        a, b = with_cache[i], without[i]
        assert (a is None) == (b is None)
        if b is not None:
            assert_same(a, b)
    assert with_cache.bad_stats == without.bad_stats and with_cache.bad_stats.total == 3
    assert cached.hits == len(source) and cached.misses == 0
