"""The KFP pipeline: compiled from a config's steps, committed default fresh, loads back with the
KFP SDK; one override path; the task image never replaces the PyTorchJobs' image (run under
kfp.local against the RBAC-enforcing test API server and the operator simulator)."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner
from kfp import components

from pipelines import tasks
from pipelines.pipeline import COMPILED_PATH, DEFAULT_SHAPE, PipelineShape, compile_pipeline
from vlm_core.config import load_config, parse_config

QUICKSTART = "configs/quickstart.yaml"


def dag_of(path):
    pipeline = components.load_component_from_file(str(path))
    return pipeline, pipeline.pipeline_spec.root.dag.tasks


def test_committed_compiled_pipeline_is_fresh(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml", DEFAULT_SHAPE).read_text()
    assert COMPILED_PATH.read_text() == fresh, "pipelines/vlm_pipeline.yaml is stale: run `vlm pipeline compile`"


def test_compiled_default_is_align_instruct_eval():
    pipeline, dag = dag_of(COMPILED_PATH)
    assert pipeline.name == "vlm-train-eval"
    assert set(pipeline.component_spec.inputs) == {"config_yaml", "overrides", "backend", "image", "s3_secret", "pvc"}
    display = {key: task.task_info.name for key, task in dag.items()}
    assert sorted(display.values()) == ["align", "eval", "instruct", "stage data"]
    # instruct starts from align's checkpoint artifact; eval scores instruct's.
    instruct = next(t for t in dag.values() if t.task_info.name == "instruct")
    assert instruct.inputs.artifacts["init"].task_output_artifact.output_artifact_key == "checkpoint"
    evaluation = next(t for t in dag.values() if t.task_info.name == "eval")
    producer = evaluation.inputs.artifacts["checkpoint"].task_output_artifact.producer_task
    assert dag[producer].task_info.name == "instruct"


def test_a_single_stage_config_compiles_to_its_own_pipeline(tmp_path):
    data = load_config(QUICKSTART).model_dump(mode="json")
    full = {**data["stages"]["instruct"], "init_from": None, "datasets": ["synth_align", "synth_instruct"]}
    data["stages"] = {"full": full}
    data["cluster"]["image"] = "my-registry/vlm:1.2"
    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump(data))
    from pipelines.cli import pipeline_group

    out = tmp_path / "full-pipeline.yaml"
    result = CliRunner().invoke(pipeline_group, ["compile", "--config", str(config), "-o", str(out)])
    assert result.exit_code == 0, result.output
    pipeline, dag = dag_of(out)
    assert sorted(t.task_info.name for t in dag.values()) == ["eval", "full", "stage data"]
    # the task image defaults to the config's image
    assert pipeline.component_spec.inputs["image"].default == "my-registry/vlm:1.2"


def test_kubernetes_settings_are_compiled_in():
    docs = list(yaml.safe_load_all(COMPILED_PATH.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-stage-op", "exec-train-op", "exec-train-from-op", "exec-eval-op"}
    for spec in executors.values():
        (secret,) = spec["secretAsEnv"]
        assert secret["secretNameParameter"] == {"componentInputParameter": "s3_secret"}
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert spec["pvcMount"][0]["mountPath"] == "/mnt/vlm"
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])  # the image has kfp


def test_staging_task_applies_overrides_and_checks_the_compiled_stages():
    from operators.orchestrator.steps import StepFailed

    cfg = load_config(QUICKSTART).with_overrides({"data.datasets.synth_align.format": "shards",
                                                   "data.datasets.synth_instruct.format": "shards"})  # fmt: skip
    with pytest.raises(StepFailed, match=r"compiled for the stages full; the config has align -> instruct"):
        tasks.staging_task(cfg.to_yaml(), {}, ["full"], "local")
    from vlm_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"(?s)pipeline parameter overrides.*distributed.nodez: unknown field"):
        tasks.staging_task(cfg.to_yaml(), {"distributed.nodez": 2}, ["align", "instruct"], "local")


def test_config_travels_between_tasks_as_yaml():
    cfg = load_config(QUICKSTART)
    assert tasks.load_task_config(cfg.to_yaml()) == cfg


def test_shape_of_a_config():
    shape = PipelineShape.of(load_config(QUICKSTART))
    assert shape.stages == (("align", None), ("instruct", "align")) and shape.evaluate


# ----------------------------------------------------------------------------- under kfp.local, on the test cluster


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    pytest.importorskip("helm_python")
    from tests.kube_api import KubeServer, OperatorSimulator, pretend_to_run, render_chart_rbac

    server = KubeServer()
    server.api.load_rbac(*render_chart_rbac("vlm"))
    simulator = OperatorSimulator(server.api, work=pretend_to_run)
    token = server.api.service_account("vlm", "vlm-launcher")
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig", token)))
    try:
        yield server, simulator
    finally:
        simulator.stop()
        server.close()


def test_pipeline_runs_the_config_image_and_the_overrides_on_the_cluster(cluster, tmp_path):
    """The bug: the pipeline's `image` parameter defaulted to the default image and replaced the
    config's `cluster.image`. Here only the config and an overrides dict are passed: every
    PyTorchJob runs the config's image, with the override applied through with_overrides."""
    from kfp import local

    from pipelines.pipeline import build_pipeline
    from vlm_core.data.synth import generate

    server, simulator = cluster
    synth = tmp_path / "synth"
    generate(str(synth), train=6, eval_images=2)
    cfg = parse_config({
        "name": "demo",
        "output": str(tmp_path / "out"),
        "data": {"datasets": {"caps": {"url": f"{synth}/align.jsonl"}, "qa": {"url": f"{synth}/instruct.jsonl"}}},
        "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 2},
                   "instruct": {"datasets": ["qa"], "trainable": ["llm"], "init_from": "align", "max_steps": 2}},
        "eval": {"benchmarks": ["synth_vqa"], "data": {"synth_vqa": {"questions": f"{synth}/eval/vqa/questions.json"}}},
        "cluster": {"image": "my-registry/vlm:1.2", "namespace": "vlm"},
    })  # fmt: skip
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    build_pipeline(PipelineShape.of(cfg))(config_yaml=cfg.to_yaml(), overrides={"distributed.nodes": 2})

    assert simulator.created == ["demo-align", "demo-instruct", "demo-eval"]
    assert simulator.succeeded_before["demo-instruct"] == {"demo-align"}
    for job in server.api.of("pytorchjobs", "vlm"):
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert {r["template"]["spec"]["containers"][0]["image"] for r in replicas.values()} == {"my-registry/vlm:1.2"}
        assert replicas["Worker"]["replicas"] == 1  # distributed.nodes=2 from the overrides parameter
    assert not server.api.refused("system:serviceaccount:vlm:vlm-launcher")
    from operators.orchestrator.status import read_status

    doc = read_status(cfg)
    assert doc.complete and [s.state for s in doc.steps] == ["succeeded"] * 4  # the KFP tasks keep the document
    assert "| synth_vqa | 50.00 |" in doc.results
