"""The local PyTorchJob backend: operator env, volume/path mapping, logs, restart semantics,
the caller's working directory, taking over a killed run's replicas.

These run small Python commands as replicas (fast); the torchrun and training runs live in
tests/test_fault_tolerance.py and the e2e test at the end of this file.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from operators.local_backend import LocalBackend, LocalJobError
from operators.pytorchjob import build_config_map, build_pytorchjob, render_job
from vlm_core.config import parse_config


def run_objects(objects, *, workdir, **options):
    return LocalBackend(workdir, **options).run(objects)


def make_cfg(nodes=2, **cluster):
    return parse_config(
        {
            "name": "demo",
            "data": {"datasets": {"caps": {"url": "caps.jsonl"}}},
            "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 5}},
            "distributed": {"nodes": nodes, "procs_per_node": 2},
            "output": "/mnt/vlm/runs/demo",
            "cluster": {"storage": {"pvc": "ckpt", "pvc_mount": "/mnt/vlm", "s3_secret": "s3-creds"}, **cluster},
        }
    )


def with_command(job, code: str):
    """Replace every replica's command by ``python -c code``."""
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        container = spec["template"]["spec"]["containers"][0]
        container["command"], container["args"] = ["python"], ["-c", code, "/etc/vlm/config.yaml", "/mnt/vlm/out"]
    return job


SECRETS = {"s3-creds": {"AWS_ACCESS_KEY_ID": "AKIDLOCAL", "AWS_SECRET_ACCESS_KEY": "do-not-print"}}

REPORT = """
import json, os, sys
keys = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NODE_RANK",
        "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT", "HF_HOME", "AWS_ENDPOINT_URL"]
report = {k: os.environ.get(k) for k in keys}
report["argv"] = sys.argv[1:]
report["config"] = open(sys.argv[1]).read()
report["secret_ok"] = os.environ["AWS_SECRET_ACCESS_KEY"] == "do-not-print"
os.makedirs(sys.argv[2], exist_ok=True)
open(os.path.join(sys.argv[2], os.environ["RANK"] + ".json"), "w").write(json.dumps(report))
print("hello from rank", os.environ["RANK"])
"""


def test_replicas_get_the_operator_env_mounts_and_prefixed_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host-cache"))
    cfg = make_cfg(nodes=3)
    objects = [build_config_map(cfg, "align"), with_command(build_pytorchjob(cfg, "align"), REPORT)]
    lines: list[str] = []
    result = run_objects(objects, workdir=tmp_path, secrets=SECRETS, timeout=60, log=lines.append)
    assert result.succeeded and result.restarts == 0, lines
    job_dir = tmp_path / "demo-align"
    out = job_dir / "volumes" / "pvc" / "ckpt" / "out"  # /mnt/vlm is the PVC, shared by all replicas
    reports = [json.loads((out / f"{rank}.json").read_text()) for rank in range(3)]
    ports = {r["MASTER_PORT"] for r in reports}
    assert len(ports) == 1 and ports == {r["PET_MASTER_PORT"] for r in reports}
    for rank, r in enumerate(reports):
        assert r["RANK"] == r["PET_NODE_RANK"] == str(rank)
        assert r["WORLD_SIZE"] == "6" and r["PET_NNODES"] == "3" and r["PET_NPROC_PER_NODE"] == "2"
        assert r["MASTER_ADDR"] == r["PET_MASTER_ADDR"] == "127.0.0.1"
        assert r["secret_ok"]
        # container paths became local folders, in args, env values and the ConfigMap's file
        assert r["argv"][0] == str(job_dir / "volumes" / "configmaps" / "demo-align-config" / "config.yaml")
        # the pods' cache emptyDir is this machine's cache: compiled ops outlive the run
        assert r["HF_HOME"] == str(tmp_path / "host-cache" / "vlm" / "pytorchjob" / "huggingface")
        assert f"output: {job_dir}/volumes/pvc/ckpt/runs/demo" in r["config"]
    assert "[master-0] hello from rank 0" in lines
    assert "[worker-0] hello from rank 1" in lines and "[worker-1] hello from rank 2" in lines
    assert not any("do-not-print" in line for line in lines)
    assert "hello from rank 1" in (job_dir / "logs" / "worker-0.log").read_text()
    assert not (job_dir / "processes.json").exists()  # the record of running replicas is gone


