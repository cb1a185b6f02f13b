"""The answers store of one benchmark: ``answers/<bench>.jsonl``, resumable across crashes.

While generating, each rank appends every finished batch to its own part file
``answers/<bench>.rank<r>.jsonl`` (no two writers share a file); at the end rank 0 writes the
merged file, in question order, and removes the parts. A rerun treats every answer found in the
merged file or any part file as done, whatever world size wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from vlm_core import storage
from vlm_core.eval.generate import AnswerRecord


class AnswerStore:
    def __init__(self, answers_dir: str, benchmark: str) -> None:
        self.dir = answers_dir
        self.benchmark = benchmark
        self.url = storage.join(answers_dir, f"{benchmark}.jsonl")

    def part_url(self, rank: int) -> str:
        return storage.join(self.dir, f"{self.benchmark}.rank{rank}.jsonl")

    def _part_urls(self) -> list[str]:
        fs, path = storage.filesystem(self.dir)
        if not fs.exists(path):
            return []
        found = fs.glob(f"{path.rstrip('/')}/{self.benchmark}.rank*.jsonl")
        return [storage.join(self.dir, p.rsplit("/", 1)[-1]) for p in sorted(found)]

    def done(self) -> dict[str, AnswerRecord]:
        """Answers already written (merged file first, then parts), by question id."""
        out: dict[str, AnswerRecord] = {}
        for url in [self.url, *self._part_urls()]:
            if not storage.exists(url):
                continue
            for line in storage.read_text(url).splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that question is asked again
                out.setdefault(str(record["question_id"]), record)
        return out

    def append(self, rank: int, records: Iterable[AnswerRecord]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with storage.open_url(self.part_url(rank), "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    def finalize(self, records: list[AnswerRecord]) -> None:
        """Write the merged file and drop the parts (rank 0 only)."""
        storage.write_text_atomic(self.url, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for url in self._part_urls():
            fs, path = storage.filesystem(url)
            fs.rm(path)
