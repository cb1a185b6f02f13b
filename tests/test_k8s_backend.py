"""The Kubernetes backend against the RBAC-enforcing test API server (tests/kube_api.py), as the
launcher ServiceAccount bound to the Role the chart renders: adopt-or-create, watch with
reconnects, logs, ownership, and refused requests as one line."""

from __future__ import annotations

import copy
import threading
import time

import pytest

pytest.importorskip("helm_python")

from operators.k8s_backend import JobTimeout, KubeApiError, KubernetesBackend
from operators.pytorchjob import render_job
from tests.kube_api import KubeServer, render_chart_rbac
from vlm_core.config import parse_config

NS = "vlm"
LAUNCHER = f"system:serviceaccount:{NS}:vlm-launcher"


@pytest.fixture()
def kube():
    server = KubeServer()
    server.api.load_rbac(*render_chart_rbac(NS))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def cfg():
    return parse_config(
        {
            "name": "demo",
            "data": {"datasets": {"caps": {"url": "s3://b/caps.jsonl"}}},
            "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 5}},
            "distributed": {"nodes": 2},
            "cluster": {"namespace": NS},
        }
    )


def backend(kube: KubeServer, lines: list[str] | None = None, **options) -> KubernetesBackend:
    token = kube.api.service_account(NS, "vlm-launcher")
    log = lines.append if lines is not None else (lambda line: None)
    return KubernetesBackend(api_client=kube.client(token), log=log, **options)


def test_run_creates_the_config_map_then_the_job_and_waits(kube, cfg):
    kube.api.on_watch = lambda index, rv: kube.api.set_condition(NS, "demo-align", "Succeeded", "PyTorchJobSucceeded")
    result = backend(kube, follow_logs=False).run(render_job(cfg, "align"))
    assert result.succeeded and result.reason == "PyTorchJobSucceeded"
    made = [(req.verb, req.resource) for _, req, _ in kube.api.requests if req.verb == "create"]
    assert made == [("create", "configmaps"), ("create", "pytorchjobs")]
    assert kube.api.get("configmaps", NS, "demo-align-config")["data"]["config.yaml"] == cfg.to_yaml()
    assert not kube.api.refused(LAUNCHER)


def test_an_existing_job_is_adopted_not_created_again(kube, cfg):
    objects = render_job(cfg, "align")
    kube.api.put("pytorchjobs", NS, objects[1], "ADDED")
    kube.api.set_condition(NS, "demo-align", "Running", "PyTorchJobRunning")
    lines: list[str] = []
    kube.api.on_watch = lambda index, rv: kube.api.set_condition(NS, "demo-align", "Succeeded", "PyTorchJobSucceeded")
    result = backend(kube, lines, follow_logs=False).run(objects)
    assert result.succeeded
    assert not [r for _, r, _ in kube.api.requests if r.verb == "create"]  # neither job nor ConfigMap
    assert "pytorchjob vlm/demo-align exists: adopting it" in lines


@pytest.mark.parametrize("terminal", ["Succeeded", "Failed"])
def test_a_finished_job_is_taken_as_it_ended(kube, cfg, terminal):
    objects = render_job(cfg, "align")
    kube.api.put("pytorchjobs", NS, objects[1], "ADDED")
    kube.api.set_condition(NS, "demo-align", terminal, f"PyTorchJob{terminal}", "OOMKilled" if terminal == "Failed" else "")
    result = backend(kube).run(objects)
    assert result.state == terminal
    assert kube.api.watches == 0  # nothing to wait for
    if terminal == "Failed":
        assert result.describe() == "PyTorchJob demo-align Failed: PyTorchJobFailed: OOMKilled"


