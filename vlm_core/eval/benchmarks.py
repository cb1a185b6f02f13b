"""The BENCHMARKS registry: what each benchmark asks the model and how its answers are scored.

A benchmark reads its published files (locations from ``EvalConfig.data[name]``, a
``BenchmarkSpec``) into an :class:`EvalSet`: the requests to generate and either a scorer
(splits with answers) or a submission writer (test splits scored by an evaluation server).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vlm_core import storage
from vlm_core.config import BenchmarkSpec
from vlm_core.eval import mmbench
from vlm_core.eval.formats import AnnotationError, answer_texts, field as get, read_json, read_predictions, read_tsv, records
from vlm_core.eval.metrics import (
    OpenEndedItem,
    evalai_question_accuracy,
    gqa_question_accuracy,
    score_open_ended,
    vqav2_question_accuracy,
)
from vlm_core.eval.normalize import evalai_normalize
from vlm_core.registry import Registry

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

Answers = Mapping[str, str]  # question id -> generated answer
Failures = Mapping[str, str]  # question id -> why it could not be asked


@dataclass
class EvalRequest:
    """One question for the model. ``image`` is a URL or encoded image bytes."""

    question_id: str
    prompt: str
    image: str | bytes | None
    error: str | None = None  # known-bad row: not asked, counted wrong, listed


@dataclass
class EvalSet:
    requests: list[EvalRequest]
    score: Callable[[Answers, Failures], dict] | None = None
    # test splits: (file name, bytes) of what the evaluation server expects
    submission: Callable[[Answers], tuple[str, bytes]] | None = None
    meta: dict = field(default_factory=dict)


class Benchmark(ABC):
    scored: bool = True

    @abstractmethod
    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        """Requests (and scorer or submission writer) from the files named by ``spec``."""

    @abstractmethod
    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        """Score a predictions file against the benchmark's official annotation file."""

    def default_spec(self, synth_root: str) -> BenchmarkSpec | None:
        """Where ``vlm synth OUT`` puts this benchmark (synthetic benchmarks only)."""
        return None


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _require(spec: BenchmarkSpec, name: str, bench: str) -> str:
    value = getattr(spec, name)
    if not value:
        raise AnnotationError(f"benchmark {bench!r}: eval.data.{bench}.{name} is not set")
    return value


