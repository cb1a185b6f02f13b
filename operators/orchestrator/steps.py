"""What each step of a run does: the one definition the driver (``vlm run``) and the KFP
components both call.

Every step is restart-safe in the same three ways:

- *skip what is complete*: a step whose output carries its completion marker
  (``vlm_core/completion.py``) for this configuration is recorded as skipped; a marker written
  for another configuration stops the run (reusing it would be wrong, overwriting it loses work);
- *never start before the inputs are complete*: the markers of the steps it needs must exist;
- *adopt what exists*: a step's PyTorchJob is looked up by name on the cluster (running: watched;
  Succeeded: taken; Failed: the run stops with its reason); the local backend stops what a killed
  run left behind and the trainer resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from operators.orchestrator.plan import STAGING, eval_checkpoint
from operators.orchestrator.status import Tracker
from operators.pytorchjob import EVAL, JobBackend, job_backend, job_name, render_job
from operators.staging import datasets_to_stage, stage_config, staged_url
from vlm_core import storage
from vlm_core.completion import fingerprint, read_marker, stage_fingerprint, write_marker
from vlm_core.config import RunConfig


class StepFailed(RuntimeError):
    """A step cannot run or did not succeed; ``str()`` is one line that says why."""


@dataclass
class RunContext:
    """What every step of one run shares: the tracker, the job backend, the log."""

    tracker: Tracker
    backend: str
    log: Callable[[str], None] = print
    backend_options: dict[str, Any] = field(default_factory=dict)

    def jobs(self, cfg: RunConfig) -> JobBackend:
        return job_backend(self.backend, **{**backend_options(cfg, self.backend, self.log), **self.backend_options})


def local_root(cfg: RunConfig) -> str:
    """A local folder for a run's bookkeeping: its output when local, else ./runs/<name>."""
    return storage.local_path(cfg.output) if storage.is_local(cfg.output) else os.path.join("runs", cfg.name)


def backend_options(cfg: RunConfig, backend: str, log: Callable[[str], None]) -> dict[str, Any]:
    """What each job backend needs to know about this run."""
    if backend == "local":
        return {"workdir": os.path.join(local_root(cfg), "jobs"), "log": log}
    return {"namespace": cfg.cluster.namespace, "log": log}


# ----------------------------------------------------------------------------- staging


def staging_dir(cfg: RunConfig) -> str:
    """Where staging puts every dataset (``staging.staged_url``) and its completion marker."""
    return storage.parent(staged_url(cfg, "_"))


def _staging_fingerprint(cfg: RunConfig) -> str:
    return fingerprint({"data": cfg.data.model_dump(mode="json"), "staged": datasets_to_stage(cfg)})


