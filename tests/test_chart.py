"""The Helm chart, through the Helm engine embedded in helm-python-sdk: lint, render, validate.

The chart holds the install-time objects only (RBAC, ConfigMap, PVC, TensorBoard, the driver Job,
the `helm test` pod); every PyTorchJob comes from the driver's Python builder at run time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")

from pipelines import chart_values
from pipelines.manifests import chart_objects, render_chart
from pipelines.validate import problems
from vlm_core.config import load_config, parse_config

CHART = chart_values.CHART_DIR
VALUE_SETS = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "vlm"
SECRET_SENTINEL = "do-not-leak-7d1f0c"
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component", "app.kubernetes.io/part-of")


def _values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _render(values: dict, namespace: str = NAMESPACE) -> tuple[list[dict], dict]:
    objects = chart_objects(values, namespace=namespace, tests=True)
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
    return objects, merged


def _by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict], kind: str) -> dict:
    (obj,) = _by_kind(objects, kind)
    return obj


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_value_sets_cover_the_required_shapes():
    names = {p.name for p in VALUE_SETS}
    assert {"cpu-1node-values.yaml", "gpu-4x8-values.yaml", "tensorboard-off-values.yaml", "driver-off-values.yaml"} <= names


def test_committed_values_and_schema_are_generated_from_the_models():
    assert (CHART / "values.schema.json").read_text() == chart_values.values_schema_text(), (
        "values.schema.json is stale: run `vlm pipeline chart-values --write`"
    )
    assert (CHART / "values.yaml").read_text() == chart_values.values_yaml_text(), (
        "values.yaml is stale: run `vlm pipeline chart-values --write`"
    )


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_helm_lint_strict_passes(values_file):
    report = helm.lint(CHART, _values(values_file), strict=True, namespace=NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_rendered_objects_validate_strictly_and_as_restricted_pods(values_file):
    objects, _ = _render(_values(values_file))
    assert _by_kind(objects, "ConfigMap") and _by_kind(objects, "Pod")
    assert problems(objects) == []


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_no_pytorchjob_is_templated(values_file):
    """Run-time objects have one source, the Python builder: the chart renders none and has no copy."""
    objects, _ = _render(_values(values_file))
    assert not _by_kind(objects, "PyTorchJob")
    for template in (CHART / "templates").rglob("*"):
        if template.is_file():
            text = template.read_text()
            assert "kind: PyTorchJob" not in text and "pytorchReplicaSpecs" not in text, template
            assert "torchrun" not in text, template


def test_driver_job_runs_the_whole_run_on_the_mounted_config():
    objects, merged = _render({})
    run = merged["run"]
    job = _one(objects, "Job")
    assert job["metadata"]["name"] == f"{run['name']}-driver"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "driver"
    assert job["spec"]["backoffLimit"] == merged["driver"]["backoffLimit"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == run["cluster"]["service_account"] == "vlm-launcher"
    (container,) = pod["containers"]
    assert container["command"] + container.get("args", []) == [
        "vlm", "run", "--config", "/etc/vlm/config.yaml", "--backend", "kubernetes",
    ]  # fmt: skip
    assert _env(container)["VLM_DRIVER_JOB"]["value"] == job["metadata"]["name"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/vlm"
    assert volumes["config"]["configMap"]["name"] == _one(objects, "ConfigMap")["metadata"]["name"] == f"{run['name']}-config"
    assert mounts["storage"]["mountPath"] == run["cluster"]["storage"]["pvc_mount"]
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == run["cluster"]["storage"]["pvc"]


def test_driver_backoff_and_resources_come_from_the_values():
    objects, _ = _render({"driver": {"backoffLimit": 7, "cpu": "3", "memory": "5Gi"}})
    job = _one(objects, "Job")
    assert job["spec"]["backoffLimit"] == 7
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "3", "memory": "5Gi"}, "limits": {"memory": "5Gi"}
    }
    off, _ = _render(_values(CHART / "ci" / "driver-off-values.yaml"))
    assert not _by_kind(off, "Job") and _by_kind(off, "Role") and _by_kind(off, "ConfigMap")


def test_config_map_holds_the_effective_run_config_in_the_release_namespace():
    values = _values(CHART / "ci" / "gpu-4x8-values.yaml")
    objects, merged = _render(values, namespace="team-a")
    config_map = _one(objects, "ConfigMap")
    cfg = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    expected = parse_config(merged["run"]).with_overrides({"cluster.namespace": "team-a"})
    assert cfg == expected
    assert (cfg.distributed.nodes, cfg.cluster.resources.gpus_per_node, cfg.cluster.namespace) == (4, 8, "team-a")
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}


def test_defaults_are_the_quickstart_on_the_pvc():
    """A fresh cluster runs the tiny CPU quickstart; its every location is on the PVC every pod mounts."""
    _, merged = _render({})
    run = parse_config(merged["run"])
    quickstart = load_config(chart_values.EXAMPLE_SOURCE)
    mount = run.cluster.storage.pvc_mount
    assert run.cluster.storage.pvc == chart_values.EXAMPLE_PVC
    assert run.cluster.resources.gpus_per_node == 0
    assert chart_values.relative_paths(run) == {}
    moved = chart_values.relative_paths(quickstart)
    assert moved, "the quickstart names relative paths"
    data = run.model_dump(mode="json")
    for key, path in moved.items():
        node = data
        for part in key.split("."):
            node = node[part]
        assert node == f"{mount}/{path}"
    # Nothing else differs from the quickstart (but the request for in-cluster data, checked below).
    back = {"cluster.storage.pvc": None}
    assert run.with_overrides(back | moved) == quickstart


def test_the_default_run_makes_its_data_in_cluster():
    """The staging step writes the synthetic dataset where every dataset and eval file of the run is."""
    run = chart_values.example_run()
    folder = run.data.synthesize
    assert folder and folder.startswith(run.cluster.storage.pvc_mount + "/")
    files = [d.url for d in run.data.datasets.values()]
    files += [v for spec in run.eval.data.values() for v in spec.model_dump().values() if isinstance(v, str)]
    assert files and all(f.startswith(folder + "/") for f in files), files


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=lambda p: p.stem)
def test_every_object_is_labelled_with_the_run_not_the_release(values_file):
    objects, merged = _render(_values(values_file))
    run_name = merged["run"]["name"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert set(LABELS) <= set(labels), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/name"] == "vlm-platform"
        assert labels["app.kubernetes.io/instance"] == labels["app.kubernetes.io/part-of"] == run_name


def test_objects_do_not_depend_on_the_release_name():
    """`kubectl apply -k` and `helm install` objects are interchangeable: the release name is nowhere."""
    first = render_chart({}, namespace=NAMESPACE, release="one")
    second = render_chart({}, namespace=NAMESPACE, release="two")
    assert first == second


def test_tensorboard_toggles_reads_the_run_output_and_selects_by_run():
    on, merged = _render({})
    deployment = _one(on, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--logdir") + 1] == merged["run"]["output"] + "/tensorboard"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "vlm-platform",
        "app.kubernetes.io/instance": merged["run"]["name"],
        "app.kubernetes.io/component": "tensorboard",
    }
    assert _one(on, "Service")["spec"]["selector"] == selector

    off, _ = _render(_values(CHART / "ci" / "tensorboard-off-values.yaml"))
    assert not _by_kind(off, "Deployment") and not _by_kind(off, "Service")


def test_helm_test_checks_the_run_status_on_the_same_config():
    objects, _ = _render({})
    pod = _one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["vlm", "run", "status", "--config", "/etc/vlm/config.yaml"]
    assert spec["restartPolicy"] == "Never"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == _one(objects, "ConfigMap")["metadata"]["name"]
    assert volumes["storage"]["persistentVolumeClaim"]["readOnly"] is True


def test_rbac_binds_a_namespaced_role_to_the_launcher():
    objects, merged = _render({})
    sa_name = merged["run"]["cluster"]["service_account"]
    role, binding = _one(objects, "Role"), _one(objects, "RoleBinding")
    assert _one(objects, "ServiceAccount")["metadata"]["name"] == role["metadata"]["name"] == sa_name
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa_name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    assert isinstance(role["rules"], list) and all({"apiGroups", "resources", "verbs"} <= set(r) for r in role["rules"])
    assert not _by_kind(objects, "ClusterRole") and not _by_kind(objects, "ClusterRoleBinding")


def test_the_pvc_outlives_the_release():
    objects, _ = _render({})
    pvc = _one(objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    s3_only, _ = _render(_values(CHART / "ci" / "gpu-4x8-values.yaml"))
    assert not _by_kind(s3_only, "PersistentVolumeClaim")
    assert all(v["name"] != "storage" for v in _one(s3_only, "Job")["spec"]["template"]["spec"]["volumes"])


def test_no_secret_value_reaches_config_maps_or_env(monkeypatch):
    # Keys in the environment of whoever renders must never be copied into objects.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET_SENTINEL)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_SENTINEL)
    objects, _ = _render(_values(CHART / "ci" / "gpu-4x8-values.yaml"))

    assert not _by_kind(objects, "Secret")
    assert SECRET_SENTINEL not in json.dumps(objects)
    secret_env = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]
    pods += [o["spec"] for o in _by_kind(objects, "Pod")]
    assert len(pods) == 3
    for spec in pods:
        env = _env(spec["containers"][0])
        assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.storage.svc:9000"
        refs = {name for name in secret_env & set(env)}
        assert refs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        for name in refs:
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "vlm-s3", "key": name}
    text = json.dumps(_one(objects, "ConfigMap")["data"]).lower()
    assert "secret_access_key" not in text and "access_key_id" not in text


def test_notes_say_how_to_follow_check_and_resume_the_run():
    with helm.Chart.load(CHART) as chart:
        notes = chart.render({}, name="demo", namespace=NAMESPACE)["vlm-platform/templates/NOTES.txt"]
    assert "kubectl -n vlm logs -f job/quickstart-driver" in notes
    assert "kubectl -n vlm get pytorchjobs -l app.kubernetes.io/instance=quickstart" in notes
    assert "helm test demo -n vlm" in notes
    assert "kubectl -n vlm delete job quickstart-driver --cascade=foreground" in notes
    assert "port-forward svc/quickstart-tensorboard 6006:6006" in notes


def test_unknown_values_and_bad_runs_are_refused():
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match="tensorbord"):
            chart.render({"tensorbord": {"enabled": False}}, name="demo", namespace=NAMESPACE)
        with pytest.raises(helm.HelmValuesError, match="nodes"):
            chart.render({"run": {"distributed": {"nodes": 0}}}, name="demo", namespace=NAMESPACE)
        with pytest.raises(helm.HelmValuesError, match="stages"):
            chart.render({"stages": ["align"]}, name="demo", namespace=NAMESPACE)  # the old chart's key


def test_user_values_replace_the_example_run():
    """`vlm pipeline chart-values` output installs exactly the given config, nothing of the example."""
    data = chart_values.example_run().model_dump(mode="json")
    data["data"]["datasets"] = {"mine": {"url": "s3://bucket/mine.jsonl"}}
    data["model"]["tokenizer"]["train_corpus"] = ["mine"]
    data["stages"] = {"full": {"datasets": ["mine"], "trainable": ["projector", "llm"], "max_steps": 10}}
    data["eval"] = {"benchmarks": []}
    cfg = parse_config(data)
    objects, merged = _render(chart_values.user_values(cfg))
    assert parse_config(merged["run"]) == cfg
    config_map = _one(objects, "ConfigMap")
    assert parse_config(yaml.safe_load(config_map["data"]["config.yaml"])) == cfg


def test_chart_values_command_writes_values_that_install_a_config(tmp_path):
    from click.testing import CliRunner

    from vlm_core.cli import main

    out = tmp_path / "values.yaml"
    config = chart_values.REPO_DIR / "configs" / "llava-1.5-7b.yaml"
    result = CliRunner().invoke(main, ["pipeline", "chart-values", "--config", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    objects, merged = _render(yaml.safe_load(out.read_text()))
    assert parse_config(merged["run"]) == load_config(config)
    assert problems(objects) == []

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndistributed: {nodes: 0}\n")
    result = CliRunner().invoke(main, ["pipeline", "chart-values", "--config", str(bad)])
    assert result.exit_code == 1 and "distributed.nodes" in result.output and "Traceback" not in result.output


def test_readme_cluster_commands_name_objects_the_chart_creates():
    """The README's copy-paste blocks name the driver, TensorBoard and ConfigMap of real runs."""
    readme = (chart_values.REPO_DIR / "README.md").read_text()
    section = readme[readme.index("## On a Kubernetes cluster") :]
    runs = {chart_values.example_run().name} | {
        load_config(p).name for p in (chart_values.REPO_DIR / "configs").glob("*.yaml")
    }
    named = re.findall(r"(?:job/|svc/|configmap |pod/)([a-z0-9-]+?)-(driver|tensorboard|config|status)\b", section)
    assert named and {run for run, _ in named} <= runs, named
    objects = {o["metadata"]["name"] for o in chart_objects({}, namespace=NAMESPACE, tests=True)}
    assert {f"{run}-{kind}" for run, kind in named if run == chart_values.example_run().name} <= objects