def _short_answer_prompt(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


# ----------------------------------------------------------------------------- VQAv2 (and synth_vqa)


class VQAv2(Benchmark):
    """VQAv2 questions + annotations JSON; test-dev writes the EvalAI result file."""

    def __init__(self, name: str, image_name: str, scored: bool = True, synth: bool = False) -> None:
        self.name, self.image_name, self.scored, self.synth = name, image_name, scored, synth

    def default_spec(self, synth_root: str) -> BenchmarkSpec | None:
        if not self.synth:
            return None
        root = storage.join(synth_root, "eval", "vqa")
        return BenchmarkSpec(
            questions=storage.join(root, "questions.json"),
            annotations=storage.join(root, "annotations.json"),
            images=storage.join(root, "images"),
        )

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        url = _require(spec, "questions", self.name)
        questions = records(read_json(url), "questions", url)[:limit]
        requests = []
        for n, q in enumerate(questions):
            where = f"questions[{n}]"
            image = self.image_name.format(image_id=get(q, "image_id", url, where))
            requests.append(
                EvalRequest(
                    str(get(q, "question_id", url, where)),
                    _short_answer_prompt(get(q, "question", url, where)),
                    storage.join(_require(spec, "images", self.name), image),
                )
            )
        if not self.scored:
            ids = [q["question_id"] for q in questions]
            return EvalSet(requests, submission=lambda answers: self._submission(ids, answers))
        items = self._items(_require(spec, "annotations", self.name), {r.question_id for r in requests})
        return EvalSet(requests, score=lambda answers, failed: self._score(items, answers, failed))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        return self._score(self._items(annotations), read_predictions(predictions), {})

    def _items(self, url: str, only: set[str] | None = None) -> list[OpenEndedItem]:
        items = []
        for n, a in enumerate(records(read_json(url), "annotations", url)):
            where = f"annotations[{n}]"
            qid = str(get(a, "question_id", url, where))
            if only is not None and qid not in only:
                continue
            groups = {
                "answer_type": str(get(a, "answer_type", url, where)),
                "question_type": str(get(a, "question_type", url, where)),
            }
            items.append(OpenEndedItem(qid, answer_texts(a, url, where), groups))
        return items

    @staticmethod
    def _score(items: list[OpenEndedItem], answers: Answers, failed: Failures) -> dict:
        return score_open_ended(items, answers, vqav2_question_accuracy, failed)

    def _submission(self, ids: list, answers: Answers) -> tuple[str, bytes]:
        # LLaVA-1.5 sends EvalAI-processed answers; questions without one get "" (EvalAI wants all).
        result = [{"question_id": qid, "answer": evalai_normalize(answers.get(str(qid), ""))} for qid in ids]
        return f"{self.name}.json", json.dumps(result).encode()


# ----------------------------------------------------------------------------- TextVQA


class TextVQA(Benchmark):
    """TextVQA ``{"data": [...]}``: the question file is also the annotation file."""

    name = "textvqa_val"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = records(read_json(url), "data", url)[:limit]
        requests, items = [], []
        for n, row in enumerate(rows):
            where = f"data[{n}]"
            qid = str(get(row, "question_id", url, where))
            question = get(row, "question", url, where)
            if spec.use_ocr_tokens and row.get("ocr_tokens"):
                # LLaVA-1.5's "_ocr" prompt variant
                question = f"{question}\nReference OCR token: {', '.join(row['ocr_tokens'])}"
            image = storage.join(_require(spec, "images", self.name), f"{get(row, 'image_id', url, where)}.jpg")
            requests.append(EvalRequest(qid, _short_answer_prompt(question), image))
        items = self._items(rows, url)
        return EvalSet(requests, score=lambda answers, failed: score_open_ended(items, answers, evalai_question_accuracy, failed))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(records(read_json(annotations), "data", annotations), annotations)
        return score_open_ended(items, read_predictions(predictions), evalai_question_accuracy)

    @staticmethod
    def _items(rows: list, url: str) -> list[OpenEndedItem]:
        return [
            OpenEndedItem(str(get(r, "question_id", url, f"data[{n}]")), answer_texts(r, url, f"data[{n}]"))
            for n, r in enumerate(rows)
        ]


# ----------------------------------------------------------------------------- VizWiz


class VizWiz(Benchmark):
    """VizWiz VQA: a list of ``{"image", "question", "answers", "answer_type", "answerable"}``;
    the image file name is the question id."""

    name = "vizwiz_val"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = records(read_json(url), None, url)[:limit]
        requests = []
        for n, row in enumerate(rows):
            image = get(row, "image", url, f"[{n}]")
            prompt = f"{get(row, 'question', url, f'[{n}]')}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"
            requests.append(EvalRequest(image, prompt, storage.join(_require(spec, "images", self.name), image)))
        items = self._items(rows, url)
        return EvalSet(requests, score=lambda answers, failed: self._score(items, answers, failed))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(records(read_json(annotations), None, annotations), annotations)
        return self._score(items, read_predictions(predictions), {})

    @staticmethod
    def _items(rows: list, url: str) -> list[OpenEndedItem]:
        items = []
        for n, row in enumerate(rows):
            where = f"[{n}]"
            answer_type = str(get(row, "answer_type", url, where))
            answerable = row.get("answerable", int(answer_type != "unanswerable"))
            groups = {"answer_type": answer_type, "answerability": "answerable" if answerable else "unanswerable"}
            items.append(OpenEndedItem(get(row, "image", url, where), answer_texts(row, url, where), groups))
        return items

    @staticmethod
    def _score(items: list[OpenEndedItem], answers: Answers, failed: Failures) -> dict:
        result = score_open_ended(items, answers, evalai_question_accuracy, failed)
        # VizWiz reports the unanswerable questions on their own line
        result["unanswerable"] = result.get("per_answerability", {}).get("unanswerable", 0.0)
        return result


# ----------------------------------------------------------------------------- GQA


class GQA(Benchmark):
    """GQA balanced questions ``{qid: {"imageId", "question", "answer", "types"}}`` + image folder."""

    name = "gqa_testdev"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = list(self._rows(url).items())[:limit]
        images = _require(spec, "images", self.name)
        requests = [
            EvalRequest(
                qid,
                _short_answer_prompt(get(q, "question", url, qid)),
                storage.join(images, f"{get(q, 'imageId', url, qid)}.jpg"),
            )
            for qid, q in rows
        ]
        items = self._items(dict(rows), url)
        return EvalSet(requests, score=lambda answers, failed: score_open_ended(items, answers, gqa_question_accuracy, failed))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(self._rows(annotations), annotations)
        return score_open_ended(items, read_predictions(predictions), gqa_question_accuracy)

    @staticmethod
    def _rows(url: str) -> dict:
        data = read_json(url)
        if not isinstance(data, dict):
            raise AnnotationError(f"{url}: top level: expected an object keyed by question id, got {type(data).__name__}")
        return data

    @staticmethod
    def _items(rows: Mapping, url: str) -> list[OpenEndedItem]:
        items = []
        for qid, q in rows.items():
            answer = str(get(q, "answer", url, str(qid)))
            types = q.get("types") or {}
            groups = {k: str(types[k]) for k in ("structural", "semantic") if k in types}
            items.append(OpenEndedItem(str(qid), [answer], groups))
        return items


# ----------------------------------------------------------------------------- MMBench


class MMBench(Benchmark):
    """MMBench TSV (base64 images). Dev splits are scored with CircularEval; test splits write
    the submission TSV (one row per pass, with the model's prediction)."""

    def __init__(self, name: str, lang: str, scored: bool, synth: bool = False) -> None:
        self.name, self.lang, self.scored, self.synth = name, lang, scored, synth

    def default_spec(self, synth_root: str) -> BenchmarkSpec | None:
        return BenchmarkSpec(questions=storage.join(synth_root, "eval", "mmbench_dev.tsv")) if self.synth else None

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = read_tsv(url)
        questions, failed, images = self._questions(rows, url, limit)
        passes = mmbench.expand_circular(questions)
        requests = [
            EvalRequest(str(p.index), mmbench.prompt(p, self.lang), images.get(p.group), failed.get(p.group))
            for p in passes
        ]
        if self.scored:
            return EvalSet(requests, score=lambda answers, fails: mmbench.score_circular(passes, answers, fails))
        return EvalSet(requests, submission=lambda answers: self._submission(passes, answers))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        parsed, failed, _ = self._questions(read_tsv(annotations), annotations, None)
        passes = mmbench.expand_circular(parsed)
        fails = {str(p.index): failed[p.group] for p in passes if p.group in failed}
        return mmbench.score_circular(passes, read_predictions(predictions), fails)

    def _questions(
        self, rows: list[dict[str, str]], url: str, limit: int | None
    ) -> tuple[list[mmbench.MCQuestion], dict[int, str], dict[int, bytes | None]]:
        """Questions (base rows up to ``limit`` groups), unreadable images by group, image bytes by group."""
        questions: list[mmbench.MCQuestion] = []
        failed: dict[int, str] = {}
        images: dict[int, bytes | None] = {}
        groups: set[int] = set()
        for n, row in enumerate(rows):
            where = f"row {n + 1}"
            try:
                index = int(get(row, "index", url, where))
            except ValueError:
                raise AnnotationError(f"{url}: {where}: field 'index' is not an integer: {row['index']!r}") from None
            group = index % mmbench.CIRCULAR_STRIDE
            if limit is not None and group not in groups and len(groups) >= limit:
                continue
            groups.add(group)
            options = tuple(
                (letter, str(row[letter])) for letter in mmbench.OPTION_LETTERS if not mmbench.is_missing(row.get(letter))
            )
            if not options:
                raise AnnotationError(f"{url}: {where}: no option columns (A, B, ...) filled")
            answer = row.get("answer")
            if self.scored and mmbench.is_missing(answer):
                raise AnnotationError(f"{url}: {where}: missing field 'answer' (a scored split needs it)")
            hint = row.get("hint")
            questions.append(
                mmbench.MCQuestion(
                    index=index,
                    question=str(get(row, "question", url, where)),
                    options=options,
                    answer=None if mmbench.is_missing(answer) else str(answer).strip(),
                    hint=None if mmbench.is_missing(hint) else str(hint),
                    category=row.get("category") or "",
                    l2_category=row.get("l2-category") or row.get("l2_category") or "",
                )
            )
            if group not in images:
                try:
                    images[group] = base64.b64decode(row.get("image") or "", validate=True) or None
                except (binascii.Error, ValueError):
                    images[group] = None
                if images[group] is None:
                    failed[group] = f"{where}: no decodable base64 image"
        return questions, failed, images

    def _submission(self, passes: list[mmbench.MCQuestion], answers: Answers) -> tuple[str, bytes]:
        out = io.StringIO()
        letters = [c for c in mmbench.OPTION_LETTERS if any(c == l for p in passes for l, _ in p.options)]
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["index", "question", "hint", *letters, "prediction", "category", "l2-category"])
        for p in passes:
            options = dict(p.options)
            raw = answers.get(str(p.index), "")
            choice = mmbench.extract_choice(raw, p.options) or raw
            writer.writerow([p.index, p.question, p.hint or "", *(options.get(c, "") for c in letters), choice, p.category, p.l2_category])
        return f"{self.name}.tsv", out.getvalue().encode()


# ----------------------------------------------------------------------------- the registry

for _name, _bench in {
    "vqav2_val": VQAv2("vqav2_val", "COCO_val2014_{image_id:012d}.jpg"),
    "vqav2_testdev": VQAv2("vqav2_testdev", "COCO_test2015_{image_id:012d}.jpg", scored=False),
    "synth_vqa": VQAv2("synth_vqa", "{image_id}.png", synth=True),
    "textvqa_val": TextVQA(),
    "vizwiz_val": VizWiz(),
    "gqa_testdev": GQA(),
    "mmbench_dev_en": MMBench("mmbench_dev_en", "en", scored=True),
    "mmbench_dev_cn": MMBench("mmbench_dev_cn", "cn", scored=True),
    "mmbench_test_en": MMBench("mmbench_test_en", "en", scored=False),
    "mmbench_test_cn": MMBench("mmbench_test_cn", "cn", scored=False),
    "synth_mmbench": MMBench("synth_mmbench", "en", scored=True, synth=True),
}.items():
    BENCHMARKS.add(_name, _bench)

