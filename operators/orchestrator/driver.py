"""The driver: run every step of a run in order, on one backend (what ``vlm run`` does, on a
laptop and in the chart's driver Job)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from operators.orchestrator.plan import plan, training_order
from operators.orchestrator.status import RunStatus, Tracker
from operators.orchestrator.steps import (
    RunContext,
    StepFailed,
    results_table,
    run_evaluation,
    run_staging,
    run_training_stage,
)
from vlm_core.config import RunConfig


def run(
    cfg: RunConfig,
    backend: str = "local",
    *,
    log: Callable[[str], None] = print,
    backend_options: dict[str, Any] | None = None,
) -> RunStatus:
    """Staging, each training stage in ``init_from`` order, eval; returns the final status.

    Raises ``StepFailed`` (one line) when a step cannot run or fails; the status document says
    which, and a later run with the same config continues where this one stopped."""
    steps = plan(cfg)
    tracker = Tracker(cfg, backend, steps, log)
    ctx = RunContext(tracker, backend, log, dict(backend_options or {}))
    try:
        staged = run_staging(ctx, cfg)
        for stage in training_order(cfg):
            run_training_stage(ctx, staged, stage)
        if any(s.kind == "eval" for s in steps):
            run_evaluation(ctx, staged)
    except StepFailed as err:
        tracker.finish("failed", str(err))
        raise
    except BaseException as err:  # killed (SIGTERM, Ctrl-C) or a bug: say so in the document
        for record in tracker.doc.steps:
            if record.state == "running":
                tracker.transition(record.name, "interrupted", detail=type(err).__name__)
        tracker.finish("interrupted", type(err).__name__)
        raise
    tracker.finish("succeeded", results=results_table(cfg))
    return tracker.doc
