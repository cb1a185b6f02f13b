"""Completion markers: one small JSON file that says a step of a run finished.

A step's output folder (``<output>/data`` for staging, ``<output>/<stage>`` for a training
stage, ``<output>/eval`` for eval) holds ``_COMPLETE.json`` only once everything the step
produces is in place: it is written last and atomically (``storage.write_text_atomic``), so a
reader finds either no marker or a complete step. The orchestrator skips a step whose marker is
there and never starts a step before the markers of its inputs exist (docs/ARCHITECTURE.md,
"Orchestrator").

A marker records the fingerprint of the configuration that produced it: a marker from another
configuration is not "complete" for this one, and the orchestrator says so rather than reuse it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from vlm_core import storage
from vlm_core.config import RunConfig

MARKER = "_COMPLETE.json"


def marker_url(folder: str) -> str:
    return storage.join(folder, MARKER)


def now() -> str:
    """UTC time in ISO 8601 with seconds, the timestamp of every marker and transition."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def write_marker(folder: str, step: str, fingerprint: str, **info: Any) -> dict[str, Any]:
    """Mark ``folder`` as the complete output of ``step`` (atomic: last thing the step does)."""
    record = {"step": step, "fingerprint": fingerprint, "finished_at": now(), **info}
    storage.write_text_atomic(marker_url(folder), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def read_marker(folder: str) -> dict[str, Any] | None:
    """The marker of ``folder``, or None when the step has not completed there."""
    try:
        return json.loads(storage.read_text(marker_url(folder)))
    except FileNotFoundError:
        return None


def fingerprint(value: Any) -> str:
    """sha256 of a JSON-able value (sorted keys), shortened: enough to tell configs apart."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    """What decides a training stage's result, as far as its config says: the stage section and
    the model section. ``init_from`` is left out: the same upstream stage may be named by its
    stage name or by its checkpoint URL (a KFP artifact), which is one input spelled two ways."""
    section = cfg.stage(stage).model_dump(mode="json", exclude={"init_from"})
    return fingerprint({"stage": section, "model": cfg.model.model_dump(mode="json")})
