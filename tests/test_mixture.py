"""MixtureDataset (weights, bad samples, lengths) and VLMCollator (padding, batching)."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
import torch
from PIL import Image

from tests.fixtures.data.helpers import make_processor
from vlm_core.config import DatasetSpec
from vlm_core.data import MixtureDataset, SampleEncoder, VLMCollator, open_source
from vlm_core.data.templates import IGNORE_INDEX
from vlm_core.data.types import BadSample


def write_jsonl(path, n: int, prefix: str, image: str | None = None, bad: set[int] = frozenset()) -> str:
    records = []
    for i in range(n):
        record = {"id": f"{prefix}{i}", "conversations": [
            {"from": "human", "value": "Say " + "hi " * (i % 3 + 1)}, {"from": "gpt", "value": "hi"}]}
        if image is not None:
            record["image"] = image
        if i in bad:
            record["image"] = "missing.png"
        records.append(record)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def processor():
    return make_processor(num_image_tokens=2)


@pytest.fixture()
def sources(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buf, format="PNG")
    (tmp_path / "g.png").write_bytes(buf.getvalue())
    return {
        "a": open_source(DatasetSpec(url=write_jsonl(tmp_path / "a.jsonl", 10, "a"))),
        "b": open_source(DatasetSpec(url=write_jsonl(tmp_path / "b.jsonl", 10, "b", image="g.png"))),
        "c": open_source(DatasetSpec(url=write_jsonl(tmp_path / "c.jsonl", 4, "c", bad={1}))),
    }


def ids_per_epoch(mix: MixtureDataset) -> Counter:
    return Counter(mix.locate(i) for i in range(len(mix)))


def test_weights_are_appearances_per_epoch(sources, processor):
    mix = MixtureDataset(
        {"a": (sources["a"], 2.0), "b": (sources["b"], 0.5), "c": (sources["c"], 1.5)}, SampleEncoder(processor), seed=7
    )
    assert len(mix) == 20 + 5 + 6
    counts = ids_per_epoch(mix)
    assert all(counts[("a", i)] == 2 for i in range(10))
    b = [i for i in range(10) if counts[("b", i)]]
    assert len(b) == 5 and all(counts[("b", i)] == 1 for i in b)  # a subset, each once
    assert sorted(counts[("c", i)] for i in range(4)) == [1, 1, 2, 2]
    assert mix.dataset_names == ["a", "b", "c"]
    # the fractional subset follows the seed
    again = MixtureDataset({"a": (sources["a"], 2.0), "b": (sources["b"], 0.5), "c": (sources["c"], 1.5)},
                           SampleEncoder(processor), seed=7)
    assert ids_per_epoch(again) == counts
    subsets = {
        tuple(sorted(i for i in range(10) if ids_per_epoch(MixtureDataset({"b": (sources["b"], 0.5)},
                                                                          SampleEncoder(processor), seed=s))[("b", i)]))
        for s in range(5)
    }
    assert len(subsets) > 1


def test_items_lengths_and_bad_samples(sources, processor):
    mix = MixtureDataset({"a": (sources["a"], 1.0), "c": (sources["c"], 1.0)}, SampleEncoder(processor), seed=0)
    assert mix.lengths == [-3, -4, -5] * 3 + [-3] + [-3, 4, -5, -3]  # "c1" points at an image
    items = [mix[i] for i in range(len(mix))]
    assert items[11] is None  # c1's image is missing
    assert [item["dataset_index"] for item in items if item is not None] == [0] * 10 + [1] * 3
    assert mix.bad_stats.to_dict() == {"c": {"missing_image": 1}}


def test_strict_names_the_sample_and_dataset(sources, processor):
    mix = MixtureDataset({"c": (sources["c"], 1.0)}, SampleEncoder(processor, strict=True), seed=0)
    with pytest.raises(BadSample, match=r"sample 'c1' of dataset 'c': missing_image \(.*missing.png"):
        mix[1]
    assert mix.bad_stats.total == 0


def test_rejects_bad_weights(sources, processor):
    with pytest.raises(ValueError, match="dataset 'a' has weight 0"):
        MixtureDataset({"a": (sources["a"], 0)}, SampleEncoder(processor))


def test_collator_right_pads_and_drops_bad_items(sources, processor):
    mix = MixtureDataset({"b": (sources["b"], 1.0), "c": (sources["c"], 1.0)}, SampleEncoder(processor), seed=0)
    items = [mix[0], mix[1], mix[11], mix[10]]  # b0, b1 (images), c1 (bad), c0 (text only)
    assert items[2] is None
    batch = VLMCollator(pad_token_id=processor.tokenizer.pad_token_id)(items)
    lengths = [len(items[i]["input_ids"]) for i in (0, 1, 3)]
    longest = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    for row, (i, n) in enumerate(zip((0, 1, 3), lengths)):
        assert torch.equal(batch["input_ids"][row, :n], items[i]["input_ids"])
        assert torch.equal(batch["labels"][row, :n], items[i]["labels"])
        assert (batch["input_ids"][row, n:] == processor.tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)  # b0's and b1's images, c0 has none
    assert batch["dataset_index"].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="every sample of this batch was bad"):
        VLMCollator(0)([None])


def test_dataloader_with_a_worker_process(sources, processor):
    """Sources reopen their files in each worker (the index travels, the handle does not)."""
    mix = MixtureDataset({"a": (sources["a"], 1.0), "b": (sources["b"], 1.0)}, SampleEncoder(processor), seed=0)
    mix[0]  # open the file handle in this process first
    loader = torch.utils.data.DataLoader(
        mix, batch_size=8, num_workers=1, collate_fn=VLMCollator(processor.tokenizer.pad_token_id)
    )
    batches = list(loader)
    assert sum(len(b["input_ids"]) for b in batches) == 20
    assert sum(len(b["pixel_values"]) for b in batches) == 10