def test_missing_secret_is_a_clear_error_without_values(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    cfg = make_cfg(nodes=1)
    with pytest.raises(LocalJobError, match="key 'AWS_ACCESS_KEY_ID' of Secret 's3-creds' is not available"):
        run_objects(render_job(cfg, "align"), workdir=tmp_path)


def test_missing_config_map_is_a_clear_error(tmp_path):
    cfg = make_cfg(nodes=1)
    with pytest.raises(LocalJobError, match="ConfigMap 'demo-align-config'"):
        run_objects([build_pytorchjob(cfg, "align")], workdir=tmp_path, secrets=SECRETS)


# Rank 1 fails until a marker file in the shared PVC counts `fail_times` earlier starts; the
# master finishes only after rank 1 did (as a real collective job would).
FLAKY = """
import os, sys, signal, time
out = sys.argv[2]
marker = os.path.join(out, "starts-" + os.environ["RANK"])
os.makedirs(out, exist_ok=True)
starts = len(open(marker).read()) if os.path.exists(marker) else 0
open(marker, "a").write("x")
if os.environ["RANK"] == "1":
    if starts < {fail_times}:
        {failure}
    open(os.path.join(out, "worker-ok"), "w").close()
else:
    deadline = time.time() + 30
    while not os.path.exists(os.path.join(out, "worker-ok")) and time.time() < deadline:
        time.sleep(0.05)
print("done", starts)
"""


def run_flaky(tmp_path, *, policy, failure, fail_times=1, backoff=3):
    cfg = make_cfg(nodes=2, restart_policy=policy, backoff_limit=backoff)
    code = FLAKY.format(fail_times=fail_times, failure=failure)
    job = with_command(build_pytorchjob(cfg, "align"), code)
    lines: list[str] = []
    result = run_objects([build_config_map(cfg, "align"), job], workdir=tmp_path, secrets=SECRETS, timeout=60, log=lines.append)
    starts = (tmp_path / "demo-align" / "volumes" / "pvc" / "ckpt" / "out" / "starts-1").read_text()
    return result, len(starts), lines


def test_on_failure_restarts_all_replicas(tmp_path):
    result, starts, lines = run_flaky(tmp_path, policy="OnFailure", failure="sys.exit(3)")
    assert result.succeeded and result.restarts == 1
    assert starts == 2
    assert (tmp_path / "demo-align/volumes/pvc/ckpt/out/starts-0").read_text() == "xx"  # the master restarted too
    assert result.exit_codes[0]["worker-0"] == 3
    assert any("worker-0 exited with 3: restarting all replicas" in line for line in lines)


def test_backoff_limit_fails_the_job(tmp_path):
    result, starts, _ = run_flaky(tmp_path, policy="OnFailure", failure="sys.exit(3)", fail_times=5, backoff=2)
    assert not result.succeeded and result.restarts == 2 and starts == 3
    assert result.reason.startswith("BackoffLimitExceeded")


def test_exit_code_policy_retries_signals_only(tmp_path):
    killed, starts, _ = run_flaky(tmp_path / "a", policy="ExitCode", failure="os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.succeeded and killed.restarts == 1 and killed.exit_codes[0]["worker-0"] == 137
    permanent, starts, _ = run_flaky(tmp_path / "b", policy="ExitCode", failure="sys.exit(1)")
    assert not permanent.succeeded and permanent.restarts == 0 and starts == 1
    assert "not retried" in permanent.reason


def test_never_policy_fails_at_once(tmp_path):
    result, starts, _ = run_flaky(tmp_path, policy="Never", failure="sys.exit(2)")
    assert not result.succeeded and result.restarts == 0 and starts == 1


def test_timeout_stops_every_replica(tmp_path):
    cfg = make_cfg(nodes=2)
    job = with_command(build_pytorchjob(cfg, "align"), "import time; time.sleep(60)")
    result = run_objects([build_config_map(cfg, "align"), job], workdir=tmp_path, secrets=SECRETS, timeout=2, log=lambda s: None)
    assert not result.succeeded and result.reason == "DeadlineExceeded"
    assert set(result.exit_codes[0].values()) == {143}  # SIGTERM'd, reported as the runtime would


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_quickstart_align_stage_as_two_replica_pytorchjob(tmp_path):
    """The real trainer: the quickstart's align stage, Master + 1 Worker, 1 process each."""
    import subprocess
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    quickstart = root / "configs" / "quickstart.yaml"
    if not quickstart.exists() or not (root / "vlm_core" / "train" / "cli.py").exists():
        pytest.skip("needs configs/quickstart.yaml and `vlm train`")
    data_dir = tmp_path / "synth"
    subprocess.run([sys.executable, "-m", "vlm_core.cli", "synth", str(data_dir), "--train", "200", "--eval", "10"],
                   check=True, capture_output=True)  # fmt: skip
    data = yaml.safe_load(quickstart.read_text())
    for spec in data["data"]["datasets"].values():
        spec["url"] = str(data_dir / Path(spec["url"]).name)
        spec["image_root"] = str(data_dir)
    data["stages"]["align"].update(max_steps=6, save_steps=3, logging_steps=2, per_device_batch_size=4)
    data["distributed"] = {**data["distributed"], "nodes": 2, "procs_per_node": 1, "deepspeed": "none"}
    data["output"] = str(tmp_path / "run")
    cfg = parse_config(data)
    objects = render_job(cfg, "align")
    job = objects[1]
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    lines: list[str] = []
    env = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = run_objects(objects, workdir=tmp_path / "job", env=env, timeout=840, log=lines.append)
    assert result.succeeded and result.restarts == 0, "\n".join(lines[-80:])
    assert any(line.startswith("[worker-0]") for line in lines)
    stage_dir = tmp_path / "run" / "align"
    assert (stage_dir / "config.json").exists(), sorted(p.name for p in stage_dir.iterdir())


def test_python_runs_with_this_interpreter(tmp_path):
    cfg = make_cfg(nodes=1)
    job = with_command(build_pytorchjob(cfg, "align"), "import sys; print('exe', sys.executable)")
    lines: list[str] = []
    run_objects([build_config_map(cfg, "align"), job], workdir=tmp_path, secrets=SECRETS, timeout=30, log=lines.append)
    assert f"[master-0] exe {sys.executable}" in lines
    assert os.path.isdir(tmp_path / "demo-align" / "logs")


def test_job_backend_registry_builds_the_local_backend(tmp_path):
    from operators.pytorchjob import job_backend

    cfg = make_cfg(nodes=2)
    job = with_command(build_pytorchjob(cfg, "align"), "print('api ok')")
    lines: list[str] = []
    result = job_backend("local", workdir=tmp_path, secrets=SECRETS, timeout=30, log=lines.append).run(
        [build_config_map(cfg, "align"), job]
    )
    assert result.succeeded and "[master-0] api ok" in lines
    with pytest.raises(KeyError, match="unknown PyTorchJob backend 'slurm'; known: kubernetes, local"):
        job_backend("slurm")


# ----------------------------------------------------------------------------- where replicas run


def test_relative_paths_of_a_config_resolve_against_the_callers_directory(tmp_path, monkeypatch):
    """`vlm job run --config configs/quickstart.yaml` from the repo root: the config's relative
    data paths must resolve in every replica as they do for the command itself."""
    from click.testing import CliRunner

    from operators.jobs_cli import job_group

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "caps.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(nodes=2).with_overrides({"data.datasets.caps.url": "data/caps.jsonl", "output": "runs/demo",
                                             "cluster.storage.pvc": None, "cluster.storage.s3_secret": None})  # fmt: skip
    code = ("import os, sys, yaml; cfg = yaml.safe_load(open(sys.argv[1]));"
            "print('found', open(cfg['data']['datasets']['caps']['url']).read().strip(), os.getcwd())")  # fmt: skip
    job = with_command(build_pytorchjob(cfg, "align"), code)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump_all([build_config_map(cfg, "align"), job]))
    result = CliRunner().invoke(job_group, ["run", "job.yaml", "--workdir", "work", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert f"[master-0] found {{}} {tmp_path}" in result.output and f"[worker-0] found {{}} {tmp_path}" in result.output


def test_replicas_left_by_a_killed_run_are_stopped_before_it_runs_again(tmp_path):
    """The caller of a job is SIGKILLed: its replicas (own sessions) keep running. Running the
    job again stops them first, so two copies never train into the same output."""
    import contextlib
    import signal
    import subprocess
    import time

    cfg = make_cfg(nodes=2)
    pids = tmp_path / "pids"
    job = with_command(build_pytorchjob(cfg, "align"),
                       f"import os, time; open('{pids}/' + os.environ['RANK'], 'w').write(str(os.getpid())); time.sleep(300)")  # fmt: skip
    pids.mkdir()
    objects = [build_config_map(cfg, "align"), job]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump_all(objects))
    caller = subprocess.Popen([sys.executable, "-m", "vlm_core.cli", "job", "run", str(tmp_path / "job.yaml"), "--workdir",
                               str(tmp_path / "work")], env={**os.environ, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(pids.iterdir())) < 2:
        time.sleep(0.05)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    orphans = [int(p.read_text()) for p in pids.iterdir()]
    try:
        assert all(_alive(pid) for pid in orphans)  # they outlived their caller
        lines: list[str] = []
        for spec in job["spec"]["pytorchReplicaSpecs"].values():
            spec["template"]["spec"]["containers"][0]["args"][1] = "print('again')"
        result = run_objects(objects, workdir=tmp_path / "work", secrets=SECRETS, timeout=60, log=lines.append)
        assert result.succeeded
        assert any("stopping 2 replica(s) left by an earlier run" in line for line in lines), lines
        assert not any(_alive(pid) for pid in orphans)
    finally:
        for pid in orphans:  # never leave them behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
