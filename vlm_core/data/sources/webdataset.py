"""Caption corpora downloaded by img2dataset in its ``webdataset`` output format (how CC3M, SBU
and LAION subsets are fetched), as alignment samples with LLaVA's caption prompts.

Published layout (img2dataset's writer)::

    00000.tar       <key>.jpg, <key>.txt (caption), <key>.json (metadata with "status": "success")
    00000.parquet   one row per URL tried: key, url, caption, status ("success",
                    "failed_to_download", "failed_to_resize"), error_message, width, height, ...
    00000_stats.json

The tar holds only what downloaded; the parquet beside it lists every row, so the rows that
failed (dead links, ~15 % for CC3M) are counted and reported by key instead of vanishing.
Without a parquet, the tar's own ``.json`` statuses are used. Tars are streamed front to back
(one GET each); the source is not random-access.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import downsampled, register_reader
from vlm_core.data.sources.prompts import CAPTION_PROMPTS, human_gpt, pick
from vlm_core.data.types import BadSample, RawSample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class _Tar:
    url: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (key, status, error message), in row order
    first_row: int = 0  # global index of rows[0]


class WebDatasetSource:
    """The tars of an img2dataset output folder. ``len`` counts the rows kept (downsampling is
    over rows, failed ones included, so the report shows the failures among them)."""

    def __init__(self, spec: DatasetSpec) -> None:
        fs, path = storage.filesystem(spec.url)
        protocol = storage.protocol(spec.url)
        names = sorted(fs.glob(f"{path.rstrip('/')}/*.tar"))
        if not names:
            raise FileNotFoundError(f"{spec.url}: no *.tar shards (img2dataset --output_format webdataset)")
        self.url, self.seed = spec.url, spec.seed
        self.tars = [_Tar(n if protocol == "file" else f"{protocol}://{n}") for n in names]
        total = 0
        for tar in self.tars:
            tar.first_row = total
            tar.rows = self._rows_of(tar.url)
            total += len(tar.rows)
        self._total = total
        kept = downsampled(total, spec)
        self.kept = None if kept is None else set(kept)

    @staticmethod
    def _rows_of(tar_url: str) -> list[tuple[str, str, str]]:
        parquet = tar_url[: -len(".tar")] + ".parquet"
        if storage.exists(parquet):
            import pyarrow.parquet as pq

            with storage.open_url(parquet, "rb") as f:
                table = pq.read_table(f, columns=[c for c in ("key", "status", "error_message") if c in pq.read_schema(f).names])
            columns = table.to_pydict()
            errors = columns.get("error_message") or [None] * table.num_rows
            return [(str(k), str(s), str(e or "")) for k, s, e in zip(columns["key"], columns["status"], errors)]
        # No parquet: one pass over the tar's metadata members.
        return [(key, str(meta.get("status", "success")), str(meta.get("error_message") or "")) for key, meta, _ in _members(tar_url, images=False)]

    def __len__(self) -> int:
        return self._total if self.kept is None else len(self.kept)

    @property
    def rows_total(self) -> int:
        return self._total

    def __repr__(self) -> str:
        return f"WebDatasetSource({self.url!r}, {len(self)} rows in {len(self.tars)} tars)"

    def _keeps(self, row: int) -> bool:
        return self.kept is None or row in self.kept

    def rows(self, tars: list[_Tar] | None = None) -> Iterator[RawSample | BadSample]:
        """Downloaded samples of each tar in order, then that tar's failed rows as BadSamples."""
        for tar in self.tars if tars is None else tars:
            index = {key: tar.first_row + i for i, (key, _, _) in enumerate(tar.rows)}
            failed = [(key, status, error) for key, status, error in tar.rows if status != "success"]
            for key, meta, members in _members(tar.url, images=True):
                row = index.get(key)
                if row is None or not self._keeps(row) or meta.get("status", "success") != "success":
                    continue  # not selected, or a failed row (reported below, from the row list)
                yield self._sample(key, meta, members)
            for key, status, error in failed:
                if self._keeps(index[key]):
                    yield BadSample("missing_image", f"{status}: {error}".rstrip(": "), sample_id=key, dataset=self.url)

    def _sample(self, key: str, meta: dict[str, Any], members: dict[str, bytes]) -> RawSample | BadSample:
        image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
        if image is None:
            return BadSample("missing_image", "no image member", sample_id=key, dataset=self.url)
        caption = members.get("txt", b"").decode("utf-8", "replace").strip()
        if not caption:
            return BadSample("no_answer", "empty caption", sample_id=key, dataset=self.url)
        question = pick(CAPTION_PROMPTS, self.seed, key)
        return RawSample(id=key, images=[image], conversations=human_gpt(question, caption), meta={"url": meta.get("url")})

    def stream_blocks(self) -> list[tuple[str, int]]:
        """One block per tar: its kept rows (failed ones included: they are dropped when read)."""
        return [(tar.url, sum(1 for i in range(len(tar.rows)) if self._keeps(tar.first_row + i))) for tar in self.tars]

    def read_block(self, block: int, positions) -> dict[int, RawSample]:
        return {i: row for i, row in enumerate(self.rows([self.tars[block]])) if i in positions and isinstance(row, RawSample)}

    def iter_samples(
        self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1, epoch: int = 0, seed: int = 0, shuffle: bool = True
    ) -> Iterator[RawSample]:
        """This consumer's tars of one epoch (each tar read by exactly one consumer); bad rows are left out."""
        order = list(self.tars)
        if shuffle:
            random.Random(f"{seed}:{epoch}").shuffle(order)
        mine = order[rank * num_workers + worker :: world_size * num_workers]
        for sample in self.rows(mine):
            if isinstance(sample, RawSample):
                yield sample


def _members(tar_url: str, images: bool) -> Iterator[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """(key, metadata, {extension: bytes}) per sample of a tar, streamed in order."""
    import json

    key: str | None = None
    members: dict[str, bytes] = {}

    def done() -> tuple[str, dict[str, Any], dict[str, bytes]]:
        try:
            meta = json.loads(members.get("json", b"{}"))
        except ValueError:
            meta = {"status": "failed_to_read_metadata"}
        return key, meta if isinstance(meta, dict) else {}, members

    with storage.open_url(tar_url, "rb") as f, tarfile.open(fileobj=io.BufferedReader(f, 1 << 20), mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            member_key, _, ext = name.partition(".")
            if member_key != key:
                if key is not None:
                    yield done()
                key, members = member_key, {}
            if images or ext in ("json", "txt"):
                members[ext.lower()] = tar.extractfile(member).read()
        if key is not None:
            yield done()


register_reader("webdataset", WebDatasetSource)
