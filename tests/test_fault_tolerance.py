"""Kill -9 a training process of a 2-node torchrun PyTorchJob run by the local backend: the job
restarts its replicas, resumes from the newest checkpoint and ends at the planned step with the
same result as an uninterrupted run.

The training script is a self-contained gloo all_reduce loop (no model), so the restart and
resume semantics are tested independently of the real trainer.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from operators.local_backend import LocalBackend
from operators.pytorchjob import build_config_map, build_pytorchjob, render_job
from vlm_core.config import parse_config


def run_objects(objects, *, workdir, **options):
    return LocalBackend(workdir, **options).run(objects)

STEPS = 8

# Each step all-reduces a value that depends only on (step, rank): like a seeded sampler, so a
# resumed run consumes exactly what an uninterrupted one would. Rank 0 checkpoints every step
# (atomically) after the collective; a restart resumes from the newest checkpoint.
TRAIN = r"""
import json, os, sys, time
import torch, torch.distributed as dist

ckpt_dir, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
os.makedirs(os.path.join(ckpt_dir, "pids"), exist_ok=True)
with open(os.path.join(ckpt_dir, "pids", f"rank-{rank}"), "w") as f:
    f.write(str(os.getpid()))
done = sorted(int(n.split("-")[1]) for n in os.listdir(ckpt_dir) if n.startswith("step-"))
state = {"step": 0, "total": 0.0}
if done:
    with open(os.path.join(ckpt_dir, f"step-{done[-1]}")) as f:
        state = json.load(f)
if rank == 0:
    with open(os.path.join(ckpt_dir, "resumed-from"), "a") as f:
        f.write(f"{state['step']}\n")
for step in range(state["step"] + 1, steps + 1):
    x = torch.tensor([float(step * 10 + rank)])
    dist.all_reduce(x)
    state = {"step": step, "total": state["total"] + x.item()}
    if rank == 0:
        tmp = os.path.join(ckpt_dir, f".tmp-{step}")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(ckpt_dir, f"step-{step}"))
        print("step", step, flush=True)
    time.sleep(pause)
dist.barrier()
if rank == 0:
    with open(os.path.join(ckpt_dir, "final.json"), "w") as f:
        json.dump(state, f)