def test_wait_reconnects_after_stream_end_and_410_and_streams_master_logs(kube, cfg):
    from tests.kube_api import _master_pod

    api = kube.api
    lines: list[str] = []
    b = backend(kube, lines)
    b.submit(render_job(cfg, "align")[1], NS)
    api.put("pods", NS, _master_pod(NS, "demo-align"), "ADDED")
    api.pod_logs["demo-align-master-0"] = ["step 1 loss 2.0", "step 2 loss 1.5"]
    api.max_events_per_watch = 1
    watch_rvs: list[str | None] = []

    def operator(index: int, rv: str | None) -> None:
        watch_rvs.append(rv)
        if index == 0:  # one event, then the server ends the stream
            api.set_condition(NS, "demo-align", "Running", "PyTorchJobRunning")
        elif index == 1:  # history compacted past the client's resourceVersion: 410 Gone
            api.set_condition(NS, "demo-align", "Running", "StillRunning")
            api.compact()
        else:
            threading.Timer(0.5, api.set_condition, (NS, "demo-align", "Succeeded", "PyTorchJobSucceeded", "done")).start()

    api.on_watch = operator
    result = b.wait("demo-align", NS, timeout=30)
    assert result.succeeded and result.reason == "PyTorchJobSucceeded" and result.message == "done"
    # every reconnect resumes from the resourceVersion of a fresh GET
    assert [int(rv) for rv in watch_rvs] == sorted(int(rv) for rv in watch_rvs) and len(watch_rvs) == 3
    assert any("410" in line for line in lines)
    assert "[master-0] step 1 loss 2.0" in lines and "[master-0] step 2 loss 1.5" in lines
    watches = [r for _, r, _ in api.requests if r.verb == "watch"]
    assert {(r.resource, r.name) for r in watches} == {("pytorchjobs", "demo-align")}  # a one-object watch
    assert ("get", "pods/log", "demo-align-master-0") in {(r.verb, r.resource, r.name) for _, r, _ in api.requests}
    assert not api.refused(LAUNCHER)


def test_wait_times_out_across_reconnects(kube, cfg, monkeypatch):
    import operators.k8s_backend as k8s

    monkeypatch.setattr(k8s, "WATCH_SECONDS", 1)  # server-side watches of 1 s: several in the timeout
    b = backend(kube, follow_logs=False)
    b.submit(render_job(cfg, "align")[1], NS)
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="demo-align"):
        b.wait("demo-align", NS, timeout=3)
    assert kube.api.watches >= 2  # the watches ended and were reopened, the deadline held across them
    assert time.monotonic() - started < 30  # far from waiting out a default 60 s watch


def _without(rules: list[dict], resource: str, verb: str) -> list[dict]:
    out = copy.deepcopy(rules)
    for rule in out:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return out


def test_a_forbidden_request_is_one_line_naming_what_whom_and_the_rule(kube, cfg):
    roles, bindings = render_chart_rbac(NS)
    roles[0]["rules"] = _without(roles[0]["rules"], "configmaps", "create")  # the bug of issue 14
    kube.api.load_rbac(roles, bindings)
    with pytest.raises(KubeApiError) as err:
        backend(kube).run(render_job(cfg, "align"))
    message = str(err.value)
    assert "\n" not in message and err.value.status == 403
    assert message.startswith(f'Kubernetes refused to create configmaps in namespace "vlm" for {LAUNCHER} (403 Forbidden)')
    assert '{apiGroups: [""], resources: ["configmaps"], verbs: ["create"]}' in message
    assert "charts/vlm-platform/templates/rbac.yaml" in message
    assert kube.api.get("pytorchjobs", NS, "demo-align") is None  # nothing half-created


def test_a_job_the_crd_schema_refuses_is_one_line(kube, cfg):
    job = render_job(cfg, "align")[1]
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(KubeApiError, match=r"create pytorchjobs.kubeflow.org in namespace \"vlm\" \(422 Invalid\).*imagePullPolcy"):
        backend(kube).submit(job, NS)


def test_the_driver_job_owns_what_the_run_creates(kube, cfg, monkeypatch):
    driver = kube.api.put("jobs", NS, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "demo-driver"}}, "ADDED")
    monkeypatch.setenv("VLM_DRIVER_JOB", "demo-driver")
    kube.api.on_watch = lambda index, rv: kube.api.set_condition(NS, "demo-align", "Succeeded")
    backend(kube, follow_logs=False).run(render_job(cfg, "align"))
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "demo-driver", "uid": driver["metadata"]["uid"]}
    assert kube.api.get("pytorchjobs", NS, "demo-align")["metadata"]["ownerReferences"] == [owner]
    assert kube.api.get("configmaps", NS, "demo-align-config")["metadata"]["ownerReferences"] == [owner]
    assert not kube.api.refused(LAUNCHER)
    kube.api.delete("jobs", NS, "demo-driver")  # helm uninstall / kubectl delete -k
    assert kube.api.of("pytorchjobs") == [] and kube.api.of("configmaps") == []


def test_an_unreachable_server_is_one_line(cfg):
    from kubernetes import client

    dead = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    dead.configuration.retries = 0
    with pytest.raises(KubeApiError, match=r"^cannot reach the Kubernetes API at http://127.0.0.1:9 to get pytorchjobs"):
        KubernetesBackend(api_client=dead, log=lambda line: None).run(render_job(cfg, "align"))
