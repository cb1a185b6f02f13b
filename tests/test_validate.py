"""`vlm pipeline validate`: strict schemas, the PyTorchJob CRD, and the restricted Pod Security Standard."""

from __future__ import annotations

import copy

import pytest
from click.testing import CliRunner

from pipelines.chart_values import REPO_DIR
from pipelines.validate import problems, restricted_problems
from vlm_core.cli import main


def _pod() -> dict:
    """A pod the restricted profile admits: the shape every pod of the chart has."""
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "main",
            "image": "busybox",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "config", "configMap": {"name": "c"}}, {"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
    }  # fmt: skip


def _with(change) -> dict:
    pod = copy.deepcopy(_pod())
    change(pod)
    return pod


def _container(pod: dict) -> dict:
    return pod["containers"][0]


BREACHES = {
    "privileged": (lambda p: _container(p)["securityContext"].update(privileged=True), "privileged"),
    "escalation unset": (lambda p: _container(p)["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    "root user on the pod": (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser"),
    "root allowed in a container": (lambda p: _container(p)["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    "no seccomp profile": (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "unconfined container": (
        lambda p: _container(p)["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"
    ),
    "capabilities kept": (lambda p: _container(p)["securityContext"].pop("capabilities"), "drop must include ALL"),
    "capability added": (
        lambda p: _container(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"
    ),
    "host network": (lambda p: p.update(hostNetwork=True), "hostNetwork"),
    "host port": (lambda p: _container(p).update(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort"),
    "hostPath volume": (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    "unmasked proc": (lambda p: _container(p)["securityContext"].update(procMount="Unmasked"), "procMount"),
    "init container": (
        lambda p: p.update(initContainers=[{"name": "init", "image": "busybox"}]), "initContainers.init"
    ),
}


def test_a_restricted_pod_passes():
    assert restricted_problems(_pod()) == []
    # NET_BIND_SERVICE is the one capability the profile lets a container add.
    assert restricted_problems(_with(lambda p: _container(p)["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE"]))) == []


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_each_breach_of_the_restricted_profile_is_reported(breach):
    change, expected = BREACHES[breach]
    found = restricted_problems(_with(change))
    assert found and any(expected in p for p in found), found


def test_pod_templates_of_every_workload_kind_are_checked():
    bad = _with(BREACHES["privileged"][0])
    workloads = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": bad},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": bad}}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": bad}},
        },
    ]  # fmt: skip
    for obj in workloads:
        found = problems([obj])
        assert any("privileged" in p and p.startswith(f"{obj['kind']}/") for p in found), found


def test_the_builders_pytorchjobs_are_restricted_pods():
    """What the driver creates at run time passes the same check as the chart's objects."""
    from operators.pytorchjob import build_pytorchjob
    from vlm_core.config import load_config

    cfg = load_config(REPO_DIR / "configs" / "codefuse-vlm-14b.yaml")
    assert problems([build_pytorchjob(cfg, stage) for stage in cfg.stages]) == []


def test_validate_command_reports_every_problem(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndatta: {a: b}\n")
    runner = CliRunner()
    assert runner.invoke(main, ["pipeline", "validate", str(good)]).exit_code == 0
    result = runner.invoke(main, ["pipeline", "validate", str(bad)])
    assert result.exit_code == 1 and "datta" in result.output
