"""`vlm eval compare`: a run's scores next to published ones, with every protocol difference named.

The published numbers and their protocols are data (``published.yaml``); a run's protocol is
what ``results.json`` recorded per benchmark (task, split, prompt, scorer, decoding, limit).
A difference is flagged, never silently ignored: a VQAv2 val score next to a test-dev one is
shown with "split: val here, test-dev published".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class PublishedScore:
    task: str
    score: float
    split: str | None
    prompt: str | None
    scorer: str | None
    scored_by: str | None = None


@dataclass(frozen=True)
class PublishedModel:
    key: str
    model: str
    source: str
    decoding: str | None
    scores: dict[str, PublishedScore]


def load_published(path: Path = PUBLISHED_FILE) -> dict[str, PublishedModel]:
    data = yaml.safe_load(path.read_text())
    return {
        key: PublishedModel(
            key=key,
            model=entry["model"],
            source=entry["source"],
            decoding=entry.get("decoding"),
            scores={task: PublishedScore(task=task, **score) for task, score in entry["scores"].items()},
        )
        for key, entry in data.items()
    }


@dataclass
class Row:
    task: str
    published: PublishedScore
    benchmark: str | None = None  # this run's benchmark for the task
    ours: float | None = None
    differences: list[str] = field(default_factory=list)

    @property
    def delta(self) -> float | None:
        return None if self.ours is None else round(self.ours - self.published.score, 2)


def _differences(
    protocol: Mapping | None, published: PublishedScore, decoding: str | None, scored_here: bool
) -> list[str]:
    if not protocol:
        return ["results.json records no protocol (prompt, scorer and decoding unknown)"]
    out = []
    if published.split is None and published.prompt is None and published.scorer is None:
        out.append("published protocol not stated")
    ours_decoding = (protocol.get("decoding") or {}).get("strategy")
    checks = [
        ("split", protocol.get("split"), published.split),
        ("prompt", (protocol.get("prompt") or {}).get("id"), published.prompt),
        ("scorer", (protocol.get("scorer") or {}).get("name"), published.scorer),
        ("decoding", ours_decoding, decoding),
    ]
    for name, ours, theirs in checks:
        if theirs is not None and ours != theirs:
            out.append(f"{name}: {ours} here, {theirs} published")
    if published.scored_by and scored_here:
        out.append(f"published scored by {published.scored_by}; here locally")
    if protocol.get("limit"):
        out.append(f"only the first {protocol['limit']} questions here")
    return out


def compare(results: Mapping[str, dict], against: PublishedModel) -> tuple[list[Row], list[str]]:
    """One row per published task (with this run's score where it has one), and the run's
    benchmarks that have no published counterpart."""
    from vlm_core.eval.benchmarks import BENCHMARKS

    by_task: dict[str, tuple[str, dict]] = {}
    for name, result in results.items():
        protocol = result.get("protocol")
        task = protocol.get("task") if protocol else (BENCHMARKS.get(name).task if name in BENCHMARKS else name)
        # a scored split wins over a submission-only one for the same task
        if task not in by_task or "accuracy" in result:
            by_task[task] = (name, result)
    rows = []
    for task, published in against.scores.items():
        row = Row(task, published)
        if task in by_task:
            name, result = by_task[task]
            row.benchmark, row.ours = name, result.get("accuracy")
            row.differences = _differences(result.get("protocol"), published, against.decoding, row.ours is not None)
            if row.ours is None:
                row.differences.insert(0, f"submission only ({result.get('submission', '')}): scored by the evaluation server")
        rows.append(row)
    unmatched = sorted(name for task, (name, _) in by_task.items() if task not in against.scores)
    return rows, unmatched


def compare_markdown(rows: list[Row], unmatched: list[str], against: PublishedModel) -> str:
    def number(x: float | None, signed: bool = False) -> str:
        return "" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}")

    lines = [
        f"Published: {against.model}. Source: {against.source}.",
        "",
        "| task | this run | published | difference | benchmark | protocol differences |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        differences = "; ".join(r.differences) if r.benchmark else "not run"
        lines.append(
            f"| {r.task} | {number(r.ours)} | {r.published.score:.2f} | {number(r.delta, signed=True)} "
            f"| {r.benchmark or ''} | {differences} |"
        )
    if unmatched:
        lines += ["", f"Not in the published table: {', '.join(unmatched)}."]
    return "\n".join(lines) + "\n"
