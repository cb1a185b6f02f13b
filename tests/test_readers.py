"""Readers: LLaVA JSON / JSONL and parquet sources, local and on S3 (moto)."""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlm_core.config import DatasetSpec
from vlm_core.data.images import load_image
from vlm_core.data.readers import (
    LlavaJsonlSource,
    LlavaJsonSource,
    ParquetSource,
    detect_format,
    open_source,
)
from vlm_core.data.types import BadSample


def png(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


RECORDS = [
    {"id": "a", "image": "imgs/red.png",
     "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Say hi to me"}, {"from": "gpt", "value": "hi there"}]},
    {"id": "c", "images": ["imgs/red.png", "imgs/blue.png"], "source": "x",
     "conversations": [{"from": "human", "value": "<image> <image> same?"}, {"from": "gpt", "value": "no"}]},
]
# LLaVA's modality length: words over all turns, negative without an image
MODALITY = [4, -6, 4]


@pytest.fixture()
def llava_dir(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "imgs" / "blue.png").write_bytes(png((0, 0, 255)))
    (tmp_path / "data.json").write_text(json.dumps(RECORDS))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return tmp_path


@pytest.mark.parametrize("name, cls", [("data.json", LlavaJsonSource), ("data.jsonl", LlavaJsonlSource)])
def test_llava_formats(llava_dir, name, cls):
    source = open_source(DatasetSpec(url=str(llava_dir / name)))
    assert isinstance(source, cls)
    assert len(source) == 3
    a, b, c = source[0], source[1], source[2]
    # relative paths resolve against the dataset's folder when no image_root is given
    assert a.id == "a" and a.images == [str(llava_dir / "imgs" / "red.png")]
    assert a.conversations == RECORDS[0]["conversations"]
    assert b.images == []
    assert c.images == [str(llava_dir / "imgs" / "red.png"), str(llava_dir / "imgs" / "blue.png")]
    assert c.meta == {"source": "x"}
    assert source.modality_lengths() == MODALITY
    assert load_image(c.images[1]).getpixel((0, 0)) == (0, 0, 255)


def test_image_root_overrides_the_dataset_folder(llava_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "data.jsonl").write_text((llava_dir / "data.jsonl").read_text())
    source = open_source(DatasetSpec(url=str(elsewhere / "data.jsonl"), image_root=f"file://{llava_dir}"))
    assert source[0].images == [f"file://{llava_dir}/imgs/red.png"]
    assert load_image(source[0].images[0]).size == (8, 6)


def test_jsonl_reads_one_line_by_offset(tmp_path):
    """After the indexing pass, item i is a seek + one line: the rest of the file is not parsed."""
    path = tmp_path / "big.jsonl"
    lines = [
        json.dumps({"id": f"s{i}", "conversations": [{"from": "human", "value": "word " * (i % 7)}, {"from": "gpt", "value": "x"}]})
        + "\n"
        for i in range(3000)
    ]
    path.write_text("".join(lines))
    source = LlavaJsonlSource(str(path), str(tmp_path))
    assert len(source) == 3000
    assert list(source.offsets[:3]) == [0, len(lines[0]), len(lines[0]) + len(lines[1])]
    assert source.modality_lengths()[:8] == [-1, -2, -3, -4, -5, -6, -7, -1]
    # Overwrite every byte but line 1234's (same file size): item 1234 still reads, so the reader
    # seeks to its offset and neither re-parses nor needs the rest of the file.
    target = 1234
    start, line = source.offsets[target], lines[target].encode()
    data = bytearray(b"#" * path.stat().st_size)
    data[start : start + len(line)] = line
    path.write_bytes(bytes(data))
    assert source[target].id == "s1234"
    assert source[target].conversations[0]["value"] == "word " * (target % 7)
    with pytest.raises(BadSample) as err:
        source[0]
    assert err.value.reason == "malformed"


def test_jsonl_bad_line_is_a_bad_sample_not_a_broken_dataset(tmp_path):
    good = json.dumps(RECORDS[1])
    (tmp_path / "d.jsonl").write_text(f"{good}\n{{not json\n\n{good}\n")
    source = open_source(DatasetSpec(url=str(tmp_path / "d.jsonl")))
    assert len(source) == 3  # the blank line is skipped
    assert source[2].id == "b"
    with pytest.raises(BadSample, match="malformed.*line 2"):
        source[1]


