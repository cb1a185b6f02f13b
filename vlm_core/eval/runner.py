"""`run_eval`: answer and score benchmarks with a checkpoint; torchrun-aware and resumable.

Outputs under the eval output URL (``cfg.eval_output()`` with a run config):
``answers/<bench>.jsonl``, ``results.json``, ``results.md``, ``submissions/`` (test splits), and
TensorBoard scalars under ``<output>/tensorboard/eval`` (``cfg.tensorboard_dir("eval")``).
Each benchmark's entry in ``results.json`` carries its ``protocol``: task and split, prompt id,
scorer name and version, decoding settings, and the sha256 of the question / annotation files,
so a score can be reproduced (and compared: ``vlm eval compare``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlm_core import storage
from vlm_core.config import BenchmarkSpec, RunConfig
from vlm_core.eval import distributed
from vlm_core.eval.answers import AnswerStore
from vlm_core.eval.benchmarks import BENCHMARKS, EvalSet
from vlm_core.eval.generate import AnswerRecord, decoding_settings, generate_answers
from vlm_core.eval.report import results_markdown, write_tensorboard

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    checkpoint: str
    benchmarks: list[str]
    output: str
    tensorboard: str
    data: dict[str, BenchmarkSpec] = field(default_factory=dict)
    synth_root: str | None = None  # where `vlm synth OUT` wrote its files (for synth_* defaults)
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 16

    @classmethod
    def from_config(cls, cfg: RunConfig, **overrides: Any) -> EvalSettings:
        """Settings from a run config's ``eval`` section, plus where results go (``output``,
        ``tensorboard``) and ``synth_root`` when given (not None)."""
        ev = cfg.eval
        values: dict[str, Any] = {
            "checkpoint": ev.checkpoint or cfg.stage_output(cfg.last_stage()),
            "benchmarks": list(ev.benchmarks),
            "output": cfg.eval_output(),
            "tensorboard": cfg.tensorboard_dir("eval"),
            "data": dict(ev.data),
            "limit": ev.limit,
            "batch_size": ev.batch_size,
            "max_new_tokens": ev.max_new_tokens,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def spec(self, name: str) -> BenchmarkSpec:
        if name in self.data:
            return self.data[name]
        default = BENCHMARKS.get(name).default_spec(self.synth_root) if self.synth_root else None
        if default is None:
            hint = " or pass the synthetic data folder (--synth-root)" if name.startswith("synth_") else ""
            raise ValueError(f"benchmark {name!r}: no file locations; set eval.data.{name}{hint}")
        return default


def answer_benchmark(
    model: Any, processor: Any, name: str, eval_set: EvalSet, answers_dir: str, batch_size: int, max_new_tokens: int
) -> list[AnswerRecord]:
    """Every request's answer, in request order. Each rank answers a strided shard of what is
    not answered yet; the shards are gathered, so nothing is lost or duplicated."""
    rank, world = distributed.world()
    store = AnswerStore(answers_dir, name)
    done = store.done()
    pending = [r for r in eval_set.requests if r.question_id not in done]
    if rank == 0 and done:
        log.info("%s: %d answers found, %d to generate", name, len(eval_set.requests) - len(pending), len(pending))
    new = generate_answers(
        model,
        processor,
        pending[rank::world],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        on_batch=lambda records: store.append(rank, records),
        progress=rank == 0,
    )
    for shard in distributed.all_gather(new):
        done.update({r["question_id"]: r for r in shard})
    records = [done[r.question_id] for r in eval_set.requests]
    distributed.barrier()  # every rank has read the parts before rank 0 removes them
    if rank == 0:
        store.finalize(records)
    distributed.barrier()
    return records


def evaluate(model: Any, processor: Any, settings: EvalSettings) -> dict[str, dict]:
    """Answer and score ``settings.benchmarks``; rank 0 writes the outputs. Returns the results
    on every rank."""
    rank, _ = distributed.world()
    answers_dir = storage.join(settings.output, "answers")
    results: dict[str, dict] = {}
    for name in settings.benchmarks:
        spec = settings.spec(name)
        eval_set = BENCHMARKS.get(name).load(spec, settings.limit)
        records = answer_benchmark(
            model, processor, name, eval_set, answers_dir, settings.batch_size, settings.max_new_tokens
        )
        if rank == 0:
            results[name] = _score(name, eval_set, records, settings.output)
            results[name]["protocol"] = {
                **eval_set.protocol,
                "limit": settings.limit,
                "decoding": decoding_settings(processor, settings.max_new_tokens),
                "files": file_checksums(spec),
            }
    if rank == 0:
        storage.write_text_atomic(storage.join(settings.output, "results.json"), json.dumps(results, indent=2) + "\n")
        storage.write_text_atomic(storage.join(settings.output, "results.md"), results_markdown(results))
        write_tensorboard(settings.tensorboard, results)
    return distributed.broadcast(results)


def file_checksums(spec: BenchmarkSpec) -> dict[str, dict[str, str]]:
    """``{"questions": {"url", "sha256"}, ...}`` of the files a benchmark read (not the images)."""
    out = {}
    for key in ("questions", "annotations"):
        url = getattr(spec, key)
        if url:
            digest = hashlib.sha256()
            with storage.open_url(url, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[key] = {"url": url, "sha256": digest.hexdigest()}
    return out


def _score(name: str, eval_set: EvalSet, records: Sequence[AnswerRecord], output: str) -> dict:
    answers = {r["question_id"]: r["answer"] for r in records if not r.get("error")}
    failed = {r["question_id"]: r["error"] for r in records if r.get("error")}
    if eval_set.score is not None:
        return {"benchmark": name, **eval_set.score(answers, failed)}
    file_name, data = eval_set.submission(answers)
    url = storage.join(output, "submissions", file_name)
    storage.write_bytes_atomic(url, data)
    return {
        "benchmark": name,
        "submission": url,
        "num_questions": len(records),
        "failed": [{"question_id": q, "error": e} for q, e in failed.items()],
    }


def run_eval(
    cfg: RunConfig | str | None = None,
    *,
    checkpoint: str | None = None,
    benchmarks: Sequence[str] | str | None = None,
    output: str | None = None,
    data: Mapping[str, BenchmarkSpec | dict] | None = None,
    synth_root: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, dict]:
    """Evaluate a checkpoint; the entry point of `vlm eval run` and of the KFP eval component.

    With ``cfg`` (a RunConfig or its URL) the defaults come from its ``eval`` section and output
    locations; keyword arguments override them. Without, ``checkpoint`` and ``output`` are needed.
    """
    from vlm_core.config import load_config

    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.split(",") if b]
    specs = {k: v if isinstance(v, BenchmarkSpec) else BenchmarkSpec(**v) for k, v in (data or {}).items()}
    overrides = {
        "checkpoint": checkpoint,
        "benchmarks": list(benchmarks) if benchmarks else None,
        "synth_root": synth_root,
        "limit": limit,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
    }
    if output is not None:
        overrides.update(output=output, tensorboard=storage.join(output, "tensorboard", "eval"))
    if cfg is not None:
        cfg = load_config(cfg) if isinstance(cfg, str) else cfg
        # What the run config says goes through its one override path (validated, errors name the
        # key); where results go and the synthetic data's folder are not run-config values.
        in_config = {"checkpoint", "benchmarks", "limit", "batch_size", "max_new_tokens"}
        cfg = cfg.with_overrides(
            {f"eval.{k}": v for k, v in overrides.items() if k in in_config and v is not None}, source="eval options"
        )
        settings = EvalSettings.from_config(cfg, **{k: v for k, v in overrides.items() if k not in in_config})
        settings.data.update(specs)
    else:
        if checkpoint is None or output is None:
            raise ValueError("run_eval needs a run config, or both checkpoint and output")
        settings = EvalSettings(data=specs, **{k: v for k, v in overrides.items() if v is not None})
    if not settings.benchmarks:
        raise ValueError(f"no benchmarks to run; known: {', '.join(BENCHMARKS.names())}")
    for name in settings.benchmarks:
        BENCHMARKS.get(name)  # unknown names fail before the model loads

    from vlm_core.models.checkpoint import load_checkpoint

    model, processor = load_checkpoint(settings.checkpoint)
    model.to(distributed.device()).eval()
    return evaluate(model, processor, settings)
