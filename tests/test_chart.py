"""The Helm chart, through the Helm engine embedded in helm-python-sdk: lint, render, validate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from operators.pytorchjob import build_pytorchjob  # noqa: E402
from pipelines import chart_values  # noqa: E402
from pipelines.validate import load_objects, problems  # noqa: E402
from vlm_core.config import load_config, parse_config  # noqa: E402

CHART = chart_values.CHART_DIR
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "vlm"
SECRET_SENTINEL = "do-not-leak-7d1f0c"


def _values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _render(values: dict) -> tuple[list[dict], dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="demo", namespace=NAMESPACE)
        merged = chart.merge_values(values)
    objects = [obj for name, text in rendered.items() if name.endswith(".yaml") for obj in load_objects(text)]
    return objects, merged


def _by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _pod_specs(objects: list[dict]) -> list[dict]:
    specs = [o["spec"]["template"]["spec"] for o in _by_kind(objects, "Deployment")]
    for job in _by_kind(objects, "PyTorchJob"):
        specs += [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    return specs


def test_value_sets_cover_the_required_shapes():
    names = {p.name for p in VALUE_SETS}
    assert {"cpu-1node-values.yaml", "gpu-4x8-values.yaml", "tensorboard-off-values.yaml"} <= names


def test_committed_values_and_schema_are_generated_from_the_models():
    assert (CHART / "values.schema.json").read_text() == chart_values.values_schema_text(), (
        "values.schema.json is stale: run `vlm pipeline chart-values --write`"
    )
    expected = chart_values.values_yaml_text(load_config(chart_values.EXAMPLE_RUN_PATH))
    assert (CHART / "values.yaml").read_text() == expected, "values.yaml is stale: run `vlm pipeline chart-values --write`"


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_helm_lint_strict_passes(values_file):
    report = helm.lint(CHART, _values(values_file), strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_rendered_objects_validate(values_file):
    objects, _ = _render(_values(values_file))
    assert _by_kind(objects, "PyTorchJob") and _by_kind(objects, "ConfigMap")
    assert problems(objects) == []


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_pytorchjobs_equal_the_operator_builder(values_file):
    """The chart and `vlm job render` emit the same job for the same run config."""
    objects, merged = _render(_values(values_file))
    cfg = parse_config(merged["run"])
    jobs = _by_kind(objects, "PyTorchJob")
    assert [j["metadata"]["labels"]["vlm-platform/stage"] for j in jobs] == merged["stages"]

    def comparable(job: dict) -> dict:
        job = copy.deepcopy(job)
        job["metadata"].pop("labels")  # the chart adds Helm's own labels
        for replica in job["spec"]["pytorchReplicaSpecs"].values():
            # A digest of the config's text, which Helm and pydantic spell differently.
            replica["template"]["metadata"]["annotations"].pop("vlm-platform/config-sha256")
        return json.loads(json.dumps(job))

    for job in jobs:
        stage = job["metadata"]["labels"]["vlm-platform/stage"]
        built = build_pytorchjob(cfg, stage, namespace=NAMESPACE)
        assert comparable(job) == comparable(built)


def test_config_map_holds_the_run_config():
    values = _values(CHART / "ci" / "gpu-4x8-values.yaml")
    objects, merged = _render(values)
    (config_map,) = _by_kind(objects, "ConfigMap")
    cfg = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert cfg == parse_config(merged["run"])
    assert (cfg.distributed.nodes, cfg.cluster.resources.gpus_per_node) == (4, 8)


def test_four_nodes_of_eight_gpus_shape_the_job():
    objects, _ = _render(_values(CHART / "ci" / "gpu-4x8-values.yaml"))
    for job in _by_kind(objects, "PyTorchJob"):
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
        assert job["spec"]["nprocPerNode"] == "8"
        assert job["spec"]["runPolicy"]["schedulingPolicy"] == {
            "minAvailable": 4, "queue": "gpu-training", "priorityClass": "training-high"
        }
        pod = replicas["Worker"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["priorityClassName"] == "training-high"


def test_tensorboard_toggles_and_reads_the_run_output():
    on, _ = _render({})
    (deployment,) = _by_kind(on, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--logdir") + 1] == "/mnt/vlm/runs/vlm-run/tensorboard"
    assert _by_kind(on, "Service")

    off, _ = _render(_values(CHART / "ci" / "tensorboard-off-values.yaml"))
    assert not _by_kind(off, "Deployment") and not _by_kind(off, "Service")


def test_rbac_is_limited_to_the_launcher_needs():
    objects, _ = _render({})
    (role,) = _by_kind(objects, "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    job_verbs = {("kubeflow.org", "pytorchjobs", v) for v in ("create", "get", "list", "watch", "delete")}
    pod_verbs = {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert granted == job_verbs | pod_verbs
    assert not _by_kind(objects, "ClusterRole")


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_pods_are_locked_down(values_file):
    objects, _ = _render(_values(values_file))
    for spec in _pod_specs(objects):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]


def test_no_secret_value_reaches_config_maps_or_env(monkeypatch):
    # Keys in the environment of whoever renders must never be copied into objects.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET_SENTINEL)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_SENTINEL)
    cfg = load_config(chart_values.EXAMPLE_RUN_PATH)
    values = chart_values.user_values(cfg, chart_values.values_document(chart_values.ChartValues(run=cfg)))
    values = {**_values(CHART / "ci" / "gpu-4x8-values.yaml"), **values}
    values["run"]["cluster"]["storage"] = {"s3_endpoint": "http://minio:9000", "s3_secret": "vlm-s3"}
    objects, _ = _render(values)

    assert not _by_kind(objects, "Secret")
    assert SECRET_SENTINEL not in json.dumps(objects)
    secret_env = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    seen_refs = set()
    for spec in _pod_specs(objects):
        for env in spec["containers"][0].get("env", []):
            if env["name"] in secret_env:
                assert "value" not in env, env
                assert env["valueFrom"]["secretKeyRef"]["name"] == "vlm-s3"
                seen_refs.add(env["name"])
    assert seen_refs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for config_map in _by_kind(objects, "ConfigMap"):
        text = json.dumps(config_map["data"]).lower()
        assert "secret_access_key" not in text and "access_key_id" not in text


def test_notes_say_how_to_watch_the_job_and_open_tensorboard():
    with helm.Chart.load(CHART) as chart:
        notes = chart.render({}, name="demo", namespace=NAMESPACE)["vlm-platform/templates/NOTES.txt"]
    assert "kubectl -n vlm get pytorchjob vlm-run-align -w" in notes
    assert "port-forward svc/vlm-run-tensorboard 6006:6006" in notes


def test_unknown_values_and_unconfigured_stages_are_refused():
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match="tensorbord"):
            chart.render({"tensorbord": {"enabled": False}}, name="demo", namespace=NAMESPACE)
        with pytest.raises(helm.HelmValuesError, match="nodes"):
            chart.render({"run": {"distributed": {"nodes": 0}}}, name="demo", namespace=NAMESPACE)
        with pytest.raises(helm.HelmError, match="full"):
            chart.render({"stages": ["full"]}, name="demo", namespace=NAMESPACE)


def test_user_values_replace_the_example_run():
    """`vlm pipeline chart-values` output installs exactly the given config, nothing of the example."""
    defaults = chart_values.values_document(chart_values.ChartValues(run=load_config(chart_values.EXAMPLE_RUN_PATH)))
    data = yaml.safe_load(chart_values.EXAMPLE_RUN_PATH.read_text())
    data["data"]["datasets"] = {"mine": {"url": "s3://bucket/mine.jsonl"}}
    data["stages"] = {"full": {"datasets": ["mine"], "trainable": ["projector", "llm"], "max_steps": 10}}
    cfg = parse_config(data)
    values = {**chart_values.user_values(cfg, defaults), "stages": ["full"]}
    _, merged = _render(values)
    assert parse_config(merged["run"]) == cfg
