"""What each KFP task does: one step of ``operators.orchestrator.steps`` (the steps the driver
runs too), on the run config that travels between tasks as YAML text. No kfp here, so the task
bodies can be called and tested without a pipeline.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from operators.orchestrator.plan import plan, training_order
from operators.orchestrator.status import Tracker
from operators.orchestrator.steps import (
    RunContext,
    StepFailed,
    run_evaluation,
    run_staging,
    run_training_stage,
)
from vlm_core import storage
from vlm_core.config import RunConfig, parse_config


def load_task_config(config_yaml: str) -> RunConfig:
    """Parse the config a task received; point S3 clients at the config's endpoint if unset."""
    cfg = parse_config(yaml.safe_load(config_yaml) or {}, source="pipeline parameter config_yaml")
    if cfg.cluster.storage.s3_endpoint and not storage.s3_endpoint():
        os.environ["AWS_ENDPOINT_URL"] = cfg.cluster.storage.s3_endpoint
    return cfg


def _context(cfg: RunConfig, backend: str) -> RunContext:
    return RunContext(Tracker(cfg, backend, plan(cfg)), backend)


def staging_task(config_yaml: str, overrides: dict[str, Any], stages: list[str], backend: str) -> str:
    """The first task: apply the run's overrides (the one override path), check the config has
    the stages the pipeline was compiled for, stage the data; the staged config as YAML."""
    cfg = load_task_config(config_yaml).with_overrides(overrides, source="pipeline parameter overrides")
    if training_order(cfg) != list(stages):
        have = " -> ".join(training_order(cfg)) or "none"
        raise StepFailed(
            f"this pipeline was compiled for the stages {' -> '.join(stages)}; the config has {have}: "
            "compile one for it with `vlm pipeline compile --config FILE`"
        )
    return run_staging(_context(cfg, backend), cfg).to_yaml()


def training_task(config_yaml: str, stage: str, backend: str, init_from: str | None = None) -> str:
    """One training stage; ``init_from`` is the upstream task's checkpoint artifact, if any."""
    cfg = load_task_config(config_yaml)
    if init_from is not None:
        cfg = cfg.with_overrides({f"stages.{stage}.init_from": init_from}, source="upstream checkpoint")
    return run_training_stage(_context(cfg, backend), cfg, stage)


def eval_task(config_yaml: str, backend: str, checkpoint: str) -> dict[str, float]:
    cfg = load_task_config(config_yaml)
    return run_evaluation(_context(cfg, backend), cfg, checkpoint)
