"""Pieces of `vlm pipeline run`: missing data, S3 rebasing, and the stage component under kfp.local."""

from __future__ import annotations

import os

import yaml

from pipelines import local
from pipelines.tasks import load_task_config
from vlm_core import storage
from vlm_core.config import parse_config
from vlm_core.data.synth import generate


def _config(root, output) -> dict:
    synth = os.path.join(root, "synth")
    return {
        "name": "tiny",
        "output": output,
        "data": {"datasets": {"train": {"url": f"{synth}/instruct.jsonl", "image_root": synth}}},
        "stages": {"instruct": {"datasets": ["train"], "trainable": ["projector"], "max_steps": 1}},
        "eval": {"benchmarks": ["synth_vqa"], "data": {"synth_vqa": {"questions": f"{synth}/eval/vqa/questions.json"}}},
    }


def test_missing_inputs_name_the_files(tmp_path):
    cfg = parse_config(_config(str(tmp_path), str(tmp_path / "out")))
    assert local.missing_inputs(cfg) == [str(tmp_path / "synth" / "instruct.jsonl")]


def test_on_s3_uploads_data_and_points_the_config_there(tmp_path, s3_server):
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "instruct.jsonl").write_text("{}\n")
    cfg = parse_config(_config(str(tmp_path), str(tmp_path / "out")))
    fs, _ = storage.filesystem(f"s3://{local.BUCKET}")
    if not fs.exists(local.BUCKET):
        fs.mkdir(local.BUCKET)
    moved = local.on_s3(cfg, str(tmp_path / "synth"), s3_server)
    assert moved.data.datasets["train"].url == f"s3://{local.BUCKET}/data/synth/instruct.jsonl"
    assert moved.data.datasets["train"].image_root == f"s3://{local.BUCKET}/data/synth"
    assert moved.output == f"s3://{local.BUCKET}/runs/tiny"
    assert moved.cluster.storage.s3_endpoint == s3_server
    assert storage.read_text(moved.data.datasets["train"].url) == "{}\n"


def test_stage_component_runs_under_kfp_local(tmp_path):
    """The real component body in a kfp.local subprocess: applies the overrides, stages the
    data, returns the config reading the staged copies."""
    from kfp import local as kfp_local

    from pipelines.components import stage_op

    generate(str(tmp_path / "synth"), train=6, eval_images=2)
    cfg = parse_config(_config(str(tmp_path), str(tmp_path / "out")))
    kfp_local.init(runner=kfp_local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = stage_op(
        config_yaml=yaml.safe_dump(cfg.model_dump(mode="json")),
        overrides={"cluster.namespace": "ml"}, stages=["instruct"], backend="local",
    )
    staged = load_task_config(task.output)
    assert staged.data.datasets["train"].format == "shards"
    assert staged.data.datasets["train"].url == str(tmp_path / "out" / "data" / "train")
    assert (tmp_path / "out" / "data" / "train" / "manifest.json").exists()
    assert staged.cluster.namespace == "ml" and staged.distributed == cfg.distributed


def test_run_local_refuses_missing_data_in_one_line(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import pipeline_group

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(str(tmp_path), str(tmp_path / "out"))))
    result = CliRunner().invoke(pipeline_group, ["run", "--config", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "datasets missing" in result.output and "data.synthesize" in result.output