dist.destroy_process_group()
"""


def expected_total(steps: int, world: int) -> float:
    return float(sum(step * 10 + rank for step in range(1, steps + 1) for rank in range(world)))


def make_job(tmp_path: Path, restart_policy: str = "OnFailure"):
    cfg = parse_config(
        {
            "name": "ft",
            "data": {"datasets": {"d": {"url": "d.jsonl"}}},
            "stages": {"align": {"datasets": ["d"], "trainable": ["projector"], "max_steps": STEPS}},
            "distributed": {"nodes": 2, "procs_per_node": 1},
            "cluster": {"storage": {"pvc": "ckpt", "pvc_mount": "/mnt/ckpt"}, "restart_policy": restart_policy,
                        "backoff_limit": 2},
        }
    )
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    job = build_pytorchjob(cfg, "align")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        container = spec["template"]["spec"]["containers"][0]
        # the same torchrun launch as the real job, with the toy script in place of vlm_core.cli
        container["args"] = [str(script), "/mnt/ckpt/run", str(STEPS), "0.4"]
    return [build_config_map(cfg, "align"), job], tmp_path / "work" / "ft-align" / "volumes" / "pvc" / "ckpt" / "run"


ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_kill_9_of_a_worker_process_restarts_and_resumes_to_the_planned_step(tmp_path):
    objects, ckpt = make_job(tmp_path)
    lines: list[str] = []
    killed: dict[str, int] = {}

    def killer() -> None:
        # Wait until training is under way (a few checkpoints), then SIGKILL the Worker's training process.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (ckpt / "step-3").exists():
            time.sleep(0.05)
        pid = int((ckpt / "pids" / "rank-1").read_text())
        killed["after"] = max(int(n.name.split("-")[1]) for n in ckpt.glob("step-*"))
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_objects(objects, workdir=tmp_path / "work", env=ENV, timeout=280, log=lines.append)
    thread.join(timeout=5)
    log = "\n".join(lines)
    assert killed, log
    assert result.succeeded, log
    assert result.restarts == 1, log
    final = json.loads((ckpt / "final.json").read_text())
    assert final["step"] == STEPS
    assert final["total"] == expected_total(STEPS, world=2)  # identical to an uninterrupted run
    resumed = [int(s) for s in (ckpt / "resumed-from").read_text().split()]
    assert resumed[0] == 0 and resumed[1] >= killed["after"]  # resumed from the newest checkpoint
    assert int((ckpt / "pids" / "rank-1").read_text()) != killed["pid"]  # a new worker process
    assert "[worker-0]" in log and "restarting all replicas" in log


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_real_training_killed_in_a_worker_resumes_from_its_newest_checkpoint(tmp_path):
    """The quickstart's align stage (DeepSpeed ZeRO-2, Master + 1 Worker): kill -9 of the Worker's
    training process after a checkpoint; the job restarts and the Trainer resumes from the newest
    checkpoint's global step (`--resume auto` in the PyTorchJob's command) to the planned step."""
    import subprocess
    import sys

    import psutil
    import yaml

    root = Path(__file__).resolve().parents[1]
    data_dir = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "vlm_core.cli", "synth", str(data_dir), "--train", "200", "--eval", "4"],
                   check=True, capture_output=True)  # fmt: skip
    data = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    for spec in data["data"]["datasets"].values():
        spec["url"] = str(data_dir / Path(spec["url"]).name)
        spec["image_root"] = str(data_dir)
    data["stages"]["align"].update(max_steps=12, save_steps=3, logging_steps=3, warmup_steps=2, per_device_batch_size=4)
    data["distributed"] = {**data["distributed"], "nodes": 2, "procs_per_node": 1, "deepspeed": "zero2"}
    data["cluster"]["backoff_limit"] = 2
    data["output"] = str(tmp_path / "run")
    cfg = parse_config(data)
    checkpoints = tmp_path / "run" / "align" / "checkpoints"
    killed: dict[str, int] = {}

    def worker_trainer() -> psutil.Process | None:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "vlm_core.cli train" in cmd and "torch.distributed.run" not in cmd and "torchrun" not in cmd:
                try:
                    if proc.environ().get("PET_NODE_RANK") == "1":
                        return proc
                except psutil.Error:
                    continue
        return None

    def killer() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (checkpoints / "checkpoint-6" / "trainer_state.json").exists():
            time.sleep(0.1)
        victim = worker_trainer()
        if victim is not None:
            killed["pid"] = victim.pid
            victim.send_signal(signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    lines: list[str] = []
    result = run_objects(render_job(cfg, "align"), workdir=tmp_path / "job",
                         env=ENV, timeout=840, log=lines.append)
    thread.join(timeout=5)
    log = "\n".join(lines)
    assert killed, log[-5000:]
    assert result.succeeded and result.restarts == 1, log[-5000:]
    resumed = [line for line in lines if "resuming from" in line and "checkpoint-" in line]
    assert resumed, log[-5000:]
    resumed_step = int(resumed[-1].rsplit("checkpoint-", 1)[1].split()[0])
    assert resumed_step >= 6
    final = json.loads((checkpoints / "checkpoint-12" / "trainer_state.json").read_text())
    assert final["global_step"] == 12
    assert (tmp_path / "run" / "align" / "model.safetensors").exists()


def _tiny_stage_config(tmp_path: Path, deepspeed: str) -> Path:
    """The quickstart's tiny model on a small synthetic set: align, 4 steps, a checkpoint every 2."""
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    data_dir = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "vlm_core.cli", "synth", str(data_dir), "--train", "40", "--eval", "2"],
                   check=True, capture_output=True)  # fmt: skip
    data = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    for spec in data["data"]["datasets"].values():
        spec["url"] = str(data_dir / Path(spec["url"]).name)
        spec["image_root"] = str(data_dir)
    data["stages"] = {"align": {**data["stages"]["align"], "max_steps": 4, "save_steps": 2, "logging_steps": 1,
                                "warmup_steps": 1, "per_device_batch_size": 4}}  # fmt: skip
    data["distributed"] = {"deepspeed": deepspeed, "nodes": 1, "procs_per_node": 1}
    data["eval"] = {}
    data["output"] = str(tmp_path / "run")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(parse_config(data).model_dump(mode="json")))
    return path


def _train(config: Path) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vlm_core.cli", "train", "--config", str(config), "--stage", "align",
                           "--resume", "auto"], check=False, env={**os.environ, **ENV}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_stage_resumed_at_its_last_step_trains_nothing_and_completes(tmp_path):
    """A replica killed while the final model is being saved: the restarted trainer resumes from
    checkpoint-4 of a 4-step stage. It must not train a step 5: the final model is checkpoint-4's
    weights, and the completion marker says step 4. Started once more, it does nothing at all."""
    from safetensors.torch import load_file

    from vlm_core.completion import MARKER

    config = _tiny_stage_config(tmp_path, "none")
    stage = tmp_path / "run" / "align"
    _train(config)
    assert json.loads((stage / MARKER).read_text())["global_step"] == 4
    # the kill: the final save never finished, so neither the model nor the marker is there
    (stage / "model.safetensors").unlink()
    (stage / MARKER).unlink()

    log = _train(config)
    assert "resuming from" in log and "checkpoint-4" in log, log[-3000:]
    checkpoints = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]  # no step 5, no checkpoint-5
    final, saved = load_file(stage / "model.safetensors"), load_file(stage / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert final.keys() == saved.keys() and all((final[k] == saved[k]).all() for k in final)
    marker = json.loads((stage / MARKER).read_text())
    assert marker["global_step"] == 4 and marker["step"] == "align"

    before = (stage / "model.safetensors").stat().st_mtime_ns
    log = _train(config)
    assert "stage align is complete" in log and "nothing to train" in log
    assert (stage / "model.safetensors").stat().st_mtime_ns == before
