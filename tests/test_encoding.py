"""SampleEncoder: RawSample -> model inputs, and the bad-input corpus with its stated outcomes."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from PIL import Image

from tests.fixtures.data.helpers import make_processor
from vlm_core.data.encoding import SampleEncoder
from vlm_core.data.templates import IGNORE_INDEX
from vlm_core.data.types import BadSample, BadSampleStats, RawSample

N_IMG = 4


def png_bytes(colour=(255, 0, 0), size=(20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def qa(question: str, answer: str | None = "red") -> list[dict[str, str]]:
    turns = [{"from": "human", "value": question}]
    if answer is not None:
        turns.append({"from": "gpt", "value": answer})
    return turns


@pytest.fixture(scope="module")
def processor():
    return make_processor(num_image_tokens=N_IMG)


@pytest.fixture(scope="module")
def encoder(processor):
    return SampleEncoder(processor, "vicuna_v1", max_length=128)


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return str(path)


def test_encodes_image_sample(encoder, processor, image_file):
    out = encoder.encode(RawSample("s1", [image_file], qa("<image>\nWhat colour?")), "ds", 3)
    assert out["dataset_index"] == 3
    ids, labels = out["input_ids"], out["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    assert (ids == processor.image_token_id).sum() == N_IMG
    assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()
    assert processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == " red</s>"
    assert out["pixel_values"].shape == (1, 3, 16, 16)
    assert out["pixel_values"].dtype == torch.float32


def test_text_only_sample_has_no_pixels(encoder, processor):
    out = encoder.encode(RawSample("t", [], qa("Say hi")), "ds")
    assert out["pixel_values"].shape == (0, 3, 16, 16)
    assert processor.image_token_id not in out["input_ids"].tolist()


def test_missing_placeholder_is_prepended_to_the_first_human_turn(encoder, processor, image_file):
    raw = RawSample("s", [image_file], qa("What colour?"))
    out = encoder.encode(raw, "ds")
    explicit = encoder.encode(RawSample("s", [image_file], qa("<image>\nWhat colour?")), "ds")
    assert torch.equal(out["input_ids"], explicit["input_ids"])
    assert raw.conversations[0]["value"] == "What colour?"  # the raw sample is left as it was


def test_inline_bytes_images(encoder):
    out = encoder.encode(RawSample("b", [png_bytes(), png_bytes((0, 0, 255))], qa("<image> or <image>?")), "ds")
    assert out["pixel_values"].shape == (2, 3, 16, 16)
    assert not torch.equal(out["pixel_values"][0], out["pixel_values"][1])


def _corrupt(tmp_path) -> str:
    path = tmp_path / "broken.png"
    path.write_bytes(png_bytes()[:40])  # a truncated PNG: header fine, pixels gone
    return str(path)


BAD_CORPUS = {
    "missing_image": lambda tmp, img: RawSample("m1", [str(tmp / "nope.png")], qa("<image>\nWhat?")),
    "corrupt_image": lambda tmp, img: RawSample("c1", [_corrupt(tmp)], qa("<image>\nWhat?")),
    "corrupt_bytes": lambda tmp, img: RawSample("c2", [b"not an image"], qa("<image>\nWhat?")),
    "image_count_mismatch": lambda tmp, img: RawSample("x1", [img], qa("<image> and <image>?")),
    "placeholder_without_image": lambda tmp, img: RawSample("x2", [], qa("<image>\nWhat?")),
    "too_long": lambda tmp, img: RawSample("l1", [img], qa("<image>\n" + "What colour? " * 40)),
    "no_assistant_turn": lambda tmp, img: RawSample("n1", [img], qa("<image>\nWhat?", answer=None)),
    "malformed_turn": lambda tmp, img: RawSample("f1", [], [{"from": "robot", "value": "beep"}]),
}
EXPECTED = {
    "missing_image": "missing_image",
    "corrupt_image": "corrupt_image",
    "corrupt_bytes": "corrupt_image",
    "image_count_mismatch": "image_count_mismatch",
    "placeholder_without_image": "image_count_mismatch",
    "too_long": "too_long",
    "no_assistant_turn": "no_assistant_turn",
    "malformed_turn": "malformed",
}


@pytest.mark.parametrize("case", sorted(BAD_CORPUS))
def test_bad_input_corpus(encoder, tmp_path, image_file, case):
    raw = BAD_CORPUS[case](tmp_path, image_file)
    with pytest.raises(BadSample) as err:
        encoder.encode(raw, "mix_a")
    assert err.value.reason == EXPECTED[case]
    assert err.value.sample_id == raw.id and err.value.dataset == "mix_a"
    assert str(err.value).startswith(f"sample {raw.id!r} of dataset 'mix_a': {EXPECTED[case]}")


def test_too_long_is_rejected_not_truncated(processor, image_file):
    raw = RawSample("l", [image_file], qa("<image>\nWhat colour?"))
    n = len(SampleEncoder(processor, "vicuna_v1", max_length=10_000).encode(raw)["input_ids"])
    assert len(SampleEncoder(processor, "vicuna_v1", max_length=n).encode(raw)["input_ids"]) == n
    with pytest.raises(BadSample, match=f"too_long \\({n} tokens > max_length {n - 1}\\)"):
        SampleEncoder(processor, "vicuna_v1", max_length=n - 1).encode(raw, "ds")


def test_bad_sample_survives_pickling():
    bad = BadSample("too_long", "9 > 8", sample_id="x", dataset="d")
    again = pickle.loads(pickle.dumps(bad))
    assert (again.reason, again.detail, again.sample_id, again.dataset) == ("too_long", "9 > 8", "x", "d")


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown bad-sample reason 'oops'"):
        BadSample("oops")


def test_bad_sample_stats_merge_and_summary():
    a, b = BadSampleStats(), BadSampleStats()
    a.add("coco", "missing_image")
    a.add("coco", "too_long", 2)
    b.add("coco", "too_long")
    b.add("ocr", "corrupt_image")
    total = a + b
    assert total.to_dict() == {"coco": {"missing_image": 1, "too_long": 3}, "ocr": {"corrupt_image": 1}}
    assert total.by_dataset() == {"coco": 4, "ocr": 1}
    assert BadSampleStats.from_dict(total.to_dict()) == total
    assert total.summary() == "5 bad samples skipped (coco: missing_image 1, too_long 3; ocr: corrupt_image 1)"
    assert BadSampleStats().summary() == "no bad samples"


def test_aspect_must_agree_with_the_processor(processor):
    with pytest.raises(ValueError, match="image_aspect 'square' differs from the processor's 'pad'"):
        SampleEncoder(processor, "vicuna_v1", image_aspect="square")


def test_alignment_sample_with_plain_template(processor, image_file):
    raw = RawSample("a", [image_file], qa("<image>\nDescribe the image briefly.", "a red circle at the top left"))
    out = SampleEncoder(processor, "plain", max_length=64).encode(raw, "align")
    ids = out["input_ids"].tolist()
    # LLaVA's preprocess_plain: BOS, the image, the caption and "\n" (trained), no EOS
    assert ids[: 1 + N_IMG] == [processor.tokenizer.bos_token_id] + [processor.image_token_id] * N_IMG
    assert processor.tokenizer.decode(ids[1 + N_IMG :]) == "a red circle at the top left\n"
    assert out["labels"].tolist() == [IGNORE_INDEX] * (1 + N_IMG) + ids[1 + N_IMG :]
