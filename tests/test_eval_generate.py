"""Generation and the eval runner on a tiny random-weight model and the synthetic benchmarks."""

from __future__ import annotations

import json

import pytest
import torch

from vlm_core import storage
from vlm_core.config import load_config
from vlm_core.eval.answers import AnswerStore
from vlm_core.eval.benchmarks import BENCHMARKS, EvalRequest
from vlm_core.eval.generate import generate_answers
from vlm_core.eval.runner import EvalSettings, evaluate

TEXTS = ["What colour is the shape? red green blue yellow circle square triangle left right top bottom"]


def tiny_model():
    """The quickstart architecture with large random weights, so answers depend on the input."""
    from vlm_core.models.builder import build_vlm

    model_cfg = load_config("configs/quickstart.yaml").model.model_copy(deep=True)
    model_cfg.llm.config.update(initializer_range=0.5)
    model_cfg.vision.config.update(initializer_range=0.5)
    model, processor = build_vlm(model_cfg, template="vicuna_v1", image_aspect="pad", tokenizer_texts=TEXTS)
    return model.eval(), processor


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from vlm_core.data.synth import generate

    root = str(tmp_path_factory.mktemp("synth"))
    generate(root, train=4, eval_images=6)
    return root


@pytest.fixture(scope="module")
def model_and_processor():
    torch.set_num_threads(1)
    return tiny_model()


def _requests(synth_root, name, n):
    bench = BENCHMARKS.get(name)
    return bench.load(bench.default_spec(synth_root)).requests[:n]


def test_batched_left_padded_answers_equal_one_by_one(model_and_processor, synth_root):
    model, processor = model_and_processor
    requests = _requests(synth_root, "synth_vqa", 6) + _requests(synth_root, "synth_mmbench", 6)
    requests.append(EvalRequest("no-image", "Is there a shape?", None))
    requests.append(EvalRequest("gone", "What colour?", storage.join(synth_root, "eval", "vqa", "images", "nope.png")))
    batched = generate_answers(model, processor, requests, batch_size=8, max_new_tokens=6)
    one_by_one = [generate_answers(model, processor, [r], batch_size=1, max_new_tokens=6)[0] for r in requests]
    assert batched == one_by_one
    assert [r["question_id"] for r in batched] == [r.question_id for r in requests]
    assert len({r["answer"] for r in batched[:-1]}) > 3  # answers depend on the input
    assert batched[-1]["answer"] == "" and "missing_image" in batched[-1]["error"]


def test_evaluate_writes_outputs_and_resumes(model_and_processor, synth_root, tmp_path):
    model, processor = model_and_processor
    out = str(tmp_path / "eval")
    settings = EvalSettings(
        checkpoint="unused", benchmarks=["synth_vqa", "synth_mmbench"], output=out,
        tensorboard=str(tmp_path / "tb"), synth_root=synth_root, limit=3, batch_size=4, max_new_tokens=4,
    )  # fmt: skip
    first = evaluate(model, processor, settings)
    vqa_answers = storage.join(out, "answers", "synth_vqa.jsonl")
    lines = [json.loads(x) for x in storage.read_text(vqa_answers).splitlines()]
    assert len(lines) == first["synth_vqa"]["num_questions"] == 3
    assert first["synth_mmbench"]["num_questions"] == 3 and first["synth_mmbench"]["num_passes"] > 6  # one pass per option
    assert json.loads(storage.read_text(storage.join(out, "results.json"))) == first
    assert "| synth_vqa |" in storage.read_text(storage.join(out, "results.md"))
    # how each score was made, so it can be reproduced
    import hashlib

    protocol = first["synth_vqa"]["protocol"]
    assert (protocol["task"], protocol["prompt"]["id"], protocol["scorer"]["name"]) == ("synth_vqa", "llava15_short_answer", "vqav2")
    assert protocol["scorer"]["version"] == "vqaeval-a013f00+evalai-prediction"
    assert protocol["decoding"] == {
        "strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": 4, "template": "vicuna_v1", "stop": "</s>",
    }  # fmt: skip
    questions = storage.join(synth_root, "eval", "vqa", "questions.json")
    assert protocol["files"]["questions"] == {
        "url": questions, "sha256": hashlib.sha256(storage.read_bytes(questions)).hexdigest(),
    }  # fmt: skip
    assert set(protocol["files"]) == {"questions", "annotations"} and protocol["limit"] == 3
    assert first["synth_mmbench"]["protocol"]["prompt"]["id"] == "llava15_mmbench_en"
    assert first["synth_mmbench"]["protocol"]["scorer"]["name"] == "mmbench_circular"

    # Resume: a recorded answer is kept as written, only the new questions are generated.
    lines[0]["answer"] = "red"
    storage.write_text_atomic(vqa_answers, "".join(json.dumps(x) + "\n" for x in lines))
    settings.limit = 5
    second = evaluate(model, processor, settings)
    resumed = [json.loads(x) for x in storage.read_text(vqa_answers).splitlines()]
    assert len(resumed) == 5 and resumed[0] == lines[0] and resumed[1:3] == lines[1:3]
    assert second["synth_vqa"]["num_questions"] == 5
    assert AnswerStore(str(tmp_path / "eval" / "answers"), "synth_vqa")._part_urls() == []

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "synth_vqa/accuracy" in acc.Tags()["scalars"]
    assert any(t.startswith("synth_mmbench/per_category/") for t in acc.Tags()["scalars"])
    assert not any("/protocol" in t for t in acc.Tags()["scalars"])  # how a score was made is no scalar
