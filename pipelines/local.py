"""Run the whole pipeline on this machine: ``vlm pipeline run --local``.

The same pipeline object as on a cluster runs under ``kfp.local`` (SubprocessRunner, tasks in
this Python environment), and its training steps run each PyTorchJob on the local backend.

Data: when the config's datasets are missing, the synthetic dataset is generated first (``vlm
synth`` into the folder the config expects) — this is what makes the quickstart one command
from a fresh clone. On a cluster the data must exist: the pipeline itself never invents data.

Storage: a local folder by default; with ``s3=True`` a moto S3 server on 127.0.0.1 holds the
data and the outputs, so the run exercises the same s3:// code paths as object storage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import yaml

from vlm_core import storage
from pipelines.steps import local_root
from vlm_core.config import STAGE_NAMES, RunConfig, parse_config

BUCKET = "vlm"
# Placeholder keys for the local moto server only; real keys come from the environment or a Secret.
def missing_inputs(cfg: RunConfig) -> list[str]:
    """Dataset files (used by a stage) that do not exist."""
    used = {name for stage in cfg.stages.values() for name in stage.datasets}
    return sorted(
        spec.url for name, spec in cfg.data.datasets.items() if name in used and not storage.exists(spec.url)
    )


def synth_if_missing(cfg: RunConfig) -> str | None:
    """Generate the synthetic dataset where the config expects it; returns its folder, or None
    when all data is present."""
    missing = missing_inputs(cfg)
    if not missing:
        return None
    folders = {storage.parent(url) for url in missing}
    if len(folders) != 1:
        raise FileNotFoundError(
            f"datasets missing in several folders ({', '.join(sorted(folders))}); synthetic data goes "
            "in one: create the data or fix data.datasets"
        )
    from vlm_core.data.synth import generate

    (folder,) = folders
    print(f"data missing ({', '.join(missing)}): generating the synthetic dataset in {folder}")
    generate(folder)
    still = missing_inputs(cfg)
    if still:
        raise FileNotFoundError(f"after `vlm synth {folder}` these datasets are still missing: {', '.join(still)}")
    return folder


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
    data = cfg.model_dump(mode="json")
    root = os.path.normpath(os.path.abspath(data_root))
    data["data"] = _rebase(data["data"], root, remote_data)
    data["eval"] = _rebase(data["eval"], root, remote_data)
    data["output"] = f"s3://{BUCKET}/runs/{cfg.name}"
    data["cluster"]["storage"]["s3_endpoint"] = endpoint
    return parse_config(data, source="config on S3")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A local S3 server with the pipeline's bucket created; yields its endpoint URL. Task
    subprocesses (and the trainers they start) inherit the AWS variables that reach it."""
    from operators.embedded_s3 import local_s3_server

    with local_s3_server() as endpoint:
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield endpoint


def run_local(config_path: str, *, s3: bool = False, synth: bool = True, pipeline_root: str | None = None) -> str:
    """Run the pipeline end to end; returns the text of the eval table (results.md)."""
    from vlm_core.config import load_config

    cfg = absolute_paths(load_config(config_path))
    data_root = synth_if_missing(cfg) if synth else None
    missing = missing_inputs(cfg)
    if missing:
        raise FileNotFoundError(f"datasets missing: {', '.join(missing)} (run `vlm synth` or fix data.datasets)")
    with contextlib.ExitStack() as stack:
        if s3:
            endpoint = stack.enter_context(moto_s3())
            data_root = data_root or os.path.commonpath([storage.parent(d.url) for d in cfg.data.datasets.values()])
            cfg = on_s3(cfg, data_root, endpoint)
        return _run_pipeline(cfg, pipeline_root or os.path.join(local_root(cfg), "kfp"))


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config with relative local paths made absolute: tasks and trainer replicas run in
    other working folders than the one the config was written for."""
    def absolute(url: str | None) -> str | None:
        return os.path.abspath(url) if url and storage.is_local(url) and "://" not in url else url

    data = cfg.model_dump(mode="json")
    for spec in data["data"]["datasets"].values():
        spec["url"], spec["image_root"] = absolute(spec["url"]), absolute(spec["image_root"])
    for spec in data["eval"]["data"].values():
        for key in ("questions", "annotations", "images"):
            spec[key] = absolute(spec[key])
    data["eval"]["checkpoint"] = absolute(data["eval"]["checkpoint"])
    for stage in data["stages"].values():
        if stage["init_from"] not in (None, *STAGE_NAMES):
            stage["init_from"] = absolute(stage["init_from"])
    data["output"] = absolute(data["output"])
    return parse_config(data, source="config with absolute paths")


def _run_pipeline(cfg: RunConfig, pipeline_root: str) -> str:
    from kfp import local

    from pipelines.pipeline import vlm_pipeline

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(pipeline_root))
    vlm_pipeline(config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), backend="local")
    return storage.read_text(storage.join(cfg.eval_output(), "results.md"))
