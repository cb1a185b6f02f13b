"""Human-facing outputs of an eval: the results.md table and TensorBoard scalars."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping

from vlm_core import storage

MAX_BREAKDOWN = 6


def results_markdown(results: Mapping[str, dict]) -> str:
    lines = [
        "| benchmark | accuracy (%) | questions | failed | details |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        accuracy = f"{r['accuracy']:.2f}" if "accuracy" in r else "submission"
        details = []
        # breakdowns short enough for a table cell: VQAv2's answer types, the synthetic set's question types
        for key in ("per_answer_type", "per_question_type"):
            parts = r.get(key) or {}
            if 1 < len(parts) <= MAX_BREAKDOWN:
                details.append(", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items())))
        if "vanilla_accuracy" in r:
            details.append(f"vanilla {r['vanilla_accuracy']:.2f}")
        if "unanswerable" in r:
            details.append(f"unanswerable {r['unanswerable']:.2f}")
        if r.get("unmatched"):
            details.append(f"{len(r['unmatched'])} unmatched answers")
        if "submission" in r:
            details.append(f"`{r['submission']}`")
        lines.append(f"| {name} | {accuracy} | {r.get('num_questions', '')} | {len(r.get('failed', []))} | {'; '.join(details)} |")
    return "\n".join(lines) + "\n"


def scalars(results: Mapping[str, dict]) -> Iterator[tuple[str, float]]:
    """(tag, value) for every number in the results, one level of breakdown deep:
    ``synth_vqa/accuracy``, ``synth_vqa/per_question_type/colour``, ``mmbench/per_category/x/circular``."""
    for bench, r in results.items():
        for key, value in r.items():
            if key == "protocol":  # how the score was made, not a measurement
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"{bench}/{key}", float(value)
            elif isinstance(value, Mapping):
                for group, v in value.items():
                    if isinstance(v, (int, float)):
                        yield f"{bench}/{key}/{group}", float(v)
                    elif isinstance(v, Mapping):
                        for sub, x in v.items():
                            yield f"{bench}/{key}/{group}/{sub}", float(x)


def write_tensorboard(log_dir: str, results: Mapping[str, dict], step: int = 0) -> None:
    """Write the scalars as an event file under ``log_dir`` (any fsspec URL: written locally,
    then copied, so object stores need no TensorBoard-specific credentials)."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="vlm-tb-") as tmp:
        writer = SummaryWriter(log_dir=tmp)
        for tag, value in scalars(results):
            writer.add_scalar(tag, value, step)
        writer.close()
        storage.upload_dir(tmp, log_dir)
