"""Readers of the published benchmark files, with errors that name the file and the field."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from vlm_core import storage


class AnnotationError(ValueError):
    """A benchmark file that does not have the published shape."""


def read_json(url: str) -> Any:
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        raise AnnotationError(f"{url}: no such file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{url}: not valid JSON: {err}") from None


def field(record: Any, name: str, url: str, where: str) -> Any:
    """``record[name]``, or an AnnotationError naming the file, the record and the field."""
    if not isinstance(record, Mapping):
        raise AnnotationError(f"{url}: {where}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise AnnotationError(f"{url}: {where}: missing field {name!r}")
    return record[name]


def records(data: Any, key: str | None, url: str) -> list:
    """The list of records of a file: ``data[key]`` (e.g. ``annotations``) or ``data`` itself."""
    items = field(data, key, url, "top level") if key else data
    if not isinstance(items, list):
        where = f"field {key!r}" if key else "top level"
        raise AnnotationError(f"{url}: {where}: expected a list, got {type(items).__name__}")
    return items


def answer_texts(record: Mapping, url: str, where: str) -> list[str]:
    """Human answers given as strings (TextVQA) or ``{"answer": ...}`` objects (VQAv2, VizWiz)."""
    answers = field(record, "answers", url, where)
    if not isinstance(answers, list) or not answers:
        raise AnnotationError(f"{url}: {where}: field 'answers' must be a non-empty list")
    return [a if isinstance(a, str) else str(field(a, "answer", url, f"{where}.answers")) for a in answers]


def read_tsv(url: str) -> list[dict[str, str]]:
    """Rows of a TSV written by pandas (MMBench): a header line, quoted cells, huge base64 cells."""
    csv.field_size_limit(sys.maxsize)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        raise AnnotationError(f"{url}: no such file") from None
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


PREDICTION_KEYS = ("question_id", "questionId", "index", "image")  # ours / LLaVA's, GQA's, MMBench's, VizWiz's
PREDICTION_VALUES = ("answer", "prediction", "text")


def read_predictions(url: str) -> dict[str, str]:
    """Predictions as a JSON list or JSONL, keyed by the id as a string: ``{"question_id",
    "answer"}`` (ours; LLaVA's answer files have ``text``), GQA's ``{"questionId", "prediction"}``,
    MMBench's ``{"index", "prediction"}``, VizWiz's ``{"image", "answer"}``."""
    text = storage.read_text(url).strip()
    if text.startswith("["):
        items: Iterable = json.loads(text)
    else:
        items = (json.loads(line) for line in text.splitlines() if line.strip())
    out: dict[str, str] = {}
    for n, item in enumerate(items):
        item = item if isinstance(item, dict) else {}
        key = next((item[k] for k in PREDICTION_KEYS if item.get(k) is not None), None)
        value = next((item[k] for k in PREDICTION_VALUES if item.get(k) is not None), None)
        if key is None or value is None:
            raise AnnotationError(
                f"{url}: prediction {n}: needs an id ({', '.join(PREDICTION_KEYS)}) and an answer "
                f"({', '.join(PREDICTION_VALUES)})"
            )
        out[str(key)] = str(value)
    return out
