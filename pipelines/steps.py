"""What each pipeline step does, as plain functions (no kfp here).

The KFP components in ``components.py`` are thin wrappers around these, so the steps can be
called and tested without an orchestrator, and the component bodies stay a few lines long.
Each step takes the run config as YAML text: that is how it travels between pipeline tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from vlm_core import storage
from vlm_core.config import RunConfig, parse_config
from vlm_core.registry import Registry

# Sentinels of the pipeline parameters that mean "as the run config says" (KFP pipeline
# parameters cannot default to None when run with kfp.local).
KEEP_TEXT = ""
KEEP_COUNT = 0
KEEP_GPUS = -1


def load_run_config(config_yaml: str) -> RunConfig:
    """Parse the config a task received; point S3 clients at the config's endpoint if unset."""
    cfg = parse_config(yaml.safe_load(config_yaml) or {}, source="pipeline parameter config_yaml")
    if cfg.cluster.storage.s3_endpoint and not storage.s3_endpoint():
        os.environ["AWS_ENDPOINT_URL"] = cfg.cluster.storage.s3_endpoint
    return cfg


def apply_overrides(
    cfg: RunConfig,
    *,
    image: str = KEEP_TEXT,
    namespace: str = KEEP_TEXT,
    nodes: int = KEEP_COUNT,
    procs_per_node: int = KEEP_COUNT,
    gpus_per_node: int = KEEP_GPUS,
) -> RunConfig:
    """The run config with the pipeline's cluster parameters applied (sentinels keep a value)."""
    cluster = cfg.cluster.model_copy(deep=True)
    distributed = cfg.distributed.model_copy(deep=True)
    if image != KEEP_TEXT:
        cluster.image = image
    if namespace != KEEP_TEXT:
        cluster.namespace = namespace
    if gpus_per_node != KEEP_GPUS:
        cluster.resources.gpus_per_node = gpus_per_node
    if nodes != KEEP_COUNT:
        distributed.nodes = nodes
    if procs_per_node != KEEP_COUNT:
        distributed.procs_per_node = procs_per_node
    # Validate the result as a whole, so a bad override is reported like a bad config field.
    data = cfg.model_dump(mode="json")
    data["cluster"] = cluster.model_dump(mode="json")
    data["distributed"] = distributed.model_dump(mode="json")
    return parse_config(data, source="pipeline parameters")


def stage_data(cfg: RunConfig) -> RunConfig:
    """Stage every dataset the stages read into shards under ``<output>/data/<name>``.

    Returns the config pointing at the staged copies; datasets already staged are kept.
    """
    from operators.staging import stage_dataset

    used = {name for stage in cfg.stages.values() for name in stage.datasets}
    data = cfg.model_dump(mode="json")
    for name in sorted(used):
        spec = cfg.data.datasets[name]
        if spec.format == "shards":
            continue
        dest = storage.join(cfg.output, "data", name)
        stage_dataset(spec, dest)
        data["data"]["datasets"][name] = {"url": dest, "format": "shards", "weight": spec.weight}
    return parse_config(data, source="staged config")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    job_name: str


def local_root(cfg: RunConfig) -> str:
    """A local folder for a run's bookkeeping: its output when local, else ./runs/<name>."""
    return storage.local_path(cfg.output) if storage.is_local(cfg.output) else os.path.join("runs", cfg.name)


def _local_options(cfg: RunConfig) -> dict[str, Any]:
    # One work folder for every stage: the replicas' /cache emptyDir (DeepSpeed's compiled ops)
    # is then built once per run, not once per stage.
    return {"workdir": os.path.join(local_root(cfg), "jobs")}


def _kubernetes_options(cfg: RunConfig) -> dict[str, Any]:
    from operators.k8s_backend import load_kube_config

    load_kube_config()  # in a KFP task: the pod's ServiceAccount (needs the launcher Role)
    return {"namespace": cfg.cluster.namespace}


# What each backend of operators.pytorchjob.run_pytorchjob needs to know about this run.
BACKEND_OPTIONS: Registry[Callable[[RunConfig], dict[str, Any]]] = Registry("PyTorchJob backend")
BACKEND_OPTIONS.add("local", _local_options)
BACKEND_OPTIONS.add("kubernetes", _kubernetes_options)


def train_stage(cfg: RunConfig, stage: str, *, init_from: str | None, backend: str) -> TrainResult:
    """Build the stage's PyTorchJob (+ its ConfigMap), run it on ``backend`` and wait for it."""
    from operators.pytorchjob import render_stage, run_pytorchjob

    options = BACKEND_OPTIONS.get(backend)
    if init_from:
        # The upstream task's checkpoint, passed as an artifact, wins over the config's guess.
        data = cfg.model_dump(mode="json")
        data["stages"][stage]["init_from"] = init_from
        cfg = parse_config(data, source=f"config of stage {stage}")
    objects = render_stage(cfg, stage)
    job_name = next(o for o in objects if o["kind"] == "PyTorchJob")["metadata"]["name"]
    status = run_pytorchjob(objects, backend, **options(cfg))
    if not status.succeeded:
        raise RuntimeError(f"PyTorchJob {job_name} ({backend}) {status.state}: {status.reason}")
    return TrainResult(checkpoint=cfg.stage_output(stage), job_name=job_name)


def evaluate(cfg: RunConfig, checkpoint: str) -> dict[str, float]:
    """Run the configured benchmarks on ``checkpoint`` (writes ``<output>/eval``); headline numbers."""
    from vlm_core.eval.runner import run_eval

    return headline_metrics(run_eval(cfg, checkpoint=checkpoint))


def headline_metrics(results: dict[str, dict]) -> dict[str, float]:
    """``{"<benchmark>/<metric>": value}`` for the top-level numbers of each benchmark's result."""
    return {
        f"{bench}/{key}": float(value)
        for bench, result in results.items()
        for key, value in result.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
