"""`vlm run` on the local backend, the acceptance of issue 14 on a short quickstart: the chain
runs and prints the table; killed (SIGKILL) during instruct and started again, it finishes
without redoing staging or align, and instruct resumes from its newest checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = [
    "stages.align.max_steps=4", "stages.instruct.max_steps=60", "stages.instruct.save_steps=5",
    "stages.instruct.warmup_steps=2", "stages.instruct.logging_steps=5", "distributed.deepspeed=none",
    "distributed.procs_per_node=1", "eval.limit=8",
]  # fmt: skip


def _vlm_run(cwd: Path) -> subprocess.Popen:
    sets = [arg for pair in SHORT for arg in ("--set", pair)]
    return subprocess.Popen(
        [sys.executable, "-m", "vlm_core.cli", "run", "--config", "quickstart.yaml", "--backend", "local", *sets],
        cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_quickstart_killed_during_instruct_finishes_without_redoing_staging_or_align(tmp_path):
    from vlm_core.completion import MARKER

    shutil.copy(ROOT / "configs" / "quickstart.yaml", tmp_path / "quickstart.yaml")  # relative paths: ./data, ./runs
    run = tmp_path / "runs" / "quickstart"
    first = _vlm_run(tmp_path)
    checkpoint = run / "instruct" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not checkpoint.exists():
        assert first.poll() is None, first.communicate()[1][-5000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the driver only: its replicas live on in their own sessions
    first.communicate()
    done_before = {step: (run / step / MARKER).stat().st_mtime_ns for step in ("data", "align")}
    assert not (run / "instruct" / MARKER).exists()

    second = _vlm_run(tmp_path)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-5000:]
    assert "| synth_vqa |" in out and "| synth_mmbench |" in out  # the results table
    assert "quickstart/staging: interrupted -> skipped" not in err  # staging had finished: succeeded
    assert "quickstart/staging: succeeded -> skipped" in err and "quickstart/align: succeeded -> skipped" in err
    assert "quickstart/instruct: running -> running" in err  # the killed run left it running
    assert "left by an earlier run" in err  # the orphaned replicas were stopped first
    resumed = [line for line in err.splitlines() if "resuming from" in line]
    assert resumed and "checkpoint-" in resumed[-1], err[-5000:]
    assert int(resumed[-1].rsplit("checkpoint-", 1)[1].split()[0]) >= 10
    assert {step: (run / step / MARKER).stat().st_mtime_ns for step in ("data", "align")} == done_before
    assert json.loads((run / "instruct" / MARKER).read_text())["global_step"] == 60
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and [s["state"] for s in status["steps"]] == ["skipped", "skipped", "succeeded", "succeeded"]
