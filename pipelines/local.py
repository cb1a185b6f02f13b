"""Run the KFP pipeline on this machine: ``vlm pipeline run --config FILE``.

The pipeline compiled from the config's steps runs under ``kfp.local`` (SubprocessRunner, tasks
in this Python environment, in the directory the command runs in), and its training and eval
steps run each PyTorchJob on the local backend. ``vlm run --config FILE`` runs the same steps
without KFP.

Storage: a local folder by default; with ``s3=True`` a moto S3 server on 127.0.0.1 holds the
data and the outputs, so the run exercises the same s3:// code paths as object storage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

from operators.orchestrator.steps import local_root, synthesize
from vlm_core import storage
from vlm_core.config import ConfigError, RunConfig

BUCKET = "vlm"


def missing_inputs(cfg: RunConfig) -> list[str]:
    """Dataset files (used by a stage) that do not exist."""
    used = {name for stage in cfg.stages.values() for name in stage.datasets}
    return sorted(
        spec.url for name, spec in cfg.data.datasets.items() if name in used and not storage.exists(spec.url)
    )


def _rebase(value: Any, local_root: str, remote_root: str) -> Any:
    """Every string path under ``local_root`` moved under ``remote_root`` (in nested data)."""
    if isinstance(value, dict):
        return {k: _rebase(v, local_root, remote_root) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, local_root, remote_root) for v in value]
    if isinstance(value, str) and storage.is_local(value):
        path = os.path.normpath(os.path.abspath(value))
        if path == local_root or path.startswith(local_root + os.sep):
            return storage.join(remote_root, os.path.relpath(path, local_root).replace(os.sep, "/")).rstrip("/.")
    return value


def on_s3(cfg: RunConfig, data_root: str, endpoint: str) -> RunConfig:
    """Upload ``data_root`` to the bucket and point the config's data, eval files and output there."""
    remote_data = f"s3://{BUCKET}/data/{os.path.basename(data_root.rstrip('/'))}"
    storage.upload_dir(data_root, remote_data)
    root = os.path.normpath(os.path.abspath(data_root))
    data, evaluation = cfg.model_dump(mode="json")["data"], cfg.model_dump(mode="json")["eval"]
    moved = {**_rebase(data, root, remote_data), "synthesize": None}  # uploaded already
    return cfg.with_overrides(
        {
            "data": moved,
            "eval": _rebase(evaluation, root, remote_data),
            "output": f"s3://{BUCKET}/runs/{cfg.name}",
            "cluster.storage.s3_endpoint": endpoint,
        },
        source="config on S3",
    )


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A local S3 server with the pipeline's bucket created; yields its endpoint URL. Task
    subprocesses (and the trainers they start) inherit the AWS variables that reach it."""
    from operators.embedded_s3 import local_s3_server

    with local_s3_server() as endpoint:
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield endpoint


def run_local(config_path: str, *, sets: Iterable[str] = (), s3: bool = False, pipeline_root: str | None = None) -> str:
    """Run the pipeline end to end; returns the text of the eval table (results.md)."""
    from operators.run_config import load_run_config

    cfg = load_run_config(config_path, sets)
    if cfg.data.synthesize is None and (missing := missing_inputs(cfg)):
        raise ConfigError(
            f"datasets missing: {', '.join(missing)} (create them, or set data.synthesize to generate synthetic data)"
        )
    with contextlib.ExitStack() as stack:
        if s3:
            endpoint = stack.enter_context(moto_s3())
            synthesize(cfg, print)  # here: the data goes to the bucket with the rest
            data_root = os.path.commonpath([os.path.abspath(storage.parent(d.url)) for d in cfg.data.datasets.values()])
            cfg = on_s3(cfg, data_root, endpoint)
        return _run_pipeline(cfg, pipeline_root or os.path.join(local_root(cfg), "kfp"))


def _run_pipeline(cfg: RunConfig, pipeline_root: str) -> str:
    from kfp import local

    from pipelines.pipeline import PipelineShape, build_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(pipeline_root))
    build_pipeline(PipelineShape.of(cfg))(config_yaml=cfg.to_yaml(), backend="local")
    return storage.read_text(storage.join(cfg.eval_output(), "results.md"))
