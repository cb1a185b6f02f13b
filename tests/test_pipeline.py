"""The KFP pipeline: compiled copy fresh, YAML loads back with the KFP SDK, parameters and steps."""

from __future__ import annotations

import yaml
from kfp import components

from pipelines import steps
from pipelines.pipeline import COMPILED_PATH, compile_pipeline
from vlm_core.config import load_config

QUICKSTART = "configs/quickstart.yaml"


def test_committed_compiled_pipeline_is_fresh(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    assert COMPILED_PATH.read_text() == fresh, "pipelines/vlm_pipeline.yaml is stale: run `vlm pipeline compile`"


def test_compiled_yaml_loads_back_with_the_kfp_sdk():
    pipeline = components.load_component_from_file(str(COMPILED_PATH))
    assert pipeline.name == "vlm-train-eval"
    inputs = pipeline.component_spec.inputs
    for name in ("config_yaml", "image", "namespace", "nodes", "procs_per_node", "gpus_per_node", "backend"):
        assert name in inputs, name
    dag = pipeline.pipeline_spec.root.dag.tasks
    display = {key: task.task_info.name for key, task in dag.items()}
    assert sorted(display.values()) == ["align", "eval", "instruct", "stage data"]
    # instruct starts from align's checkpoint artifact; eval scores instruct's.
    instruct = next(t for t in dag.values() if t.task_info.name == "instruct")
    assert instruct.inputs.artifacts["init"].task_output_artifact.output_artifact_key == "checkpoint"
    evaluation = next(t for t in dag.values() if t.task_info.name == "eval")
    assert evaluation.inputs.artifacts["checkpoint"].task_output_artifact.producer_task == "train-from-op"


def test_kubernetes_settings_are_compiled_in():
    docs = list(yaml.safe_load_all(COMPILED_PATH.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-stage-op", "exec-train-op", "exec-train-from-op", "exec-eval-op"}
    for spec in executors.values():
        (secret,) = spec["secretAsEnv"]
        assert secret["secretNameParameter"] == {"componentInputParameter": "s3_secret"}
        assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert spec["pvcMount"][0]["mountPath"] == "/mnt/vlm"
    assert executors["exec-eval-op"]["nodeSelector"] == {"nodeSelectorJson": {"componentInputParameter": "node_selector"}}
    assert executors["exec-eval-op"]["tolerations"] == [{"tolerationJson": {"componentInputParameter": "tolerations"}}]
    component = docs[0]["deploymentSpec"]["executors"]["exec-train-op"]["container"]
    assert "pip install" not in " ".join(component["command"])  # install_kfp_package=False: the image has it


def test_overrides_apply_and_sentinels_keep_the_config():
    cfg = load_config(QUICKSTART)
    kept = steps.apply_overrides(cfg)
    assert kept == cfg
    changed = steps.apply_overrides(cfg, image="reg/x:1", namespace="ml", nodes=4, procs_per_node=8, gpus_per_node=8)
    assert (changed.cluster.image, changed.cluster.namespace) == ("reg/x:1", "ml")
    assert (changed.distributed.nodes, changed.distributed.procs_per_node, changed.cluster.resources.gpus_per_node) == (4, 8, 8)
    cpu = steps.apply_overrides(cfg, gpus_per_node=0)
    assert cpu.cluster.resources.gpus_per_node == 0


def test_bad_override_is_reported_like_a_config_field():
    import pytest

    from vlm_core.config import ConfigError

    with pytest.raises(ConfigError, match=r"cluster.resources.gpus_per_node"):
        steps.apply_overrides(load_config(QUICKSTART), gpus_per_node=-3)


def test_config_travels_between_tasks_as_yaml():
    cfg = load_config(QUICKSTART)
    assert steps.load_run_config(cfg.to_yaml()) == cfg


def test_unknown_backend_names_the_known_ones():
    import pytest

    with pytest.raises(KeyError, match="unknown PyTorchJob backend 'slurm'; known: kubernetes, local"):
        steps.train_stage(load_config(QUICKSTART), "align", init_from=None, backend="slurm")


def test_headline_metrics_are_the_top_level_numbers():
    results = {"synth_vqa": {"accuracy": 93.5, "num_questions": 900, "per_question_type": {"shape": 80.0}, "failed": []}}
    assert steps.headline_metrics(results) == {"synth_vqa/accuracy": 93.5, "synth_vqa/num_questions": 900.0}
