"""Benchmark loaders on small files in the published formats, and `vlm eval score`."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from vlm_core import storage
from vlm_core.cli import main
from vlm_core.config import BenchmarkSpec
from vlm_core.eval.benchmarks import BENCHMARKS
from vlm_core.eval.formats import AnnotationError
from vlm_core.eval.prompts import SHORT_ANSWER, VIZWIZ_UNANSWERABLE


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_vqa(root: str) -> BenchmarkSpec:
    questions = {"questions": [
        {"question_id": 11, "image_id": 1, "question": "What colour is the shape?"},
        {"question_id": 12, "image_id": 2, "question": "How many shapes?"},
    ]}  # fmt: skip
    annotations = {"annotations": [
        {"question_id": 11, "image_id": 1, "question_type": "colour", "answer_type": "other",
         "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]},
        {"question_id": 12, "image_id": 2, "question_type": "how many", "answer_type": "number",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(["2"] * 8 + ["3"] * 2)]},
    ]}  # fmt: skip
    storage.write_text_atomic(storage.join(root, "questions.json"), json.dumps(questions))
    storage.write_text_atomic(storage.join(root, "annotations.json"), json.dumps(annotations))
    storage.write_bytes_atomic(storage.join(root, "images", "1.png"), _png())  # image 2 is missing
    return BenchmarkSpec(
        questions=storage.join(root, "questions.json"),
        annotations=storage.join(root, "annotations.json"),
        images=storage.join(root, "images"),
    )


def write_mmbench(path, rows, with_answer=True):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(h, "") for h in header])
    return str(path)


MMB_ROWS = [
    {"index": 0, "question": "What shape?", "hint": "nan", "A": "circle", "B": "square", "C": "triangle",
     "answer": "B", "category": "shape", "l2-category": "perception", "image": base64.b64encode(_png()).decode()},
    {"index": 1, "question": "图中是什么颜色？", "hint": "看图。", "A": "红", "B": "蓝",
     "answer": "A", "category": "colour", "l2-category": "perception", "image": "not base64!"},
]  # fmt: skip


def test_vqa_loader_prompts_images_and_scoring(tmp_path):
    spec = write_vqa(str(tmp_path))
    es = BENCHMARKS.get("synth_vqa").load(spec)
    assert [r.question_id for r in es.requests] == ["11", "12"]
    assert es.requests[0].prompt == f"What colour is the shape?\n{SHORT_ANSWER}"
    assert es.requests[0].image == storage.join(str(tmp_path), "images", "1.png")
    result = es.score({"11": "Red"}, {"12": "missing image"})
    assert result["accuracy"] == 50.0
    assert result["per_question_type"] == {"colour": 100.0, "how many": 0.0}
    assert result["failed"] == [{"question_id": "12", "error": "missing image"}]
    assert [r.question_id for r in BENCHMARKS.get("synth_vqa").load(spec, limit=1).requests] == ["11"]


def test_vqav2_images_use_coco_names_and_testdev_writes_evalai_results(tmp_path):
    spec = write_vqa(str(tmp_path))
    assert BENCHMARKS.get("vqav2_val").load(spec).requests[0].image.endswith("COCO_val2014_000000000001.jpg")
    es = BENCHMARKS.get("vqav2_testdev").load(spec)
    assert es.score is None
    name, data = es.submission({"11": "Two dogs."})
    assert name == "vqav2_testdev.json"
    assert json.loads(data) == [{"question_id": 11, "answer": "2 dogs"}, {"question_id": 12, "answer": ""}]


def test_synth_default_layout(tmp_path):
    spec = BENCHMARKS.get("synth_vqa").default_spec(str(tmp_path))
    assert spec.questions == storage.join(str(tmp_path), "eval", "vqa", "questions.json")
    assert BENCHMARKS.get("synth_mmbench").default_spec("s3://b/x").questions == "s3://b/x/eval/mmbench_dev.tsv"
    assert BENCHMARKS.get("vqav2_val").default_spec(str(tmp_path)) is None


def test_vqa_loader_reads_s3(s3_bucket):
    spec = write_vqa(f"{s3_bucket}/vqa")
    assert len(BENCHMARKS.get("synth_vqa").load(spec).requests) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"annotations": [{"question_id": 11, "answer_type": "other", "question_type": "x"}]}', "annotations[0]: missing field 'answers'"),
        ('{"annotation": []}', "top level: missing field 'annotations'"),
        ('{"annotations": {}}', "field 'annotations': expected a list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_annotations_name_file_and_field(tmp_path, content, message):
    spec = write_vqa(str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(AnnotationError) as err:
        BENCHMARKS.get("vqav2_val").load(spec.model_copy(update={"annotations": str(bad)}))
    assert str(bad) in str(err.value) and message in str(err.value)


def test_mmbench_loader_rotations_prompts_and_bad_image(tmp_path):
    tsv = write_mmbench(tmp_path / "mmb.tsv", MMB_ROWS)
    es = BENCHMARKS.get("mmbench_dev_cn").load(BenchmarkSpec(questions=tsv))
    assert [r.question_id for r in es.requests] == ["0", "1000000", "2000000", "1", "1000001"]
    first = es.requests[0]
    assert first.prompt == "What shape?\nA. circle\nB. square\nC. triangle\n请直接回答选项字母。"  # hint "nan" dropped
    assert first.image == _png() and first.error is None
    assert es.requests[3].prompt.startswith("看图。\n图中是什么颜色？\nA. 红\nB. 蓝")
    assert es.requests[3].error and "row 2" in es.requests[3].error
    answers = {"0": "B", "1000000": "A", "2000000": "C"}  # rotations: (square, triangle, circle), (triangle, circle, square)
    failed = {"1": es.requests[3].error, "1000001": es.requests[4].error}
    result = es.score(answers, failed)
    assert result["circular_accuracy"] == 50.0 and result["vanilla_accuracy"] == 50.0
    assert len(result["failed"]) == 2
    assert len(BENCHMARKS.get("mmbench_dev_en").load(BenchmarkSpec(questions=tsv), limit=1).requests) == 3


def test_mmbench_test_split_writes_submission(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in MMB_ROWS]
    es = BENCHMARKS.get("mmbench_test_en").load(BenchmarkSpec(questions=write_mmbench(tmp_path / "t.tsv", rows)))
    assert es.score is None
    name, data = es.submission({"0": "The answer is B", "1000000": "circle"})
    table = list(csv.DictReader(io.StringIO(data.decode()), delimiter="\t"))
    assert name == "mmbench_test_en.tsv"
    assert [(t["index"], t["prediction"]) for t in table[:2]] == [("0", "B"), ("1000000", "C")]
    assert table[0]["hint"] == ""


TEXTVQA = {"data": [
    {"question_id": 5, "question": "What brand?", "image_id": "abc", "ocr_tokens": ["nikon", "d90"], "answers": ["Nikon"] * 10},
    {"question_id": 6, "question": "What year?", "image_id": "abd", "ocr_tokens": [], "answers": ["1999"] * 10},
]}  # fmt: skip


def test_textvqa_prompt_with_and_without_ocr_tokens(tmp_path):
    (tmp_path / "textvqa.json").write_text(json.dumps(TEXTVQA))
    spec = BenchmarkSpec(questions=str(tmp_path / "textvqa.json"), images=str(tmp_path))
    es = BENCHMARKS.get("textvqa_val").load(spec)  # LLaVA-1.5's published protocol: with OCR tokens
    assert es.requests[0].prompt == f"What brand?\nReference OCR token: nikon, d90\n{SHORT_ANSWER}"
    assert es.requests[1].prompt == f"What year?\n{SHORT_ANSWER}"  # no tokens, no reference line
    assert es.protocol["prompt"]["id"] == "llava15_textvqa_ocr"
    assert es.score({"5": "NIKON.", "6": "1999"}, {})["accuracy"] == 100.0
    plain = BENCHMARKS.get("textvqa_val").load(spec.model_copy(update={"prompt": "llava15_short_answer"}))
    assert plain.requests[0].prompt == f"What brand?\n{SHORT_ANSWER}"
    assert plain.protocol["prompt"]["id"] == "llava15_short_answer"


def test_a_prompt_must_fit_the_benchmark(tmp_path):
    (tmp_path / "textvqa.json").write_text(json.dumps(TEXTVQA))
    spec = BenchmarkSpec(questions=str(tmp_path / "textvqa.json"), images=str(tmp_path), prompt="llava15_mmbench_en")
    with pytest.raises(ValueError, match="prompt 'llava15_mmbench_en' does not fit it; use one of: llava15_short_answer"):
        BENCHMARKS.get("textvqa_val").load(spec)
    with pytest.raises(KeyError, match="unknown prompt 'ocr'; known: llava15_mmbench_cn"):
        BENCHMARKS.get("textvqa_val").load(spec.model_copy(update={"prompt": "ocr"}))


def test_vizwiz_prompt_and_per_answer_type(tmp_path):
    vizwiz = [
        {"image": "v0.jpg", "question": "What is this?", "answer_type": "unanswerable", "answerable": 0,
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 8 + [{"answer": "soup", "answer_confidence": "maybe"}] * 2},
        {"image": "v1.jpg", "question": "What colour?", "answer_type": "other", "answerable": 1,
         "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 10},
        # answerable by its flag but typed "unanswerable" by its answers: the official per-type
        # figures go by answer_type
        {"image": "v2.jpg", "question": "Which can?", "answer_type": "unanswerable", "answerable": 1,
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10},
    ]  # fmt: skip
    (tmp_path / "vizwiz.json").write_text(json.dumps(vizwiz))
    es = BENCHMARKS.get("vizwiz_val").load(BenchmarkSpec(annotations=str(tmp_path / "vizwiz.json"), images=str(tmp_path)))
    assert es.requests[0].prompt == f"What is this?\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"
    result = es.score({"v0.jpg": "Unanswerable", "v1.jpg": "red", "v2.jpg": "tomato"}, {})
    assert result["per_answer_type"] == {"other": 0.0, "unanswerable": 50.0}
    assert result["unanswerable"] == 50.0
    assert result["accuracy"] == 33.33
    assert "per_answerability" not in result


def test_gqa_scores_balanced_questions_by_type(tmp_path):
    gqa = {
        "q1": {"imageId": "n1", "question": "Which side?", "answer": "left", "isBalanced": True,
               "types": {"structural": "query", "semantic": "rel"}},
        "q2": {"imageId": "n2", "question": "Is it red?", "answer": "yes", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "attr"}},
        "q3": {"imageId": "n3", "question": "Is it blue?", "answer": "no", "isBalanced": False,
               "types": {"structural": "verify", "semantic": "attr"}},
    }  # fmt: skip
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    es = BENCHMARKS.get("gqa_testdev").load(BenchmarkSpec(questions=str(tmp_path / "gqa.json"), images=str(tmp_path)))
    assert [r.question_id for r in es.requests] == ["q1", "q2"]  # eval.py scores balanced questions only
    result = es.score({"q1": "Left.", "q2": "Yes, it is"}, {})
    assert result["accuracy"] == 50.0
    assert result["per_question_kind"] == {"binary": 0.0, "open": 100.0}
    assert result["per_semantic"] == {"attr": 0.0, "rel": 100.0}
    assert es.protocol == {
        "task": "gqa", "split": "testdev_balanced",
        "prompt": {"id": "llava15_short_answer", "source": es.protocol["prompt"]["source"]},
        "scorer": es.protocol["scorer"],
    }  # fmt: skip
    assert es.protocol["scorer"]["name"] == "gqa" and "eval.py" in es.protocol["scorer"]["reference"]


def _score(args):
    result = CliRunner().invoke(main, ["eval", "score", *args])
    return result


def test_score_cli_vqa_gqa_and_mmbench(tmp_path):
    spec = write_vqa(str(tmp_path))
    (tmp_path / "pred.jsonl").write_text('{"question_id": 11, "answer": "red"}\n{"question_id": 12, "answer": "two"}\n')
    out = _score(["--benchmark", "vqav2_val", "--predictions", str(tmp_path / "pred.jsonl"), "--annotations", spec.annotations])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["accuracy"] == 100.0 and result["per_answer_type"]["number"] == 100.0

    gqa = {"q1": {"imageId": "n1", "question": "Which side?", "answer": "left", "types": {"structural": "choose", "semantic": "rel"}},
           "q2": {"imageId": "n2", "question": "Is it red?", "answer": "yes", "types": {"structural": "verify", "semantic": "attr"}}}  # fmt: skip
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    # GQA's own predictions format, as LLaVA's convert_gqa_for_eval.py writes it
    (tmp_path / "gqa_pred.json").write_text(json.dumps([{"questionId": "q1", "prediction": "Left."}, {"questionId": "q2", "prediction": "no"}]))
    out = _score(["--benchmark", "gqa_testdev", "--predictions", str(tmp_path / "gqa_pred.json"), "--annotations", str(tmp_path / "gqa.json")])
    assert json.loads(out.output)["accuracy"] == 50.0
    assert json.loads(out.output)["per_structural"] == {"choose": 100.0, "verify": 0.0}

    tsv = write_mmbench(tmp_path / "mmb.tsv", MMB_ROWS[:1])
    preds = [{"index": 0, "prediction": "B"}, {"index": 1000000, "prediction": "(A)"}, {"index": 2000000, "prediction": "C."}]
    (tmp_path / "mmb_pred.json").write_text(json.dumps(preds))
    out = _score(["--benchmark", "mmbench_dev_en", "--predictions", str(tmp_path / "mmb_pred.json"), "--annotations", tsv])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["circular_accuracy"] == 100.0


def test_score_cli_errors_are_clear(tmp_path):
    (tmp_path / "bad.json").write_text('{"annotations": [{"question_id": 1}]}')
    (tmp_path / "pred.json").write_text("[]")
    out = _score(["--benchmark", "vqav2_val", "--predictions", str(tmp_path / "pred.json"), "--annotations", str(tmp_path / "bad.json")])
    assert out.exit_code == 1
    assert "bad.json: annotations[0]: missing field 'answer_type'" in out.output
    out = _score(["--benchmark", "vqa_val", "--predictions", "x", "--annotations", "y"])
    assert out.exit_code == 1 and "unknown benchmark 'vqa_val'" in out.output and "vqav2_val" in out.output


def test_synth_eval_prompts_are_phrased_as_the_synth_training_prompts(tmp_path):
    """The synthetic benchmarks ask with LLaVA-1.5's prompts; the synthetic training data must
    phrase its questions the same way, or the held-out accuracy measures a prompt shift."""
    import re

    from vlm_core.data.synth import generate

    generate(str(tmp_path), train=20, eval_images=6)
    trained = set()
    for line in (tmp_path / "instruct.jsonl").read_text().splitlines():
        human = json.loads(line)["conversations"][0]["value"]
        assert human.startswith("<image>\n")  # generation puts the image first too
        trained.add(re.sub(r"(?m)^[A-D]\. .*$", "<option>", human.removeprefix("<image>\n")))
    for name in ("synth_vqa", "synth_mmbench"):
        bench = BENCHMARKS.get(name)
        for request in bench.load(bench.default_spec(str(tmp_path))).requests:
            assert re.sub(r"(?m)^[A-D]\. .*$", "<option>", request.prompt) in trained, request.prompt