def synthesize(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """Write the synthetic dataset where ``data.synthesize`` says, unless one is there."""
    folder = cfg.data.synthesize
    if folder is None or storage.exists(storage.join(folder, "synth.json")):
        return
    from vlm_core.data.synth import generate

    log(f"data.synthesize: writing the synthetic dataset to {folder}")
    generate(folder)


def run_staging(ctx: RunContext, cfg: RunConfig) -> RunConfig:
    """Synthesize (when asked), then stage the datasets; returns the config that reads them."""
    marker = read_marker(staging_dir(cfg))
    if marker is not None and marker.get("fingerprint") == _staging_fingerprint(cfg):
        ctx.tracker.transition(STAGING, "skipped", detail=f"complete: {len(marker['datasets'])} dataset(s) staged")
        return _staged(cfg, marker["datasets"])
    ctx.tracker.transition(STAGING, "running")
    try:
        synthesize(cfg, ctx.log)
        staged, _ = stage_config(cfg)  # datasets staged before from unchanged sources are adopted
    except Exception as err:
        ctx.tracker.transition(STAGING, "failed", detail=_one_line(err))
        raise StepFailed(f"staging failed: {_one_line(err)}") from err
    datasets = {n: staged.data.datasets[n].model_dump(mode="json") for n in datasets_to_stage(cfg)}
    write_marker(staging_dir(cfg), STAGING, _staging_fingerprint(cfg), datasets=datasets)
    ctx.tracker.transition(STAGING, "succeeded", detail=f"{len(datasets)} dataset(s) staged")
    return staged


def _staged(cfg: RunConfig, datasets: dict[str, dict]) -> RunConfig:
    overrides = {f"data.datasets.{n}": spec for n, spec in datasets.items()}
    return cfg.with_overrides(overrides, source="staged config") if overrides else cfg


# ----------------------------------------------------------------------------- inputs


def require_staging(cfg: RunConfig, step: str) -> None:
    if read_marker(staging_dir(cfg)) is None:
        raise StepFailed(f"{step} cannot start: staging is not complete ({staging_dir(cfg)} has no completion marker)")


def require_checkpoint(cfg: RunConfig, step: str, url: str) -> None:
    """``url`` is complete: a configured stage's output with its marker, or any saved model."""
    stage = next((s for s in cfg.stages if cfg.stage_output(s) == url), None)
    if stage is not None:
        marker = read_marker(url)
        if marker is None or marker.get("fingerprint") != stage_fingerprint(cfg, stage):
            raise StepFailed(f"{step} cannot start: stage {stage} is not complete ({url} has no completion marker)")
    elif not storage.exists(storage.join(url, "config.json")):
        raise StepFailed(f"{step} cannot start: {url} holds no checkpoint (no config.json)")


def _run_job(ctx: RunContext, cfg: RunConfig, step: str, objects: list[dict[str, Any]]) -> None:
    outcome = ctx.jobs(cfg).run(objects)
    if not outcome.succeeded:
        ctx.tracker.transition(step, "failed", detail=outcome.describe())
        raise StepFailed(f"{step} failed: {outcome.describe()}")


# ----------------------------------------------------------------------------- training


def run_training_stage(ctx: RunContext, cfg: RunConfig, stage: str) -> str:
    """Train one stage as a PyTorchJob (after its inputs are complete); its checkpoint URL."""
    url, expected = cfg.stage_output(stage), stage_fingerprint(cfg, stage)
    marker = read_marker(url)
    if marker is not None:
        if marker.get("fingerprint") != expected:
            raise StepFailed(
                f"{stage}: {url} holds a stage trained with another stages.{stage} or model config (its "
                f"completion marker differs); give the run another output, or remove {url} to train it again"
            )
        ctx.tracker.transition(stage, "skipped", checkpoint=url, detail=f"complete at step {marker.get('global_step')}")
        return url
    require_staging(cfg, stage)
    init = cfg.resolve_init(stage)
    if init is not None:
        require_checkpoint(cfg, stage, init)
    ctx.tracker.transition(stage, "running", job=job_name(cfg, stage))
    _run_job(ctx, cfg, stage, render_job(cfg, stage))
    marker = read_marker(url)
    if marker is None or marker.get("fingerprint") != expected:
        ctx.tracker.transition(stage, "failed", detail="no completion marker")
        raise StepFailed(f"{stage}: the PyTorchJob succeeded but {url} has no completion marker of this config")
    ctx.tracker.transition(stage, "succeeded", checkpoint=url, detail=f"step {marker.get('global_step')}")
    return url


# ----------------------------------------------------------------------------- eval


def _eval_fingerprint(cfg: RunConfig) -> str:
    return fingerprint(cfg.eval.model_dump(mode="json"))


def headline_metrics(results: dict[str, dict]) -> dict[str, float]:
    """``{"<benchmark>/<metric>": value}`` for the top-level numbers of each benchmark's result."""
    return {
        f"{bench}/{key}": float(value)
        for bench, result in results.items()
        for key, value in result.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def run_evaluation(ctx: RunContext, cfg: RunConfig, checkpoint: str | None = None) -> dict[str, float]:
    """Score ``checkpoint`` (default: ``eval_checkpoint(cfg)``) with eval's PyTorchJob; headline scores."""
    cfg = cfg.with_overrides({"eval.checkpoint": checkpoint or eval_checkpoint(cfg)}, source="eval checkpoint")
    output, expected = cfg.eval_output(), _eval_fingerprint(cfg)
    marker = read_marker(output)
    if marker is not None:
        if marker.get("fingerprint") != expected:
            raise StepFailed(
                f"eval: {output} holds results of another eval config or checkpoint; give the run another "
                f"output, or remove {output} to evaluate again"
            )
        ctx.tracker.transition(EVAL, "skipped", scores=marker["scores"], detail="complete")
        return marker["scores"]
    require_checkpoint(cfg, EVAL, cfg.eval.checkpoint)
    ctx.tracker.transition(EVAL, "running", job=job_name(cfg, EVAL))
    _run_job(ctx, cfg, EVAL, render_job(cfg, EVAL))
    try:
        results = json.loads(storage.read_text(storage.join(output, "results.json")))
    except FileNotFoundError:
        ctx.tracker.transition(EVAL, "failed", detail="no results.json")
        raise StepFailed(f"eval: the PyTorchJob succeeded but {output} has no results.json") from None
    scores = headline_metrics(results)
    write_marker(output, EVAL, expected, scores=scores, results=storage.join(output, "results.json"))
    ctx.tracker.transition(EVAL, "succeeded", scores=scores)
    return scores


def results_table(cfg: RunConfig) -> str | None:
    try:
        return storage.read_text(storage.join(cfg.eval_output(), "results.md"))
    except FileNotFoundError:
        return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__

