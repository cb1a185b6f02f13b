"""TensorBoard: its own event reader sees scalars under <output>/tensorboard/<stage>, locally and on S3."""

from __future__ import annotations

import os

from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipelines.tensorboard import logdir_for, tensorboard_env
from vlm_core.config import RunConfig


def _write_loss(log_dir: str, values: list[float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for step, value in enumerate(values):
            writer.add_scalar("loss", value, step)


def test_reader_sees_loss_under_the_run_tensorboard_dir(tmp_path):
    cfg = RunConfig(output=str(tmp_path / "run"))
    _write_loss(cfg.tensorboard_dir("align"), [2.0, 1.5, 1.0])
    # `vlm tensorboard --output` serves this folder; TensorBoard finds each stage as a run.
    assert logdir_for(cfg.output) == os.path.dirname(cfg.tensorboard_dir("align"))
    events = EventAccumulator(cfg.tensorboard_dir("align"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == [2.0, 1.5, 1.0]


def test_s3_endpoint_reaches_tensorboard_env():
    env = tensorboard_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert env["S3_ENDPOINT"] == "http://127.0.0.1:9000" and env["S3_USE_HTTPS"] == "0"
    assert tensorboard_env({"S3_ENDPOINT": "minio:9000"})["S3_ENDPOINT"] == "minio:9000"


def test_reader_sees_loss_on_s3(s3_bucket, tmp_path, monkeypatch):
    """TensorBoard's own S3 reader (boto3), pointed at the endpoint the way `vlm tensorboard` does."""
    from vlm_core import storage

    cfg = RunConfig(output=f"{s3_bucket}/run")
    local = tmp_path / "events"
    _write_loss(str(local), [3.0, 2.0])
    storage.upload_dir(str(local), cfg.tensorboard_dir("instruct"))
    for key, value in tensorboard_env(dict(os.environ)).items():
        monkeypatch.setenv(key, value)
    events = EventAccumulator(cfg.tensorboard_dir("instruct"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == [3.0, 2.0]


def test_command_needs_exactly_one_location():
    from pipelines.cli import tensorboard_command

    result = CliRunner().invoke(tensorboard_command, [])
    assert result.exit_code == 2 and "exactly one of --output or --logdir" in result.output
