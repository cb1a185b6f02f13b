"""The kustomize base: generated from the run config, fresh, renders offline and validates."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from operators.pytorchjob import build_pytorchjob
from pipelines.chart_values import EXAMPLE_RUN_PATH
from pipelines.manifests import MANIFESTS_DIR, render_files
from pipelines.validate import load_objects, problems
from vlm_core.config import load_config, parse_config

SOURCE = "charts/vlm-platform/run.yaml"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS_DIR)], check=True, capture_output=True, text=True)
    return load_objects(out.stdout)


def test_committed_files_are_generated_from_the_example_run():
    expected = render_files(load_config(EXAMPLE_RUN_PATH), source=SOURCE)
    committed = {p.name: p.read_text() for p in MANIFESTS_DIR.glob("*.yaml")}
    assert committed == expected, "manifests/ is stale: run `vlm pipeline manifests`"


def test_kustomize_renders_the_whole_base(rendered):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == sorted([
        ("Namespace", "vlm"),
        ("ServiceAccount", "vlm-launcher"),
        ("Role", "vlm-launcher"),
        ("RoleBinding", "vlm-launcher"),
        ("PersistentVolumeClaim", "vlm-data"),
        ("ConfigMap", "vlm-run-config"),
        ("PyTorchJob", "vlm-run-align"),
        ("PyTorchJob", "vlm-run-instruct"),
        ("Deployment", "vlm-run-tensorboard"),
        ("Service", "vlm-run-tensorboard"),
    ])
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {"vlm"}


def test_rendered_objects_validate(rendered):
    assert problems(rendered) == []


def test_jobs_and_config_map_come_from_the_operator_builders(rendered):
    cfg = load_config(EXAMPLE_RUN_PATH)
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert parse_config(__import__("yaml").safe_load(config_map["data"]["config.yaml"])) == cfg
    for job in (o for o in rendered if o["kind"] == "PyTorchJob"):
        stage = job["metadata"]["labels"]["vlm-platform/stage"]
        assert job == build_pytorchjob(cfg, stage)


def test_role_grants_only_what_the_launcher_needs(rendered):
    (role,) = [o for o in rendered if o["kind"] == "Role"]
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]


def test_tensorboard_reads_the_run_output(rendered):
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--logdir") + 1] == load_config(EXAMPLE_RUN_PATH).output + "/tensorboard"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_s3_storage_uses_secret_refs_only():
    data = load_config(EXAMPLE_RUN_PATH).model_dump(mode="json")
    data["cluster"]["storage"] = {"s3_endpoint": "http://minio:9000", "s3_secret": "vlm-s3"}
    data["output"] = "s3://runs/x"
    files = render_files(parse_config(data), source="test")
    objects = [o for text in files.values() for o in load_objects(text) if o.get("kind") != "Kustomization"]
    assert "pvc.yaml" not in files
    assert problems(objects) == []
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "vlm-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    }