def codefuse_single_rows() -> dict:
    return {
        "id": ["p0", "p1", "p2", "p3", "p4"],
        "image": [{"bytes": png((i * 50, 0, 0)), "path": f"orig/{i}.png"} for i in range(5)],
        "prompt": ["What colour?", "Describe it", "Red?", "Why", "Count"],
        "ground_truth": ["red", "a square", "yes", "because it is", "one"],
    }


def test_parquet_single_exchange_with_image_bytes(tmp_path):
    pq.write_table(pa.table(codefuse_single_rows()), tmp_path / "d.parquet", row_group_size=2)
    source = open_source(DatasetSpec(url=str(tmp_path / "d.parquet")))
    assert isinstance(source, ParquetSource) and len(source) == 5
    # rows in different row groups, read out of order
    for i in (4, 0, 3, 1, 2):
        sample = source[i]
        assert sample.id == f"p{i}"
        assert isinstance(sample.images[0], bytes)
        assert load_image(sample.images[0]).getpixel((0, 0)) == (i * 50, 0, 0)
    assert source[1].conversations == [
        {"from": "human", "value": "Describe it"},
        {"from": "gpt", "value": "a square"},
    ]
    assert source.modality_lengths() == [3, 4, 2, 4, 2]
    with pytest.raises(IndexError):
        source[5]


def test_parquet_folder_with_lists_and_paths(tmp_path, llava_dir):
    folder = tmp_path / "pq"
    folder.mkdir()
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for part, rows in enumerate([[0, 1], [2]]):
        table = pa.table(
            {
                "image": pa.array(
                    [None if r == 1 else {"bytes": None, "path": "imgs/blue.png"} for r in rows], type=image_type
                ),
                "prompts": [[f"q{r}", "and then"] for r in rows],
                "ground_truths": [[f"a{r}", "done it"] for r in rows],
            }
        )
        pq.write_table(table, folder / f"part-{part}.parquet")
    assert detect_format(str(folder)) == "parquet"
    source = open_source(DatasetSpec(url=str(folder), image_root=str(llava_dir)))
    assert len(source) == 3
    assert source[2].id == "2"  # no id column: the row index
    assert source[2].images == [str(llava_dir / "imgs" / "blue.png")]
    assert source[1].images == []
    assert source[0].conversations == [
        {"from": "human", "value": "q0"}, {"from": "gpt", "value": "a0"},
        {"from": "human", "value": "and then"}, {"from": "gpt", "value": "done it"},
    ]
    assert source.modality_lengths() == [6, -6, 6]


def test_format_detection(tmp_path):
    assert detect_format("s3://b/x/train.JSONL") == "llava_jsonl"
    assert detect_format("data/x.json") == "llava_json"
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    assert detect_format(str(tmp_path / "shards")) == "shards"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a manifest.json"):
        detect_format(str(tmp_path / "empty"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="name it .json, .jsonl or .parquet"):
        detect_format(str(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_format(str(tmp_path / "nope"))


def test_sources_on_s3(s3_bucket, llava_dir, tmp_path):
    import s3fs

    pq.write_table(pa.table(codefuse_single_rows()), tmp_path / "d.parquet", row_group_size=2)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}, skip_instance_cache=True)
    root = s3_bucket.removeprefix("s3://")
    fs.put(str(llava_dir / "imgs"), f"{root}/ds/imgs", recursive=True)
    fs.put(str(llava_dir / "data.jsonl"), f"{root}/ds/data.jsonl")
    fs.put(str(llava_dir / "data.json"), f"{root}/ds/data.json")
    fs.put(str(tmp_path / "d.parquet"), f"{root}/pq/d.parquet")

    for name in ("data.jsonl", "data.json"):
        source = open_source(DatasetSpec(url=f"{s3_bucket}/ds/{name}"))
        assert [s.id for s in (source[2], source[0])] == ["c", "a"]
        assert source[2].images == [f"{s3_bucket}/ds/imgs/red.png", f"{s3_bucket}/ds/imgs/blue.png"]
        assert load_image(source[2].images[1]).getpixel((0, 0)) == (0, 0, 255)
        assert source.modality_lengths() == MODALITY
    source = open_source(DatasetSpec(url=f"{s3_bucket}/pq/d.parquet"))
    assert load_image(source[3].images[0]).getpixel((0, 0)) == (150, 0, 0)
    assert source.modality_lengths() == [3, 4, 2, 4, 2]
    with pytest.raises(BadSample, match="missing_image"):
        load_image(f"{s3_bucket}/ds/imgs/none.png")
