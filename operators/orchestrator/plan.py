"""The steps of a run, in dependency order: staging, each training stage in ``init_from`` order,
eval. One definition, used by the driver (``vlm run``), by the KFP pipeline compiled from a
config, and by ``vlm run status``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from operators.pytorchjob import EVAL
from vlm_core.config import STAGE_NAMES, ConfigError, RunConfig

STAGING = "staging"
StepKind = Literal["staging", "stage", "eval"]


@dataclass(frozen=True)
class Step:
    name: str  # "staging", a stage name, or "eval"
    kind: StepKind
    needs: tuple[str, ...]  # steps whose completion markers must exist before this one starts
    init_from: str | None = None  # training stages: the configured stage whose checkpoint they start from


def training_order(cfg: RunConfig) -> list[str]:
    """The configured stages, each after the stage it starts from (``init_from``)."""
    ordered: list[str] = []
    pending = [s for s in STAGE_NAMES if s in cfg.stages]
    while pending:
        ready = [s for s in pending if upstream_stage(cfg, s) in (None, *ordered)]
        if not ready:
            chain = ", ".join(f"{s} <- {upstream_stage(cfg, s)}" for s in pending)
            raise ConfigError(f"stages start from each other in a cycle ({chain}): fix stages.*.init_from")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered


def upstream_stage(cfg: RunConfig, stage: str) -> str | None:
    """The configured stage whose output ``stage`` starts from (None: a URL, or from scratch)."""
    init = cfg.stage(stage).init_from
    return init if init in cfg.stages else None


def eval_checkpoint(cfg: RunConfig) -> str:
    """The checkpoint eval scores: ``eval.checkpoint``, else the last trained stage's output."""
    if cfg.eval.checkpoint:
        return cfg.eval.checkpoint
    order = training_order(cfg)
    if not order:
        raise ConfigError("eval has no checkpoint: configure a stage or set eval.checkpoint")
    return cfg.stage_output(order[-1])


def plan(cfg: RunConfig) -> list[Step]:
    steps = [Step(STAGING, "staging", ())]
    for stage in training_order(cfg):
        upstream = upstream_stage(cfg, stage)
        steps.append(Step(stage, "stage", (STAGING,) if upstream is None else (STAGING, upstream), upstream))
    if cfg.eval.benchmarks:
        stages = [s.name for s in steps if s.kind == "stage"]
        steps.append(Step(EVAL, "eval", tuple(stages[-1:]) if not cfg.eval.checkpoint else ()))
    return steps
