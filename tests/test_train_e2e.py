"""Multi-process training on tiny models: torchrun + DeepSpeed (ZeRO-2 and ZeRO-3) on CPU with gloo,
kill-and-resume, LoRA with the projector trained, export with merged adapters.

The accuracy run of the full quickstart lives in tests/test_pipeline_e2e.py (the same
torchrun + ZeRO-2 stages, launched as PyTorchJobs by the local pipeline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# Long enough that the kill below lands mid-stage on a fast machine: 16 steps once ended within
# the 0.2 s between two polls (40 steps a second on a 2-core VM).
ALIGN_STEPS = 64


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def _torchrun(config: Path, stage: str, *extra: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
            "-m", "vlm_core.cli", "train", "--config", str(config), "--stage", stage, *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    subprocess.run([sys.executable, "-m", "vlm_core.cli", "synth", str(root / "synth"), "--train", "120", "--eval", "4"],
                   check=True, env=_env(), capture_output=True)
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["output"] = str(root / "out")
    for ds in cfg["data"]["datasets"].values():
        ds["url"] = str(root / "synth" / Path(ds["url"]).name)
        ds["image_root"] = str(root / "synth")
    cfg["stages"]["align"].update(max_steps=ALIGN_STEPS, save_steps=4, logging_steps=2, warmup_steps=2, per_device_batch_size=4)
    cfg["stages"]["instruct"].update(max_steps=4, save_steps=2, logging_steps=1, warmup_steps=1, per_device_batch_size=4)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _trainer_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def _saved_steps(checkpoints: Path) -> list[int]:
    """Steps of the complete checkpoints (their trainer state written) under ``checkpoints``."""
    return [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]


def test_align_killed_mid_stage_resumes_from_newest_checkpoint(run_dir: Path):
    config = run_dir / "config.yaml"
    checkpoints = run_dir / "out" / "align" / "checkpoints"
    proc = subprocess.Popen(_torchrun(config, "align", "--resume", "auto"), env=_env(), cwd=run_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        # any checkpoint from the second on: save_total_limit (2) removes checkpoint-8 after
        # checkpoint-16, sooner than one poll on a fast machine
        while max(_saved_steps(checkpoints), default=0) < 8:
            assert proc.poll() is None, "training ended before the second checkpoint"
            assert time.time() < deadline, "no second checkpoint within the deadline"
            time.sleep(0.2)
    finally:
        # every rank dies, as when a pod is evicted (torchrun puts its workers in sessions of their own)
        if proc.poll() is None:
            launcher = psutil.Process(proc.pid)
            for process in [*launcher.children(recursive=True), launcher]:
                process.kill()
        proc.wait()
    assert not (run_dir / "out" / "align" / "model.safetensors").exists()
    newest = max(_saved_steps(checkpoints))
    assert 8 <= newest < ALIGN_STEPS

    resumed = subprocess.run(_torchrun(config, "align", "--resume", "auto"), check=False, env=_env(), cwd=run_dir,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {checkpoints}/checkpoint-{newest}" in resumed.stderr
    final = _trainer_state(checkpoints / f"checkpoint-{ALIGN_STEPS}")
    assert final["global_step"] == ALIGN_STEPS
    # the resumed run logged only steps after the checkpoint it started from
    steps = [entry["step"] for entry in final["log_history"] if "loss" in entry]
    assert steps == sorted(set(steps)) and steps[-1] == ALIGN_STEPS
    first, last = final["log_history"][0]["loss"], [e["loss"] for e in final["log_history"] if "loss" in e][-1]
    assert last < first, "alignment loss did not drop"
    assert (run_dir / "out" / "align" / "model.safetensors").exists()


def test_instruct_under_zero3_saves_a_loadable_checkpoint(run_dir: Path):
    from transformers import AutoModelForImageTextToText

    import vlm_core.models  # noqa: F401  (registers the Auto classes)
    from vlm_core.config import load_config

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["distributed"]["deepspeed"] = "zero3"
    config = run_dir / "zero3.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert (run_dir / "out" / "align" / "config.json").exists(), "runs after the align test"
    result = subprocess.run(_torchrun(config, "instruct"), check=False, env=_env(), cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = Path(load_config(config).stage_output("instruct"))
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=False)
    align = AutoModelForImageTextToText.from_pretrained(run_dir / "out" / "align")
    tuned = dict(model.named_parameters())
    # ZeRO-3 gathered real weights (not empty partitions), and the LLM moved away from align's
    for name, param in align.named_parameters():
        assert tuned[name].shape == param.shape and tuned[name].numel() > 0
    llm_name = next(n for n, _ in align.named_parameters() if n.startswith("language_model") and "embed" in n)
    assert not torch.equal(tuned[llm_name], dict(align.named_parameters())[llm_name])


def test_lora_trains_projector_and_export_merges(run_dir: Path):
    from vlm_core.models.checkpoint import load_checkpoint
    from vlm_core.train.export import export_checkpoint, load_merged

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["output"] = str(run_dir / "lora-out")
    cfg["distributed"]["deepspeed"] = "none"
    cfg["stages"]["instruct"].update(init_from=str(run_dir / "out" / "align"), trainable=["projector", "llm"],
                                     lora={"r": 4, "alpha": 8, "dropout": 0.0}, learning_rate=5e-3)
    config = run_dir / "lora.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "vlm_core.cli", "train", "--config", str(config), "--stage", "instruct"],
                            check=False, env=_env(), cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    adapter = run_dir / "lora-out" / "instruct"
    assert (adapter / "adapter_config.json").exists()

    base, _ = load_checkpoint(str(run_dir / "out" / "align"))
    merged, processor = load_merged(str(adapter))
    base_params, merged_params = dict(base.named_parameters()), dict(merged.named_parameters())
    assert set(base_params) == set(merged_params), "merging left peft wrappers behind"
    def changed(prefix: str) -> bool:
        return any(not torch.equal(base_params[n], merged_params[n]) for n in base_params if n.startswith(prefix))
    assert changed("projector"), "the projector did not learn under LoRA"
    assert changed("language_model"), "the LoRA update was not merged into the LLM"
    assert not changed("vision_tower")

    exported = export_checkpoint(str(adapter), str(run_dir / "exported"))
    reloaded, _ = load_checkpoint(exported)
    ids = torch.tensor([[processor.tokenizer.bos_token_id or 1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_two_processes_without_deepspeed_train_one_data_parallel_run(run_dir: Path):
    """Without DeepSpeed, two torchrun workers on CPU are one DDP run (each sees half of an epoch),
    not two independent runs that each train the whole epoch."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["output"] = str(run_dir / "ddp-out")
    cfg["distributed"]["deepspeed"] = "none"
    align = cfg["stages"]["align"]
    align.pop("max_steps")
    align.update(epochs=1, save_steps=1000, per_device_batch_size=8, group_by_modality_length=False)
    cfg["stages"] = {"align": align}
    config = run_dir / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(_torchrun(config, "align"), check=False, env=_env(), cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    samples = len((run_dir / "synth" / "align.jsonl").read_text().splitlines())
    state = _trainer_state(run_dir / "ddp-out" / "align" / "checkpoints" / f"checkpoint-{-(-samples // 16)}")
    assert state["global_step"] == -(-samples // 16), (samples, state["global_step"])
