"""`vlm eval run` / `vlm chat` on a saved tiny checkpoint; 2 processes (gloo) == 1 process."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from tests.test_eval_generate import tiny_model
from vlm_core import storage
from vlm_core.cli import main
from vlm_core.ports import free_port


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vlm_core.data.synth import generate
    from vlm_core.models.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalrun")
    generate(str(root / "synth"), train=4, eval_images=6)
    model, processor = tiny_model()
    save_checkpoint(model, processor, str(root / "ckpt"))
    return root


def _run_args(root, output):
    return [
        "eval", "run", "--checkpoint", str(root / "ckpt"), "--benchmarks", "synth_vqa,synth_mmbench",
        "--synth-root", str(root / "synth"), "--limit", "4", "--batch-size", "3", "--max-new-tokens", "4",
        "--output", output,
    ]  # fmt: skip


def test_eval_run_cli_to_s3(setup, s3_bucket):
    result = CliRunner().invoke(main, _run_args(setup, f"{s3_bucket}/eval"))
    assert result.exit_code == 0, result.output
    assert "| synth_vqa |" in result.output
    results = json.loads(storage.read_text(f"{s3_bucket}/eval/results.json"))
    assert results["synth_vqa"]["num_questions"] == 4
    assert len(storage.read_text(f"{s3_bucket}/eval/answers/synth_mmbench.jsonl").splitlines()) > 4
    fs, path = storage.filesystem(f"{s3_bucket}/eval/tensorboard/eval")
    assert any("tfevents" in p for p in fs.ls(path))


def test_eval_run_unknown_benchmark_fails_before_loading(setup, tmp_path):
    args = _run_args(setup, str(tmp_path))
    args[args.index("--benchmarks") + 1] = "synth_vqa,mmbench"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "unknown benchmark 'mmbench'" in result.output


def test_chat_one_shot_streams_the_eval_answer(setup):
    from vlm_core.eval.benchmarks import BENCHMARKS

    bench = BENCHMARKS.get("synth_vqa")
    request = bench.load(bench.default_spec(str(setup / "synth"))).requests[0]
    args = ["chat", "--checkpoint", str(setup / "ckpt"), "--image", request.image, "--max-new-tokens", "4", request.prompt]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    from vlm_core.eval.generate import generate_answers
    from vlm_core.models.checkpoint import load_checkpoint

    model, processor = load_checkpoint(str(setup / "ckpt"))
    [expected] = generate_answers(model.eval(), processor, [request], batch_size=1, max_new_tokens=4)
    assert result.stdout.strip() == expected["answer"]


def _worker(rank: int, world: int, port: int, args: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    CliRunner().invoke(main, args, catch_exceptions=False, standalone_mode=False)


@pytest.mark.e2e
def test_two_processes_give_identical_results(setup):
    import torch.multiprocessing as mp

    single = str(setup / "single")
    assert CliRunner().invoke(main, _run_args(setup, single)).exit_code == 0
    double = str(setup / "double")
    mp.spawn(_worker, args=(2, free_port(), _run_args(setup, double)), nprocs=2, join=True)
    for name in ("results.json", "answers/synth_vqa.jsonl", "answers/synth_mmbench.jsonl"):
        assert (setup / "double" / name).read_text() == (setup / "single" / name).read_text(), name
    assert not list((setup / "double" / "answers").glob("*.rank*.jsonl"))


def test_eval_flags_go_through_the_run_config_s_override_path(tmp_path):
    """`vlm eval run --config` flags are run-config overrides: validated, the error names the key."""
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), "eval": {"benchmarks": ["synth_vqa"]}}))
    result = CliRunner().invoke(main, ["eval", "run", "--config", str(config), "--batch-size", "0"])
    assert result.exit_code == 1 and "eval.batch_size" in result.output, result.output
    assert "Traceback" not in result.output
