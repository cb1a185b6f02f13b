"""The real trainer on staged shards: each checkpoint records the stream position, and a run
resumed from a checkpoint seeks there (it logs so) and ends with the very weights of a run that
was never interrupted (same batches after the checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def _train(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "vlm_core.cli", "train", "--config", str(config), "--stage", "align", "--resume", "auto"],
                          check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_resumed_stream_seeks_and_matches_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from operators.staging import stage_config
    from tests.published_datasets import image
    from vlm_core.config import parse_config

    (tmp_path / "raw").mkdir()
    lines = []
    for i in range(48):
        colour = ("red", "green", "blue")[i % 3]
        (tmp_path / "raw" / f"{i}.png").write_bytes(image(((i % 3 == 0) * 255, (i % 3 == 1) * 255, (i % 3 == 2) * 255), (32, 32), "PNG"))
        conv = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": f"a {colour} square number {i}"}]
        lines.append(json.dumps({"id": str(i), "image": f"{i}.png", "conversations": conv}))
    (tmp_path / "raw" / "align.jsonl").write_text("\n".join(lines) + "\n")
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["data"]["datasets"] = {"synth_align": {"url": str(tmp_path / "raw" / "align.jsonl")}}
    cfg["model"]["tokenizer"]["train_corpus"] = ["synth_align"]
    cfg["stages"] = {"align": {**cfg["stages"]["align"], "max_steps": 4, "save_steps": 2, "logging_steps": 1, "warmup_steps": 1,
                               "per_device_batch_size": 4}}
    cfg["distributed"] = {"deepspeed": "none", "nodes": 1, "procs_per_node": 1}
    cfg["eval"] = {}
    cfg["output"] = str(tmp_path / "a")
    staged, _ = stage_config(parse_config(cfg), progress=False)
    assert staged.data.datasets["synth_align"].format == "shards"
    data = staged.model_dump(mode="json")
    data["data"]["datasets"]["synth_align"]["url"] = str(tmp_path / "a" / "data" / "synth_align")

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    uninterrupted = _train(tmp_path / "a.yaml", tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    checkpoint = tmp_path / "a" / "align" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "data_state" / "rank-0.json").exists()

    data["output"] = str(tmp_path / "b")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(checkpoint, tmp_path / "b" / "align" / "checkpoints" / "checkpoint-2")
    resumed = _train(tmp_path / "b.yaml", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stream seeks to epoch 0, batch 2" in resumed.stderr
    a, b = load_file(tmp_path / "a" / "align" / "model.safetensors"), load_file(tmp_path / "b" / "align" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
