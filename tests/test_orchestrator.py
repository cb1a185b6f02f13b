"""The orchestrator (`vlm run`) against the RBAC-enforcing test API server and the operator
simulator (tests/kube_api.py), as the launcher ServiceAccount with the Role the chart renders:
order, adoption on restart, failure, completion markers, the status document, one-line errors.
Staging runs for real on a tiny synthetic dataset; the PyTorchJobs' pods are simulated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from operators.orchestrator import driver
from operators.orchestrator.plan import plan, training_order
from operators.orchestrator.status import read_status
from operators.orchestrator.steps import StepFailed
from tests.kube_api import (
    KubeServer,
    OperatorSimulator,
    condition,
    pretend_to_run,
    render_chart_rbac,
)
from vlm_core.completion import MARKER, read_marker
from vlm_core.config import ConfigError, parse_config
from vlm_core.data.synth import generate

NS = "vlm"
LAUNCHER = f"system:serviceaccount:{NS}:vlm-launcher"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(str(root), train=6, eval_images=2)
    return root


def config_data(synth, output) -> dict:
    return {
        "name": "demo",
        "output": str(output),
        "data": {
            "datasets": {
                "caps": {"url": f"{synth}/align.jsonl", "image_root": str(synth)},
                "qa": {"url": f"{synth}/instruct.jsonl", "image_root": str(synth)},
            },
        },
        "stages": {
            "instruct": {"datasets": ["qa"], "trainable": ["projector", "llm"], "init_from": "align", "max_steps": 3},
            "align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 2},
        },
        "eval": {"benchmarks": ["synth_vqa"], "data": {"synth_vqa": {"questions": f"{synth}/eval/vqa/questions.json"}}},
        "cluster": {"namespace": NS},
    }


@pytest.fixture()
def cfg(synth, tmp_path):
    return parse_config(config_data(synth, tmp_path / "out"))


@pytest.fixture()
def kube():
    server = KubeServer()
    server.api.load_rbac(*render_chart_rbac(NS))
    simulator = OperatorSimulator(server.api, work=pretend_to_run)
    server.simulator = simulator
    try:
        yield server
    finally:
        simulator.stop()
        server.close()


def run_on(kube: KubeServer, cfg, lines: list[str] | None = None):
    token = kube.api.service_account(NS, "vlm-launcher")
    options = {"api_client": kube.client(token), "follow_logs": False}
    return driver.run(cfg, "kubernetes", log=(lines.append if lines is not None else lambda s: None), backend_options=options)


# ----------------------------------------------------------------------------- plan


def test_plan_orders_stages_by_init_from(cfg):
    assert [(s.name, s.kind, s.needs) for s in plan(cfg)] == [
        ("staging", "staging", ()),
        ("align", "stage", ("staging",)),
        ("instruct", "stage", ("staging", "align")),
        ("eval", "eval", ("instruct",)),
    ]


def test_a_cycle_of_stages_is_a_config_error(synth, tmp_path):
    data = config_data(synth, tmp_path)
    data["stages"]["align"]["init_from"] = "instruct"
    with pytest.raises(ConfigError, match=r"cycle \(align <- instruct, instruct <- align\)"):
        training_order(parse_config(data))


# ----------------------------------------------------------------------------- the chain on the cluster


def test_the_driver_runs_the_chain_in_order_within_the_chart_role(kube, cfg):
    lines: list[str] = []
    status = run_on(kube, cfg, lines)
    sim = kube.simulator
    assert sim.created == ["demo-align", "demo-instruct", "demo-eval"]
    assert sim.succeeded_before["demo-instruct"] == {"demo-align"}  # created only after align Succeeded
    assert sim.succeeded_before["demo-eval"] == {"demo-align", "demo-instruct"}
    assert kube.api.requests and not kube.api.refused(LAUNCHER)  # every request passed the rendered Role
    # the status document: every step, its times, checkpoint URLs and scores; the table
    assert status.complete and [s.state for s in status.steps] == ["succeeded"] * 4
    assert status.step("instruct").checkpoint == cfg.stage_output("instruct")
    assert status.step("eval").scores["synth_vqa/accuracy"] == 50.0
    assert "| synth_vqa | 50.00 |" in status.results
    assert read_status(cfg) == status
    # timestamped transition lines
    assert any(line.endswith("demo/instruct: pending -> running job=demo-instruct") and line[:4].isdigit() for line in lines)
    # staging ran for real: the jobs read the staged shards through their own ConfigMaps
    staged = parse_config(yaml.safe_load(kube.api.get("configmaps", NS, "demo-instruct-config")["data"]["config.yaml"]))
    assert staged.data.datasets["qa"].format == "shards" and staged.data.datasets["qa"].url == f"{cfg.output}/data/qa"
    assert (json.loads((cfg_path(cfg, "data") / MARKER).read_text()))["step"] == "staging"
    evaluated = parse_config(yaml.safe_load(kube.api.get("configmaps", NS, "demo-eval-config")["data"]["config.yaml"]))
    assert evaluated.eval.checkpoint == cfg.stage_output("instruct")


def test_the_launcher_role_is_exactly_what_the_driver_uses(kube, cfg, monkeypatch):
    """Every rule of the chart's Role is needed (no more) and enough (every request passed): the
    chain with logs followed, owned by the driver Job, after a crash that left align's ConfigMap."""
    from operators.pytorchjob import build_config_map

    kube.api.put("jobs", NS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "demo-driver"}}, "ADDED")
    kube.api.put("configmaps", NS, build_config_map(cfg, "align"), "ADDED")
    monkeypatch.setenv("VLM_DRIVER_JOB", "demo-driver")
    token = kube.api.service_account(NS, "vlm-launcher")
    driver.run(cfg, "kubernetes", log=lambda s: None, backend_options={"api_client": kube.client(token)})
    used = {(r.group, r.resource, r.verb) for who, r, _ in kube.api.requests if who == LAUNCHER}
    (role,) = render_chart_rbac(NS)[0]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert not kube.api.refused(LAUNCHER)
    assert used == granted


