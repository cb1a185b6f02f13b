"""The status document of a run (``<output>/status.json``) and its transition log.

The orchestrator rewrites the document (atomically) at every transition of a step, and prints
one timestamped line per transition. It lives in the run's output, so ``vlm run status`` reads
it the same way for a local run and for a cluster run (the ``helm test`` pod runs that command).
A restarted run continues the document of the run before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from operators.orchestrator.plan import Step
from vlm_core import storage
from vlm_core.completion import now
from vlm_core.config import RunConfig

STATUS_FILE = "status.json"
StepState = Literal["pending", "running", "succeeded", "skipped", "failed", "interrupted"]
RunState = Literal["running", "succeeded", "failed", "interrupted"]
DONE: tuple[str, ...] = ("succeeded", "skipped")


class StepRecord(BaseModel):
    name: str
    kind: str
    state: StepState = "pending"
    started: str | None = None
    finished: str | None = None
    job: str | None = Field(None, description="The step's PyTorchJob.")
    checkpoint: str | None = Field(None, description="A training stage's final checkpoint URL.")
    scores: dict[str, float] = Field(default_factory=dict, description="Eval: <benchmark>/<metric> numbers.")
    detail: str | None = Field(None, description="Why it was skipped or failed; what it produced.")


class RunStatus(BaseModel):
    run: str
    output: str
    backend: str
    state: RunState = "running"
    started: str
    updated: str
    reason: str | None = None
    steps: list[StepRecord]
    results: str | None = Field(None, description="The eval table (results.md) once eval has finished.")

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    @property
    def complete(self) -> bool:
        return self.state == "succeeded" and all(s.state in DONE for s in self.steps)


def status_url(cfg: RunConfig) -> str:
    return storage.join(cfg.output, STATUS_FILE)


def read_status(cfg: RunConfig) -> RunStatus | None:
    try:
        return RunStatus.model_validate_json(storage.read_text(status_url(cfg)))
    except FileNotFoundError:
        return None


class Tracker:
    """Records the transitions of a run's steps in its status document and in the log."""

    def __init__(self, cfg: RunConfig, backend: str, steps: list[Step], log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log
        previous = read_status(cfg)
        records = {s.name: s for s in previous.steps} if previous else {}
        stamp = now()
        self.doc = RunStatus(
            run=cfg.name,
            output=cfg.output,
            backend=backend,
            started=previous.started if previous else stamp,
            updated=stamp,
            steps=[records.get(s.name) or StepRecord(name=s.name, kind=s.kind) for s in steps],
            results=previous.results if previous else None,
        )
        self._save()

    def _save(self) -> None:
        self.doc.updated = now()
        storage.write_text_atomic(status_url(self.cfg), self.doc.model_dump_json(indent=2) + "\n")

    def transition(self, name: str, state: StepState, **details: Any) -> None:
        record = self.doc.step(name)
        before = record.state
        stamp = now()
        if state == "running":
            record.started, record.finished = stamp, None
        elif state != "pending":
            record.finished = stamp
        record.state = state
        for key, value in details.items():
            setattr(record, key, value)
        self.doc.state = "running" if state in ("running", *DONE) else self.doc.state
        self._save()
        extra = "".join(f" {k}={v}" for k, v in details.items() if v not in (None, {}, ""))
        self.log(f"{stamp} {self.cfg.name}/{name}: {before} -> {state}{extra}")

    def finish(self, state: RunState, reason: str | None = None, results: str | None = None) -> None:
        self.doc.state, self.doc.reason = state, reason
        if results is not None:
            self.doc.results = results
        self._save()
        self.log(f"{now()} {self.cfg.name}: run {state}" + (f": {reason}" if reason else ""))


def status_table(doc: RunStatus) -> str:
    """The document as text: one line per step, then the eval table when there is one."""
    lines = [f"run {doc.run} ({doc.backend}): {doc.state}" + (f": {doc.reason}" if doc.reason else "")]
    lines.append(f"output {doc.output}; started {doc.started}; updated {doc.updated}")
    rows = [("step", "state", "started", "finished", "detail")]
    for s in doc.steps:
        parts = [s.job if s.state == "running" else None, s.checkpoint, s.detail]
        detail = " ".join(p for p in parts if p)
        if s.scores:
            detail = ", ".join(f"{k} {v:.2f}" for k, v in s.scores.items() if k.endswith("accuracy"))
        rows.append((s.name, s.state, s.started or "-", s.finished or "-", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    if doc.results:
        lines += ["", doc.results.rstrip("\n")]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def status_json(doc: RunStatus) -> str:
    return json.dumps(doc.model_dump(mode="json"), indent=2) + "\n"
