"""`vlm synth`: deterministic, valid LLaVA training files and benchmark-format eval files."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlm_core.cli import main
from vlm_core.config import DatasetSpec
from vlm_core.data import open_source
from vlm_core.data.synth import (
    COLOURS,
    MC_CONVERSATIONS,
    MULTIPLE_CHOICE,
    POSITIONS,
    SHAPES,
    SHORT_ANSWER,
    generate,
)

TRAIN, EVAL = 40, 12
CAPTION = re.compile(rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(main, ["synth", str(out), "--seed", "3", "--train", str(TRAIN), "--eval", str(EVAL)])
    assert result.exit_code == 0, result.output
    assert f"{TRAIN} train images" in result.output
    return out


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def captions_by_image(root: Path) -> dict[str, tuple[str, str, str]]:
    source = open_source(DatasetSpec(url=str(root / "align.jsonl")))
    out = {}
    for i in range(len(source)):
        sample = source[i]
        match = CAPTION.fullmatch(sample.conversations[1]["value"])
        assert match, sample.conversations[1]["value"]
        out[sample.images[0]] = match.groups()
    return out


def test_deterministic_given_the_seed(synth_dir, tmp_path):
    generate(str(tmp_path / "again"), seed=3, train=TRAIN, eval_images=EVAL)
    assert tree_digest(tmp_path / "again") == tree_digest(synth_dir)
    generate(str(tmp_path / "other"), seed=4, train=TRAIN, eval_images=EVAL)
    assert (tmp_path / "other" / "align.jsonl").read_text() != (synth_dir / "align.jsonl").read_text()


def test_summary(synth_dir):
    summary = json.loads((synth_dir / "synth.json").read_text())
    assert summary["seed"] == 3 and summary["train_images"] == TRAIN and summary["eval_images"] == EVAL
    assert summary["chance"] == {"colour": 0.25, "shape": pytest.approx(1 / 3), "position": 0.25}
    assert summary["instruct_samples"] == (1 + MC_CONVERSATIONS) * TRAIN and summary["vqa_questions"] == 3 * EVAL
    for rel in summary["files"].values():
        assert (synth_dir / rel).exists(), rel


def test_align_captions_describe_the_image(synth_dir):
    captions = captions_by_image(synth_dir)
    assert len(captions) == TRAIN
    for url, (colour, _, position) in captions.items():
        image = Image.open(url)
        assert image.size == (32, 32) and image.mode == "RGB"
        # the shape's colour sits in its quadrant, the opposite quadrant is blank
        row, col = position.split()
        qx, qy = (16 if col == "right" else 0), (16 if row == "bottom" else 0)
        quadrant = [image.getpixel((qx + x, qy + y)) for x in range(16) for y in range(16)]
        assert sum(p == COLOURS[colour] for p in quadrant) > 40
        ox, oy = 16 - qx, 16 - qy
        assert all(image.getpixel((ox + x, oy + y)) == (255, 255, 255) for x in range(16) for y in range(16))


def test_instruct_answers_agree_with_the_captions(synth_dir):
    captions = captions_by_image(synth_dir)
    source = open_source(DatasetSpec(url=str(synth_dir / "instruct.jsonl")))
    kinds = {"short answer": 0, "multiple choice": 0}
    mc_attributes = []
    for i in range(len(source)):
        sample = source[i]
        turns = sample.conversations
        colour, shape, position = captions[sample.images[0]]
        attribute_of = {colour: "colour", shape: "shape", position: "position"}
        assert [t["from"] for t in turns] == ["human", "gpt"] * 3  # every attribute once
        assert turns[0]["value"].startswith("<image>\n")  # the image once, in the first turn
        assert not any("<image>" in t["value"] for t in turns[1:])
        asked = []
        if turns[0]["value"].endswith(SHORT_ANSWER):
            assert all(q["value"].endswith(SHORT_ANSWER) for q in turns[::2])
            asked = [attribute_of[a["value"]] for a in turns[1::2]]
            kinds["short answer"] += 1
        else:  # LLaVA-1.5's MMBench prompt, the answer a letter
            for question, answer in zip(turns[::2], turns[1::2]):
                assert question["value"].endswith(MULTIPLE_CHOICE)
                options = dict(re.findall(r"^([A-D])\. (.+)$", question["value"], flags=re.MULTILINE))
                truth = next(v for v in (colour, shape, position) if v in options.values())
                assert options[answer["value"]] == truth
                asked.append(attribute_of[truth])
                mc_attributes.append([options[k] for k in sorted(options)])
            kinds["multiple choice"] += 1
        assert sorted(asked) == ["colour", "position", "shape"]
    assert kinds == {"short answer": TRAIN, "multiple choice": MC_CONVERSATIONS * TRAIN}
    assert len({tuple(o) for o in mc_attributes}) > 10  # the options come in fresh orders


def test_vqa_files_line_up(synth_dir):
    questions = json.loads((synth_dir / "eval/vqa/questions.json").read_text())["questions"]
    annotations = json.loads((synth_dir / "eval/vqa/annotations.json").read_text())["annotations"]
    assert len(questions) == len(annotations) == 3 * EVAL
    by_id = {a["question_id"]: a for a in annotations}
    assert len(by_id) == len(annotations)
    for q in questions:
        a = by_id[q["question_id"]]
        assert a["image_id"] == q["image_id"]
        assert (synth_dir / f"eval/vqa/images/{q['image_id']}.png").exists()
        assert a["question_type"] in ("colour", "shape", "position") and a["answer_type"] == "other"
        assert len(a["answers"]) == 10
        assert {x["answer"] for x in a["answers"]} == {a["multiple_choice_answer"]}
        assert all(x["answer_confidence"] == "yes" for x in a["answers"])
        allowed = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS}[a["question_type"]]
        assert a["multiple_choice_answer"] in allowed


def test_mmbench_tsv(synth_dir):
    with open(synth_dir / "eval/mmbench_dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    assert len(rows) == EVAL and len({r["index"] for r in rows}) == EVAL
    for row in rows:
        options = [row[x] for x in "ABCD" if row[x]]
        assert len(options) == (3 if row["category"] == "shape" else 4)
        assert row["answer"] in "ABCD"[: len(options)] and row["split"] == "dev"
        Image.open(io.BytesIO(base64.b64decode(row["image"]))).verify()


def test_eval_images_are_disjoint_from_train(synth_dir):
    train = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (synth_dir / "images").glob("*.png")}
    vqa = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (synth_dir / "eval/vqa/images").glob("*.png")}
    assert len(train) == TRAIN and len(vqa) == EVAL
    assert not train & vqa


def test_training_samples_encode(synth_dir):
    from tests.fixtures.data.helpers import make_processor
    from vlm_core.data.encoding import SampleEncoder

    processor = make_processor(num_image_tokens=4)
    for url, template in (("align.jsonl", "plain"), ("instruct.jsonl", "vicuna_v1")):
        source = open_source(DatasetSpec(url=str(synth_dir / url)))
        encoder = SampleEncoder(processor, template, max_length=512)  # the test tokenizer spells most words out
        for i in range(10):
            assert encoder.encode(source[i], url)["pixel_values"].shape == (1, 3, 16, 16)


def test_writes_to_s3(s3_bucket):
    generate(f"{s3_bucket}/synth", seed=1, train=4, eval_images=2)
    source = open_source(DatasetSpec(url=f"{s3_bucket}/synth/instruct.jsonl"))
    assert len(source) == (1 + MC_CONVERSATIONS) * 4
    assert source[0].images[0].startswith(f"{s3_bucket}/synth/images/")
    from vlm_core import storage

    assert storage.exists(f"{s3_bucket}/synth/eval/vqa/images/2.png")
