"""What each KFP task does: one step of ``operators.orchestrator.steps`` (the steps the driver
runs too), on the run config that travels between tasks as YAML text. No kfp here, so the task
bodies can be called and tested without a pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from operators.orchestrator.plan import plan, training_order
from operators.orchestrator.status import DONE, Tracker
from operators.orchestrator.steps import (
    RunContext,
    StepFailed,
    results_table,
    run_evaluation,
    run_staging,
    run_training_stage,
)
from vlm_core import storage
from vlm_core.config import RunConfig, parse_config

T = TypeVar("T")


def load_task_config(config_yaml: str) -> RunConfig:
    """Parse the config a task received; point S3 clients at the config's endpoint if unset."""
    cfg = parse_config(yaml.safe_load(config_yaml) or {}, source="pipeline parameter config_yaml")
    if cfg.cluster.storage.s3_endpoint and not storage.s3_endpoint():
        os.environ["AWS_ENDPOINT_URL"] = cfg.cluster.storage.s3_endpoint
    return cfg


def _run_step(cfg: RunConfig, backend: str, step: Callable[[RunContext], T]) -> T:
    """One step, recorded in the run's status document; the task that completes the last step
    marks the run succeeded (as the driver does at its end), a failing one marks it failed."""
    ctx = RunContext(Tracker(cfg, backend, plan(cfg)), backend)
    try:
        value = step(ctx)
    except StepFailed as err:
        ctx.tracker.finish("failed", str(err))
        raise
    if all(s.state in DONE for s in ctx.tracker.doc.steps):
        ctx.tracker.finish("succeeded", results=results_table(cfg))
    return value


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
    return _run_step(cfg, backend, lambda ctx: run_staging(ctx, cfg)).to_yaml()


def training_task(config_yaml: str, stage: str, backend: str, init_from: str | None = None) -> str:
    """One training stage; ``init_from`` is the upstream task's checkpoint artifact, if any."""
    cfg = load_task_config(config_yaml)
    if init_from is not None:
        cfg = cfg.with_overrides({f"stages.{stage}.init_from": init_from}, source="upstream checkpoint")
    return _run_step(cfg, backend, lambda ctx: run_training_stage(ctx, cfg, stage))


def eval_task(config_yaml: str, backend: str, checkpoint: str) -> dict[str, float]:
    cfg = load_task_config(config_yaml)
    return _run_step(cfg, backend, lambda ctx: run_evaluation(ctx, cfg, checkpoint))
