"""Readers of the published corpora, on fixtures written in their published layouts (see
tests/published_datasets.py), and what staging makes of each: exact counts, skip reasons, ids."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from operators.staging import stage_dataset
from tests import published_datasets as layouts
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import open_source
from vlm_core.data.shards import ShardSource
from vlm_core.data.sources.jsonscan import iter_array, iter_object, read_record
from vlm_core.data.sources.prompts import CAPTION_PROMPTS, OCR_PROMPTS
from vlm_core.data.types import BadSample, RawSample


def _rows(spec: DatasetSpec) -> tuple[list[RawSample], list[BadSample]]:
    source = open_source(spec)
    good, bad = [], []
    for row in source.rows():
        (bad if isinstance(row, BadSample) else good).append(row)
    return good, bad


def _staged(spec: DatasetSpec, dest) -> tuple[object, dict[str, RawSample]]:
    manifest = stage_dataset(spec, str(dest), shard_samples=2, workers=2, progress=False)
    return manifest, {s.id: s for s in ShardSource(str(dest)).iter_samples(shuffle=False)}


def _assert_counts(manifest, want: dict) -> None:
    assert manifest.rows_total == want["rows"]
    assert manifest.total_samples == want["written"]
    skipped = want.get("skipped", {})
    assert manifest.skipped_samples == {reason: len(ids) for reason, ids in skipped.items()}
    assert manifest.skipped_ids == skipped
    assert manifest.rows_selected == manifest.total_samples + sum(manifest.skipped_samples.values())


# ----------------------------------------------------------------------------- streaming JSON


def test_json_records_stream_with_exact_byte_offsets(tmp_path):
    records = [{"id": i, "text": "ünï ☃ " * (i % 5), "nested": {"list": [1, 2.5, None, True]}} for i in range(3000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    from vlm_core.data.sources import jsonscan

    small = jsonscan.CHUNK
    jsonscan.CHUNK = 777  # records straddle many window edges, some inside a multi-byte character
    try:
        with open(path, "rb") as f:
            streamed = list(iter_array(f))
    finally:
        jsonscan.CHUNK = small
    assert [r for _, r in streamed] == records
    with open(path, "rb") as f:
        for offset, record in streamed[::97]:
            assert read_record(f, offset) == record
    data = {"a": {"x": 1}, "b ☃": [1, 2], "c": 3.25}
    (tmp_path / "obj.json").write_text(json.dumps(data, ensure_ascii=False))
    with open(tmp_path / "obj.json", "rb") as f:
        members = list(iter_object(f))
        assert [(k, v) for _, k, v in members] == list(data.items())
        assert read_record(f, members[1][0]) == [1, 2]
    (tmp_path / "cut.json").write_text(json.dumps(records[:3])[:-20])
    with open(tmp_path / "cut.json", "rb") as f, pytest.raises(ValueError):
        list(iter_array(f))


# ----------------------------------------------------------------------------- llava


def test_llava_mix665k_layout(tmp_path):
    url = layouts.llava_mix(str(tmp_path))
    source = open_source(DatasetSpec(url=url))
    assert len(source) == 8
    text_only = source[5]
    assert text_only.id == "i6IyJda_0" and text_only.images == [] and text_only.meta == {"model": ""}
    assert source[2].images == [str(tmp_path / "ocr_vqa/images/1405.jpg")]
    assert source.modality_lengths()[5] < 0 < source.modality_lengths()[0]
    manifest, staged = _staged(DatasetSpec(url=url), tmp_path / "staged")
    _assert_counts(manifest, layouts.LLAVA_MIX)
    gif = staged["1405"].images[0]
    assert gif[:4] == b"GIF8" and Image.open(io.BytesIO(gif)).convert("RGB").getpixel((0, 0)) == (10, 10, 200)
    assert staged["2354786"].conversations[1]["value"] == "Yes"  # the first of the repeated id is kept
    assert staged["1405"].conversations[1]["value"] == "Ünïcode Author"


def test_llava_pretrain_layout(tmp_path):
    url = layouts.llava_pretrain(str(tmp_path))
    manifest, staged = _staged(DatasetSpec(url=url, image_root=str(tmp_path / "images")), tmp_path / "staged")
    _assert_counts(manifest, layouts.LLAVA_PRETRAIN)
    assert staged["004530000"].conversations[0]["value"].endswith("\n<image>")


# ----------------------------------------------------------------------------- synthdog


@pytest.mark.parametrize("language", ["en", "zh"])
def test_synthdog_parquet_as_ocr_samples(tmp_path, language):
    folder = layouts.synthdog(str(tmp_path), language)
    spec = DatasetSpec(url=folder, format="synthdog", language=language, seed=3)
    good, bad = _rows(spec)
    assert [s.conversations[1]["value"] for s in good[:2]] == {"en": ["The quick brown fox", "jumps over the lazy dog"],
                                                               "zh": ["敏捷的棕色狐狸", "跳过了懒狗"]}[language]
    assert all(s.conversations[0]["value"] in OCR_PROMPTS[language] for s in good)
    assert isinstance(good[0].images[0], bytes)
    assert {b.reason for b in bad} == {"no_answer", "malformed"}  # undecodable bytes are found when staged
    again, _ = _rows(spec)
    assert [s.conversations for s in again] == [s.conversations for s in good]  # the prompt is seeded
    manifest, _ = _staged(spec, tmp_path / "staged")
    _assert_counts(manifest, layouts.SYNTHDOG)
    train = DatasetSpec(url=folder, format="synthdog", split="train")
    assert (len(open_source(train)), open_source(train).rows_total) == (5, 5)
    manifest, _ = _staged(train, tmp_path / "train")
    assert (manifest.rows_total, manifest.total_samples) == (layouts.SYNTHDOG_TRAIN["rows"], layouts.SYNTHDOG_TRAIN["written"])


# ----------------------------------------------------------------------------- img2dataset webdataset


def test_img2dataset_webdataset_counts_dead_links_by_key(tmp_path):
    folder = layouts.img2dataset(str(tmp_path))
    spec = DatasetSpec(url=folder, format="webdataset")
    source = open_source(spec)
    assert (len(source), source.rows_total) == (8, 8)
    good, bad = _rows(spec)
    assert [s.id for s in good] == ["000000000", "000000002", "000000004", "000100000"]
    assert good[1].conversations[1]["value"] == "two cats asleep"
    assert all(s.conversations[0]["value"] in CAPTION_PROMPTS for s in good)
    assert [(b.sample_id, b.reason) for b in bad if "404" in b.detail] == [("000000001", "missing_image"), ("000000003", "missing_image")]
    manifest, staged = _staged(spec, tmp_path / "staged")
    _assert_counts(manifest, layouts.IMG2DATASET)
    assert staged["000000004"].images[0][:3] == b"\xff\xd8\xff"
    # Streams for training split the tars between consumers.
    ids = [sorted(s.id for s in source.iter_samples(r, 2, 0, 1, epoch=0)) for r in range(2)]
    assert sorted(ids[0] + ids[1]) == [s.id for s in good] and all(ids)


def test_downsampling_is_a_seeded_subset_over_rows(tmp_path):
    folder = layouts.img2dataset(str(tmp_path))
    kept = lambda **kw: [s.id for s in open_source(DatasetSpec(url=folder, format="webdataset", **kw)).iter_samples(shuffle=False)]
    assert len(open_source(DatasetSpec(url=folder, format="webdataset", limit=5))) == 5
    assert kept(limit=5) == kept(limit=5) and set(kept(limit=5)) <= set(kept())
    url = layouts.llava_mix(str(tmp_path / "mix"))
    halves = [[s.id for s in open_source(DatasetSpec(url=url, fraction=0.5, seed=seed)).rows()] for seed in (0, 0, 1)]
    assert len(halves[0]) == 4 and halves[0] == halves[1] and halves[0] != halves[2]


# ----------------------------------------------------------------------------- visual genome


def _llava_box(x, y, w, h, width, height):
    """LLaVA-1.5's VG boxes, from its published data: relative to the image padded to a centred
    square, two decimals."""
    side = max(width, height)
    px, py = (side - width) / 2, (side - height) / 2
    return str([round((x + px) / side, 2), round((y + py) / side, 2), round((x + w + px) / side, 2), round((y + h + py) / side, 2)])


def test_visual_genome_vqa(tmp_path):
    urls = layouts.visual_genome(str(tmp_path))
    good, bad = _rows(DatasetSpec(url=urls["vqa"], format="visual_genome"))
    assert [(b.sample_id, b.reason) for b in bad] == [("1-1", "no_answer"), ("3-0", "missing_image")]
    assert [(s.id, s.conversations) for s in good] == [
        ("1-0", [{"from": "human", "value": "What color is the clock?"}, {"from": "gpt", "value": "Green."}]),
        ("2-0", [{"from": "human", "value": "Who is ríding?"}, {"from": "gpt", "value": "A man."}]),
    ]
    assert good[0].images == [str(tmp_path / "vg" / "VG_100K/1.jpg")] and good[1].images[0].endswith("VG_100K_2/2.jpg")
    manifest, _ = _staged(DatasetSpec(url=urls["vqa"], format="visual_genome"), tmp_path / "staged")
    _assert_counts(manifest, layouts.VG_QA)
    two = open_source(DatasetSpec(url=urls["vqa"], format="visual_genome", turns_per_sample=2))
    assert len(two) == 3 and len(two[0].conversations) == 2  # the empty answer is dropped from the pair


def test_visual_genome_boxes_in_both_formats(tmp_path):
    urls = layouts.visual_genome(str(tmp_path))
    llava, none_bad = _rows(DatasetSpec(url=urls["referring"], format="visual_genome", seed=1))
    assert none_bad == []
    man = next(s for s in llava if s.id == "2-0")
    box = _llava_box(50, 300, 100, 200, 500, 1000)
    assert box == "[0.3, 0.3, 0.4, 0.5]"
    assert man.conversations in (
        [{"from": "human", "value": f"Please provide a short description for this region: {box}."}, {"from": "gpt", "value": "man riding a bike"}],
        [{"from": "human", "value": "Please provide the bounding box coordinate of the region this sentence describes: man riding a bike"},
         {"from": "gpt", "value": box}],
    )
    whole = next(s for s in llava if s.id == "1-1")
    assert _llava_box(0, 0, 800, 600, 800, 600) in json.dumps(whole.conversations) == json.dumps(whole.conversations)
    qwen, _ = _rows(DatasetSpec(url=urls["grounded_caption"], format="visual_genome", box_format="qwen_vl"))
    # Qwen-VL: (x1,y1),(x2,y2) as integers on 0-1000 of the original width / height
    x1, y1, x2, y2 = int(421 / 800 * 1000), int(91 / 600 * 1000), int((421 + 79) / 800 * 1000), int((91 + 339) / 600 * 1000)
    assert qwen[0].conversations == [
        {"from": "human", "value": f"Please provide a short description for this region: <box>({x1},{y1}),({x2},{y2})</box>."},
        {"from": "gpt", "value": "clock"},
    ]
    referring, _ = _rows(DatasetSpec(url=urls["referring"], format="visual_genome", box_format="qwen_vl"))
    assert all("<box>(" in json.dumps(s.conversations) for s in referring)
    for url, want in ((urls["referring"], layouts.VG_REGIONS), (urls["grounded_caption"], layouts.VG_OBJECTS)):
        manifest, _ = _staged(DatasetSpec(url=url, format="visual_genome"), tmp_path / url.rsplit("/", 1)[-1])
        _assert_counts(manifest, want)


def test_visual_genome_needs_its_image_data(tmp_path):
    urls = layouts.visual_genome(str(tmp_path))
    (tmp_path / "vg" / "image_data.json").unlink()
    with pytest.raises(FileNotFoundError, match="image_data.json"):
        open_source(DatasetSpec(url=urls["vqa"], format="visual_genome"))
    with pytest.raises(ValueError, match="names one of question_answers.json"):
        open_source(DatasetSpec(url=str(tmp_path / "vg" / "attributes.json"), format="visual_genome"))


# ----------------------------------------------------------------------------- ocr-vqa


def test_ocr_vqa_finds_covers_by_id_and_sniffs_their_encoding(tmp_path):
    url = layouts.ocr_vqa(str(tmp_path))
    good, bad = _rows(DatasetSpec(url=url, format="ocr_vqa"))
    assert [s.id for s in good] == ["761183272-0", "761183272-1", "761183272-2", "1405-0", "222-0"]
    assert good[1].conversations == [{"from": "human", "value": "What is the title of this book?"},
                                     {"from": "gpt", "value": "Mom's Family Wall Calendar 2016"}]
    assert good[3].images[0].endswith("images/1405.png") and good[3].meta["genre"] == "Calendars"
    assert [(b.sample_id, b.reason) for b in bad] == [("999-0", "missing_image"), ("222-1", "no_answer")]
    manifest, staged = _staged(DatasetSpec(url=url, format="ocr_vqa"), tmp_path / "staged")
    _assert_counts(manifest, layouts.OCR_VQA)
    assert staged["761183272-0"].images[0][:4] == b"GIF8"  # kept, stored as what it is
    val = open_source(DatasetSpec(url=url, format="ocr_vqa", split="val", turns_per_sample=2))
    assert len(val) == 1 and val[0].conversations == [{"from": "human", "value": "Is this a comic book?"}, {"from": "gpt", "value": "Yes"}]


def test_staging_keeps_web_encodings_and_reencodes_the_rest(tmp_path):
    from operators.staging import _load_image

    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp")):
        data = layouts.image((1, 2, 3), fmt=fmt)
        assert _load_image(data) == (ext, data)
    bmp = layouts.image((1, 2, 3), fmt="BMP")
    ext, data = _load_image(bmp)
    assert ext == "png" and Image.open(io.BytesIO(data)).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(BadSample, match="corrupt_image"):
        _load_image(b"\x89PNG\r\n\x1a\n broken")


def test_vlm_data_inspect_shows_counts_lengths_and_samples(tmp_path):
    from click.testing import CliRunner

    from vlm_core.data.cli import data_group

    url = layouts.llava_mix(str(tmp_path))
    stage_dataset(DatasetSpec(url=url), str(tmp_path / "staged"), progress=False)
    result = CliRunner().invoke(data_group, ["inspect", str(tmp_path / "staged" / "manifest.json"), "--samples", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "6 samples in 1 shards" in out and "rows 8, selected 8, skipped 2 (duplicate id 1, missing image 1)" in out
    assert "with images: 5, text-only: 1" in out
    histogram = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "-" in line.split()[0]]
    assert sum(int(cells[1]) for cells in histogram) == 6  # every sample in one bucket of the length histogram
    assert "-- 000000033471 images: 12x8" in out and "gpt: The bus in the image is white and red." in out
    missing = CliRunner().invoke(data_group, ["inspect", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not a staged dataset" in missing.output