def cfg_path(cfg, *parts):
    from pathlib import Path

    return Path(cfg.output, *parts)


def test_a_failed_stage_stops_the_run_with_its_reason_and_again_after_a_restart(kube, cfg):
    kube.simulator.failures["demo-instruct"] = ("PyTorchJobFailed", "master-0 exited with 137 (OOMKilled)")
    with pytest.raises(StepFailed) as err:
        run_on(kube, cfg)
    assert str(err.value) == "instruct failed: PyTorchJob demo-instruct Failed: PyTorchJobFailed: master-0 exited with 137 (OOMKilled)"
    assert "demo-eval" not in kube.simulator.created
    doc = read_status(cfg)
    assert (doc.state, doc.step("instruct").state, doc.step("eval").state) == ("failed", "failed", "pending")
    # a restart adopts the Failed job by name and stops with its reason; nothing is created again
    creates = len([r for _, r, _ in kube.api.requests if r.verb == "create"])
    with pytest.raises(StepFailed, match="OOMKilled"):
        run_on(kube, cfg)
    assert len([r for _, r, _ in kube.api.requests if r.verb == "create"]) == creates
    assert read_status(cfg).step("align").state == "skipped"
    assert not kube.api.refused(LAUNCHER)


def test_a_stage_never_starts_before_its_input_is_complete(kube, cfg):
    def align_writes_no_marker(job, job_cfg):
        if job["metadata"]["name"] != "demo-align":
            pretend_to_run(job, job_cfg)

    kube.simulator.work = align_writes_no_marker
    with pytest.raises(StepFailed, match="align: the PyTorchJob succeeded but .*/align has no completion marker"):
        run_on(kube, cfg)
    assert kube.simulator.created == ["demo-align"]


