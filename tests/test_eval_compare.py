"""`vlm eval compare`: a run's results.json next to published scores, protocol differences named."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vlm_core.cli import main
from vlm_core.config import BenchmarkSpec
from vlm_core.eval.benchmarks import BENCHMARKS
from vlm_core.eval.compare import compare, load_published
from vlm_core.eval.metrics import SCORERS
from vlm_core.eval.prompts import PROMPTS


def _result(name: str, accuracy: float, prompt: str | None = None, limit: int | None = None) -> dict:
    """A results.json entry as `vlm eval run` writes it (protocol from the benchmark itself)."""
    bench = BENCHMARKS.get(name)
    protocol = bench.protocol(bench.prompt(BenchmarkSpec(prompt=prompt)))
    protocol.update(limit=limit, decoding={"strategy": "greedy", "do_sample": False, "num_beams": 1}, files={})
    return {"benchmark": name, "accuracy": accuracy, "num_questions": 10, "protocol": protocol}


RESULTS = {
    "vqav2_val": _result("vqav2_val", 76.6),
    "gqa_testdev": _result("gqa_testdev", 62.0),
    "textvqa_val": _result("textvqa_val", 46.1, prompt="llava15_short_answer"),
    "mmbench_dev_en": _result("mmbench_dev_en", 64.0, limit=100),
    "synth_vqa": _result("synth_vqa", 99.0),
}


def test_published_data_names_registered_prompts_scorers_and_tasks():
    tasks = {BENCHMARKS.get(name).task for name in BENCHMARKS}
    models = load_published()
    assert {"llava-1.5-7b", "llava-1.5-13b", "codefuse-vlm-14b"} <= set(models)
    for model in models.values():
        assert model.source
        for task, score in model.scores.items():
            assert task in tasks
            assert score.prompt is None or score.prompt in PROMPTS
            assert score.scorer is None or score.scorer in SCORERS


def test_rows_flag_every_protocol_difference():
    rows, unmatched = compare(RESULTS, load_published()["llava-1.5-7b"])
    by_task = {r.task: r for r in rows}
    assert set(by_task) == {"vqav2", "gqa", "vizwiz", "textvqa", "mmbench", "mmbench_cn"}
    vqa = by_task["vqav2"]
    assert (vqa.benchmark, vqa.ours, vqa.published.score, vqa.delta) == ("vqav2_val", 76.6, 78.5, -1.9)
    assert vqa.differences == ["split: val here, test-dev published", "published scored by EvalAI VQA server; here locally"]
    assert by_task["gqa"].differences == [] and by_task["gqa"].delta == 0.0  # LLaVA's own protocol
    assert by_task["textvqa"].differences == ["prompt: llava15_short_answer here, llava15_textvqa_ocr published"]
    assert by_task["mmbench"].differences[-1] == "only the first 100 questions here"
    assert by_task["mmbench"].differences[0].startswith("published scored by MMBench evaluation server")
    assert by_task["vizwiz"].benchmark is None and by_task["mmbench_cn"].ours is None
    assert unmatched == ["synth_vqa"]


def test_unstated_protocols_and_missing_protocols_are_flagged():
    rows, _ = compare({"gqa_testdev": RESULTS["gqa_testdev"]}, load_published()["codefuse-vlm-14b"])
    assert next(r for r in rows if r.task == "gqa").differences == ["published protocol not stated"]
    old = {"gqa_testdev": {"accuracy": 61.0, "num_questions": 10}}  # a results.json from before protocols
    rows, _ = compare(old, load_published()["llava-1.5-7b"])
    gqa = next(r for r in rows if r.task == "gqa")
    assert gqa.ours == 61.0 and "records no protocol" in gqa.differences[0]


def test_submission_only_splits_say_so():
    protocol = _result("vqav2_testdev", 0)["protocol"]
    assert (protocol["split"], protocol["scorer"]["name"]) == ("test-dev", "vqav2") and "scored_by" in protocol
    testdev = {"benchmark": "vqav2_testdev", "submission": "s3://b/submissions/vqav2_testdev.json", "num_questions": 3,
               "failed": [], "protocol": protocol}  # fmt: skip
    rows, _ = compare({"vqav2_testdev": testdev}, load_published()["llava-1.5-7b"])
    vqa = next(r for r in rows if r.task == "vqav2")
    assert vqa.ours is None and vqa.differences == ["submission only (s3://b/submissions/vqav2_testdev.json): scored by the evaluation server"]


def test_cli_prints_the_table(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    out = CliRunner().invoke(main, ["eval", "compare", str(path), "--against", "llava-1.5-7b"])
    assert out.exit_code == 0, out.output
    assert "Published: LLaVA-1.5-7B" in out.output and "MODEL_ZOO.md" in out.output
    assert "| vqav2 | 76.60 | 78.50 | -1.90 | vqav2_val | split: val here, test-dev published;" in out.output
    assert "| vizwiz |  | 50.00 |  |  | not run |" in out.output
    assert "Not in the published table: synth_vqa." in out.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--against", "llava-2"], 2, "'llava-2' is not one of 'codefuse-vlm-14b', 'llava-1.5-13b', 'llava-1.5-7b'"),
        (["--against", "llava-1.5-7b"], 1, "nope.json: no such file"),
    ],
)
def test_cli_errors_are_clear(tmp_path, args, code, message):
    out = CliRunner().invoke(main, ["eval", "compare", str(tmp_path / "nope.json"), *args])
    assert out.exit_code == code and message in out.output
