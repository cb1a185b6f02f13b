"""Streaming a big JSON file record by record, with the byte offset of each record.

A published annotation file is often one JSON array (LLaVA's 665k mix, Visual Genome's
``question_answers.json``) or one object keyed by id (OCR-VQA's ``dataset.json``) of hundreds of
megabytes. ``json.JSONDecoder.raw_decode`` (the standard library's C scanner) parses one record
at a time from a sliding window of text and says where it ends, so a file is read once, in
constant memory, and every record's byte offset is known: a reader keeps those offsets and later
reads record ``i`` with one seek (``read_record``). ijson streams too but reports no offsets.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO, Any

CHUNK = 1 << 20
RECORD_CHUNK = 4096  # first read of a record by offset; doubled until the record is complete
_DECODER = json.JSONDecoder()
_SPACE = " \t\r\n"


class _Window:
    """Text of a UTF-8 byte stream, consumed from the front, with byte offsets kept exact."""

    def __init__(self, stream: IO[bytes], start: int = 0, chunk: int = CHUNK) -> None:
        self.stream, self.chunk = stream, chunk
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0  # index into text
        self.offset = start  # byte offset of text[pos]
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        data = self.stream.read(self.chunk)
        self.chunk = min(self.chunk * 2, CHUNK)  # a record read by offset starts small and grows
        self.eof = not data
        self.text = self.text[self.pos :] + self.decoder.decode(data, final=self.eof)
        self.pos = 0
        return bool(data)

    def skip(self, chars: str) -> str:
        """Skip ``chars``; the next other character ('' at the end of the stream)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in chars:
                self.offset += 1  # whitespace and separators are ASCII: one byte each
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos : self.pos + 1]

    def value(self) -> Any:
        """Decode the JSON value that starts here, reading more text until it is complete."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                if not self.more():
                    raise
                continue
            if end == len(self.text) and not self.eof and not isinstance(value, (dict, list, str)):
                self.more()  # a number or literal at the window's edge may continue in the next chunk
                continue
            self.offset += len(self.text[self.pos : end].encode("utf-8"))
            self.pos = end
            return value

    def expect(self, char: str, where: str) -> None:
        found = self.skip(_SPACE)
        if found != char:
            raise ValueError(f"expected {char!r} {where} at byte {self.offset}, found {found or 'the end of the file'!r}")
        self.pos += 1
        self.offset += 1


def iter_array(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """``(byte offset, record)`` of each element of the top-level JSON array in ``stream``."""
    window = _Window(stream)
    window.expect("[", "at the start (a JSON array)")
    if window.skip(_SPACE) == "]":
        return
    while True:
        window.skip(_SPACE)
        yield window.offset, window.value()
        separator = window.skip(_SPACE)
        if separator == "]":
            return
        window.expect(",", "between array elements")


def iter_object(stream: IO[bytes]) -> Iterator[tuple[int, str, Any]]:
    """``(byte offset of the value, key, value)`` of each member of the top-level JSON object."""
    window = _Window(stream)
    window.expect("{", "at the start (a JSON object)")
    if window.skip(_SPACE) == "}":
        return
    while True:
        window.skip(_SPACE)
        key = window.value()
        window.expect(":", "after a key")
        window.skip(_SPACE)
        yield window.offset, key, window.value()
        if window.skip(_SPACE) == "}":
            return
        window.expect(",", "between object members")


def read_record(stream: IO[bytes], offset: int) -> Any:
    """The JSON value at byte ``offset`` of a seekable ``stream`` (reads about its own size)."""
    stream.seek(offset)
    return _Window(stream, offset, chunk=RECORD_CHUNK).value()