def test_a_marker_of_another_config_stops_the_run(kube, cfg):
    run_on(kube, cfg)
    changed = cfg.with_overrides({"stages.align.learning_rate": 0.1})
    with pytest.raises(StepFailed, match=r"align: .*/align holds a stage trained with another stages.align or model config"):
        run_on(kube, changed)


def test_a_complete_run_is_skipped_step_by_step(kube, cfg):
    run_on(kube, cfg)
    created = list(kube.simulator.created)
    again = run_on(kube, cfg)
    assert [s.state for s in again.steps] == ["skipped"] * 4 and again.complete
    assert kube.simulator.created == created


# ----------------------------------------------------------------------------- a killed driver


def _vlm(*args: str, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlm_core.cli", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def test_a_killed_driver_restarts_and_adopts_the_running_job(kube, cfg, tmp_path):
    kube.simulator.hold.add("demo-instruct")  # instruct keeps running until released
    token = kube.api.service_account(NS, "vlm-launcher")
    env = {"KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig", token))}
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    first = _vlm("run", "--config", str(config), "--backend", "kubernetes", env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not condition(kube.api.get("pytorchjobs", NS, "demo-instruct"), "Running"):
        assert first.poll() is None, first.communicate()
        time.sleep(0.1)
    while time.monotonic() < deadline and kube.api.watches == 0:  # the driver is watching instruct
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()

    watches = kube.api.watches
    second = _vlm("run", "--config", str(config), "--backend", "kubernetes", env=env)
    while time.monotonic() < deadline and kube.api.watches == watches:  # the new driver watches instruct
        assert second.poll() is None, second.communicate()
        time.sleep(0.1)
    kube.simulator.release("demo-instruct")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "| synth_vqa | 50.00 |" in out
    assert "pytorchjob vlm/demo-instruct exists: adopting it" in err
    assert kube.simulator.created == ["demo-align", "demo-instruct", "demo-eval"]  # each created once
    assert "demo/staging: pending -> skipped" not in err and "demo/staging: succeeded -> skipped" in err
    assert "demo/align: succeeded -> skipped" in err
    assert not kube.api.refused(LAUNCHER)
    status = CliRunner().invoke(_main(), ["run", "status", "--config", str(config)])
    assert status.exit_code == 0 and "instruct  succeeded" in status.output, status.output


def _main():
    from vlm_core.cli import main

    return main


def test_refused_requests_reach_the_user_as_one_line(kube, cfg, tmp_path):
    roles, bindings = render_chart_rbac(NS)
    roles[0]["rules"] = [r for r in roles[0]["rules"] if "configmaps" not in r["resources"]]
    kube.api.load_rbac(roles, bindings)
    token = kube.api.service_account(NS, "vlm-launcher")
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    proc = _vlm("run", "--config", str(config), "--backend", "kubernetes",
                env={"KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig", token))})  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    (message,) = [line for line in err.splitlines() if line.startswith("Error:")]
    assert message == (
        f'Error: Kubernetes refused to create configmaps in namespace "vlm" for {LAUNCHER} (403 Forbidden): add the rule '
        '{apiGroups: [""], resources: ["configmaps"], verbs: ["create"]} to the Role bound to '
        f"{LAUNCHER} (charts/vlm-platform/templates/rbac.yaml)"
    )


# ----------------------------------------------------------------------------- vlm run status


def test_status_of_a_run_that_has_not_started_exits_1(cfg, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    result = CliRunner().invoke(_main(), ["run", "status", "--config", str(config)])
    assert result.exit_code == 1 and "the run has not started" in result.output


def test_status_json_and_exit_code_follow_the_document(kube, cfg, tmp_path):
    kube.simulator.failures["demo-eval"] = ("PyTorchJobFailed", "boom")
    with pytest.raises(StepFailed):
        run_on(kube, cfg)
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    result = CliRunner().invoke(_main(), ["run", "status", "--config", str(config), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["state"] == "failed" and doc["steps"][-1]["state"] == "failed" and "boom" in doc["reason"]
    assert read_marker(cfg.stage_output("instruct"))["global_step"] == 3
