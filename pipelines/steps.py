"""What each pipeline step does, as plain functions (no kfp here).

The KFP components in ``components.py`` are thin wrappers around these, so the steps can be
called and tested without an orchestrator, and the component bodies stay a few lines long.
Each step takes the run config as YAML text: that is how it travels between pipeline tasks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from vlm_core.config import RunConfig, parse_config
from vlm_core.storage import s3_endpoint

# Sentinels of the pipeline parameters that mean "as the run config says" (KFP pipeline
# parameters cannot default to None when run with kfp.local).
KEEP_TEXT = ""
KEEP_COUNT = 0
KEEP_GPUS = -1


def load_run_config(config_yaml: str) -> RunConfig:
    """Parse the config a task received; point S3 clients at the config's endpoint if unset."""
    cfg = parse_config(yaml.safe_load(config_yaml) or {}, source="pipeline parameter config_yaml")
    if cfg.cluster.storage.s3_endpoint and not s3_endpoint():
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
    from vlm_core.storage import join

    used = {name for stage in cfg.stages.values() for name in stage.datasets}
    data = cfg.model_dump(mode="json")
    for name in sorted(used):
        spec = cfg.data.datasets[name]
        if spec.format == "shards":
            continue
        dest = join(cfg.output, "data", name)
        stage_dataset(spec.url, dest, image_root=spec.image_root, fmt=spec.format)
        data["data"]["datasets"][name] = {"url": dest, "format": "shards", "weight": spec.weight}
    return parse_config(data, source="staged config")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    job_name: str


def train_stage(cfg: RunConfig, stage: str, *, init_from: str | None, backend: str) -> TrainResult:
    """Build the stage's PyTorchJob, run it on ``backend`` and wait for it to finish."""
    from operators.pytorchjob import build_pytorchjob
    from operators.runner import run_pytorchjob

    if init_from:
        # The upstream task's checkpoint, passed as an artifact, wins over the config's guess.
        data = cfg.model_dump(mode="json")
        data["stages"][stage]["init_from"] = init_from
        cfg = parse_config(data, source=f"config of stage {stage}")
    job = build_pytorchjob(cfg, stage)
    run_pytorchjob(job, backend=backend, config=cfg)
    return TrainResult(checkpoint=cfg.stage_output(stage), job_name=job["metadata"]["name"])


def evaluate(cfg: RunConfig, checkpoint: str) -> dict[str, float]:
    """Run the configured benchmarks on ``checkpoint``; returns the headline numbers."""
    from vlm_core.eval import run_eval

    data = cfg.model_dump(mode="json")
    data["eval"]["checkpoint"] = checkpoint
    results = run_eval(parse_config(data, source="eval config"))
    return headline_metrics(results)


def headline_metrics(results: dict) -> dict[str, float]:
    """``{benchmark: score}`` from the harness's results.json (one number per benchmark)."""
    out: dict[str, float] = {}
    for bench, entry in results.get("benchmarks", results).items():
        score = entry.get("score") if isinstance(entry, dict) else entry
        if isinstance(score, (int, float)):
            out[bench] = float(score)
    return out
