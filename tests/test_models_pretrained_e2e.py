"""Real checkpoints through the whole framework: an imported checkpoint is evaluated and fine-tuned,
and a model built from ``save_pretrained`` folders under ZeRO-3 starts from the same loss as ZeRO-2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

from tests import published_checkpoints as pl
from tests.test_models_import import write_llava_hf
from vlm_core.cli import main

pytestmark = pytest.mark.e2e


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _run_config(root: Path, model: dict, stage: dict, deepspeed: str) -> Path:
    cfg = {
        "name": "pretrained",
        "output": str(root / "out"),
        "model": model,
        "data": {"datasets": {"synth": {"url": str(root / "synth" / "instruct.jsonl"), "image_root": str(root / "synth")}},
                 "template": "vicuna_v1", "image_aspect": "pad", "max_length": 512},
        "stages": {"instruct": {"datasets": ["synth"], "trainable": ["projector", "llm"], "max_steps": 1,
                                "per_device_batch_size": 2, "logging_steps": 1, "save_steps": 100, "learning_rate": 1e-4,
                                "group_by_modality_length": False, **stage}},
        "distributed": {"deepspeed": deepspeed, "procs_per_node": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, nproc: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
               "-m", "vlm_core.cli", "train", "--config", str(config), "--stage", "instruct"]
    return subprocess.run(command, check=False, env=_env(), cwd=config.parent, capture_output=True, text=True, timeout=900)


def _first_loss(root: Path) -> float:
    state = json.loads((root / "out" / "instruct" / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())
    return next(entry["loss"] for entry in state["log_history"] if "loss" in entry)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from vlm_core.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(str(root), train=8, eval_images=4)
    return root


def _with_synth(root: Path, synth: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "synth").symlink_to(synth)
    return root


def test_an_imported_checkpoint_evaluates_and_fine_tunes(tmp_path, synth):
    root = _with_synth(tmp_path, synth)
    src = write_llava_hf(root / "llava-hf")
    runner = CliRunner()
    assert runner.invoke(main, ["import", "llava-hf", str(src), str(root / "imported")]).exit_code == 0
    result = runner.invoke(main, ["eval", "run", "--checkpoint", str(root / "imported"), "--benchmarks", "synth_vqa",
                                  "--synth-root", str(root / "synth"), "--limit", "2", "--max-new-tokens", "2",
                                  "--output", str(root / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((root / "eval" / "results.json").read_text())["synth_vqa"]["num_questions"] == 2

    config = _run_config(root, {}, {"init_from": str(root / "imported")}, deepspeed="none")
    trained = _train(config, nproc=1)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    from vlm_core.models import load_checkpoint

    model, processor = load_checkpoint(str(root / "out" / "instruct"))
    assert processor.template == "vicuna_v1" and model.config.projector_type == "mlp2x_gelu"


def test_zero3_from_pretrained_folders_starts_from_zero2_s_loss(tmp_path, synth):
    """ZeRO-3 partitions the pretrained parts as they load; the first loss is the one ZeRO-2 computes."""
    torch.manual_seed(0)
    parts = tmp_path / "parts"
    CLIPVisionModel(CLIPVisionConfig(**pl.TOWER)).save_pretrained(parts / "clip")
    tokenizer = pl.vicuna_like_tokenizer()
    LlamaForCausalLM(pl.llama_config(len(tokenizer))).save_pretrained(parts / "llama")
    tokenizer.save_pretrained(parts / "llama")
    model = {"vision": {"encoder": "clip", "name_or_path": str(parts / "clip")},
             "llm": {"name_or_path": str(parts / "llama")}}
    losses = {}
    for preset in ("zero2", "zero3"):
        root = _with_synth(tmp_path / preset, synth)
        result = _train(_run_config(root, model, {"save_steps": 1}, deepspeed=preset), nproc=2)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        losses[preset] = _first_loss(root)
    assert all(math.isfinite(loss) and loss > 1 for loss in losses.values()), losses  # a real, untrained loss
    assert losses["zero3"] == pytest.approx(losses["zero2"], rel=1e-4, abs=1e-5), losses
