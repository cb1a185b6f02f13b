"""Plain-text views of staged datasets: the per-source staging report and ``vlm data inspect``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlm_core.data.shards import Manifest, ShardSource

REASON_LABELS = {
    "missing_image": "missing image",
    "corrupt_image": "undecodable image",
    "no_answer": "no answer",
    "no_assistant_turn": "no assistant turn",
    "too_long": "over length",
    "duplicate_id": "duplicate id",
    "malformed": "malformed",
    "image_count_mismatch": "image count mismatch",
}


def table(rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to their widest cell; a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(rows[0]), line(["-" * w for w in widths]), *(line(r) for r in rows[1:])])


def staging_report(manifests: Mapping[str, Manifest]) -> str:
    """One row per source (rows held, selected, written, skipped by reason), then the ids of the
    first skipped samples per reason."""
    reasons = sorted({r for m in manifests.values() for r in m.skipped_samples})
    header = ["dataset", "format", "rows", "selected", "written", *(REASON_LABELS.get(r, r) for r in reasons)]
    rows = [header]
    for name, m in manifests.items():
        rows.append([name, m.source.format, str(m.rows_total), str(m.rows_selected), str(m.total_samples),
                     *(str(m.skipped_samples.get(r, 0)) for r in reasons)])
    out = [table(rows, right=set(range(2, len(header))))]
    for name, m in manifests.items():
        for reason, ids in m.skipped_ids.items():
            more = m.skipped_samples[reason] - len(ids)
            out.append(f"{name}: {REASON_LABELS.get(reason, reason)}: {', '.join(ids)}" + (f" (+{more} more)" if more > 0 else ""))
    return "\n".join(out)


def histogram(values: list[int], width: int = 40) -> str:
    """A text histogram of ``values`` in power-of-two buckets (0, 1, 2-3, 4-7, ...)."""
    if not values:
        return "(no samples)"
    counts: dict[int, int] = {}
    for v in values:
        counts[max(v, 0).bit_length()] = counts.get(max(v, 0).bit_length(), 0) + 1
    top = max(counts.values())
    rows = []
    for bucket in range(min(counts), max(counts) + 1):
        low, high = (0, 0) if bucket == 0 else (2 ** (bucket - 1), 2**bucket - 1)
        n = counts.get(bucket, 0)
        rows.append(f"{f'{low}-{high}':>12} {n:>8} {'#' * round(width * n / top)}")
    return "\n".join(rows)


def inspect_text(url: str, samples: int = 3) -> str:
    """Counts, the length histogram (from the length index) and the first samples, decoded."""
    from vlm_core.data.images import load_image

    source = ShardSource(url)
    m = source.manifest
    lengths = source.lengths()
    text_tokens = [int(t) for t, _ in lengths.tolist()]
    with_images = sum(1 for _, n in lengths.tolist() if n > 0)
    lines = [
        f"{source.url}: {m.total_samples} samples in {len(m.shards)} shards ({sum(s.bytes for s in m.shards):,} bytes)",
        f"source: {m.source.format} {m.source.url}; rows {m.rows_total}, selected {m.rows_selected}, "
        f"skipped {sum(m.skipped_samples.values())}" + (f" ({', '.join(f'{REASON_LABELS.get(r, r)} {n}' for r, n in m.skipped_samples.items())})" if m.skipped_samples else ""),
        f"with images: {with_images}, text-only: {m.total_samples - with_images}",
        "text-token proxy (words) per sample:",
        histogram(text_tokens),
    ]
    shown = 0
    for shard in m.shards:
        for sample in source.read(shard):
            if shown == samples:
                break
            sizes = [f"{img.size[0]}x{img.size[1]}" for img in (load_image(ref) for ref in sample.images)]
            lines.append(f"-- {sample.id} images: {', '.join(sizes) or 'none'}")
            lines += [f"   {turn['from']}: {_short(turn['value'])}" for turn in sample.conversations]
            shown += 1
        if shown == samples:
            break
    return "\n".join(lines)


def _short(text: Any, limit: int = 160) -> str:
    text = str(text).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
