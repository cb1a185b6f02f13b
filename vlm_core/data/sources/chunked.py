"""Sources whose samples are runs of items inside one JSON record (a Visual Genome image's
regions, an OCR-VQA book's questions): indexed once by the record's byte offset, re-read by
offset on access, so the annotation file is never held in memory."""

from __future__ import annotations

from array import array
from typing import Any

from vlm_core.data.readers import Source, _PerProcessFile
from vlm_core.data.sources.jsonscan import read_record


class ChunkedRecordSource(Source):
    """Per sample: its record's byte offset, its first item and a length proxy (for the
    modality/length-grouped sampler); ``rows_total`` counts every item seen, kept or not."""

    def __init__(self, url: str) -> None:
        self.offsets, self.starts, self._lengths = array("q"), array("q"), array("q")
        self._rows = 0
        self._file = _PerProcessFile(url)

    def _add_sample(self, offset: int, start: int, length: int) -> None:
        self.offsets.append(offset)
        self.starts.append(start)
        self._lengths.append(length)

    def _record(self, index: int) -> tuple[Any, int]:
        """The record sample ``index`` lives in, and its first item."""
        return read_record(self._file.get(), self.offsets[index]), self.starts[index]

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def rows_total(self) -> int:
        return self._rows

    def modality_lengths(self) -> list[int]:
        return list(self._lengths)
