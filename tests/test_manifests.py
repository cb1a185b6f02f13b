"""The kustomize base: the chart rendered by the Helm engine, fresh, renders offline and validates."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

pytest.importorskip("helm_python")

from pipelines import chart_values
from pipelines.manifests import (
    HEADER,
    MANIFESTS_DIR,
    chart_objects,
    manifest_files,
    write_manifests,
)
from pipelines.validate import load_objects, problems
from vlm_core.config import load_config, parse_config

NEEDS_KUBECTL = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def _kustomize(folder) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True)
    return load_objects(out.stdout)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return _kustomize(MANIFESTS_DIR)


def test_committed_files_are_the_chart_rendered_with_its_defaults():
    expected = manifest_files()
    committed = {str(p.relative_to(MANIFESTS_DIR)): p.read_text() for p in MANIFESTS_DIR.rglob("*.yaml")}
    assert committed == expected, "manifests/ is stale: run `vlm pipeline manifests`"


def test_kustomize_renders_the_whole_base(rendered):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == sorted([
        ("Namespace", "vlm"),
        ("ServiceAccount", "vlm-launcher"),
        ("Role", "vlm-launcher"),
        ("RoleBinding", "vlm-launcher"),
        ("PersistentVolumeClaim", "vlm-data"),
        ("ConfigMap", "quickstart-config"),
        ("Job", "quickstart-driver"),
        ("Deployment", "quickstart-tensorboard"),
        ("Service", "quickstart-tensorboard"),
    ])
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {"vlm"}


def test_rendered_objects_validate(rendered):
    assert problems(rendered) == []


def test_kubectl_and_helm_create_the_same_objects(rendered):
    """Switching between `kubectl apply -k` and `helm install` in one namespace meets the same objects."""
    def canonical(objects):
        return sorted(json.dumps(o, sort_keys=True) for o in objects)

    by_helm = chart_objects(namespace="vlm")
    assert canonical(o for o in rendered if o["kind"] != "Namespace") == canonical(by_helm)


def test_the_base_runs_the_chain_from_the_example_run(rendered):
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert parse_config(yaml.safe_load(config_map["data"]["config.yaml"])) == chart_values.example_run()
    (job,) = [o for o in rendered if o["kind"] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["vlm", "run"]
    assert not [o for o in rendered if o["kind"] == "PyTorchJob"]


@NEEDS_KUBECTL
def test_manifests_command_renders_the_chart_for_a_config(tmp_path):
    from click.testing import CliRunner

    from vlm_core.cli import main

    config = chart_values.REPO_DIR / "configs" / "llava-1.5-7b.yaml"
    result = CliRunner().invoke(main, ["pipeline", "manifests", "--config", str(config), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    objects = _kustomize(tmp_path)
    assert problems(objects) == []
    cfg = load_config(config)
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert parse_config(yaml.safe_load(config_map["data"]["config.yaml"])) == cfg
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]  # S3 only
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert job["metadata"]["name"] == f"{cfg.name}-driver"
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": cfg.cluster.storage.s3_secret, "key": "AWS_SECRET_ACCESS_KEY"
    }
    assert (tmp_path / "tests" / "run-status.yaml").exists()


def test_rewriting_removes_stale_generated_files_only(tmp_path):
    (tmp_path / "pytorchjob-align.yaml").write_text(HEADER.format(source="an old run") + "kind: PyTorchJob\n")
    (tmp_path / "mine.yaml").write_text("# hand-written\n")
    write_manifests(manifest_files(), tmp_path)
    assert not (tmp_path / "pytorchjob-align.yaml").exists()
    assert (tmp_path / "mine.yaml").exists() and (tmp_path / "driver.yaml").exists()


def test_a_bad_config_is_one_line(tmp_path):
    from click.testing import CliRunner

    from vlm_core.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Not_A_DNS_Label\n")
    result = CliRunner().invoke(main, ["pipeline", "manifests", "--config", str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "name" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_without_the_helm_engine_the_command_says_what_to_install(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vlm_core.cli import main

    monkeypatch.setitem(__import__("sys").modules, "helm_python", None)  # as if not installed
    result = CliRunner().invoke(main, ["pipeline", "manifests", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "vlm-platform[cluster]" in result.output and "Traceback" not in result.output
