"""The BENCHMARKS registry: what each benchmark asks the model and how its answers are scored.

A benchmark reads its published files (locations from ``EvalConfig.data[name]``, a
``BenchmarkSpec``) into an :class:`EvalSet`: the requests to generate and either a scorer
(splits with answers) or a submission writer (test splits scored by an evaluation server).
Its protocol (task, split, LLaVA-1.5 prompt, scorer) goes into ``EvalSet.protocol``, which
``results.json`` records next to the score.
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
from vlm_core.eval.formats import (
    AnnotationError,
    answer_texts,
    read_json,
    read_predictions,
    read_tsv,
    records,
)
from vlm_core.eval.formats import field as get
from vlm_core.eval.metrics import SCORERS, OpenEndedItem, Scorer, score_open_ended
from vlm_core.eval.normalize import evalai_normalize
from vlm_core.eval.prompts import Prompt, resolve
from vlm_core.registry import Registry

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
    protocol: dict = field(default_factory=dict)


class Benchmark(ABC):
    """One benchmark split. ``task`` and ``split`` name what published numbers it compares
    with (``vlm eval compare``); ``default_prompt`` is LLaVA-1.5's prompt for it."""

    task: str
    split: str
    default_prompt: str
    prompt_kind: str = "short_answer"
    scorer: str
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

    def prompt(self, spec: BenchmarkSpec) -> Prompt:
        return resolve(spec.prompt, self.default_prompt, self.prompt_kind, self.name)

    def scoring(self) -> Scorer:
        return SCORERS.get(self.scorer)

    def protocol(self, prompt: Prompt) -> dict:
        protocol = {"task": self.task, "split": self.split, "prompt": prompt.describe(), "scorer": self.scoring().describe()}
        if not self.scored:
            protocol["scored_by"] = "evaluation server (submission file)"
        return protocol

    name: str


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _require(spec: BenchmarkSpec, name: str, bench: str) -> str:
    value = getattr(spec, name)
    if not value:
        raise AnnotationError(f"benchmark {bench!r}: eval.data.{bench}.{name} is not set")
    return value


# ----------------------------------------------------------------------------- VQAv2 (and synth_vqa)


class VQAv2(Benchmark):
    """VQAv2 questions + annotations JSON; test-dev writes the EvalAI result file."""

    task = "vqav2"
    default_prompt = "llava15_short_answer"
    scorer = "vqav2"

    def __init__(self, name: str, split: str, image_name: str, scored: bool = True, synth: bool = False) -> None:
        self.name, self.split, self.image_name, self.scored, self.synth = name, split, image_name, scored, synth
        if synth:
            self.task = "synth_vqa"

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
        prompt = self.prompt(spec)
        url = _require(spec, "questions", self.name)
        questions = records(read_json(url), "questions", url)[:limit]
        requests = []
        for n, q in enumerate(questions):
            where = f"questions[{n}]"
            image = self.image_name.format(image_id=get(q, "image_id", url, where))
            requests.append(
                EvalRequest(
                    str(get(q, "question_id", url, where)),
                    prompt.format(question=get(q, "question", url, where)),
                    storage.join(_require(spec, "images", self.name), image),
                )
            )
        protocol = self.protocol(prompt)
        if not self.scored:
            ids = [q["question_id"] for q in questions]
            return EvalSet(requests, submission=lambda answers: self._submission(ids, answers), protocol=protocol)
        items = self._items(_require(spec, "annotations", self.name), {r.question_id for r in requests})
        return EvalSet(requests, score=lambda answers, failed: self._score(items, answers, failed), protocol=protocol)

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

    def _score(self, items: list[OpenEndedItem], answers: Answers, failed: Failures) -> dict:
        return score_open_ended(items, answers, self.scoring().question_accuracy, failed)

    def _submission(self, ids: list, answers: Answers) -> tuple[str, bytes]:
        # LLaVA-1.5 sends EvalAI-processed answers; questions without one get "" (EvalAI wants all).
        result = [{"question_id": qid, "answer": evalai_normalize(answers.get(str(qid), ""))} for qid in ids]
        return f"{self.name}.json", json.dumps(result).encode()


# ----------------------------------------------------------------------------- TextVQA


class TextVQA(Benchmark):
    """TextVQA ``{"data": [...]}``: the question file is also the annotation file. LLaVA-1.5's
    published numbers use the prompt with OCR reference tokens (the default);
    ``prompt: llava15_short_answer`` asks without them."""

    name = "textvqa_val"
    task = "textvqa"
    split = "val"
    default_prompt = "llava15_textvqa_ocr"
    scorer = "textvqa"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        prompt = self.prompt(spec)
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = records(read_json(url), "data", url)[:limit]
        requests = []
        for n, row in enumerate(rows):
            where = f"data[{n}]"
            qid = str(get(row, "question_id", url, where))
            text = prompt.format(question=get(row, "question", url, where), ocr_tokens=row.get("ocr_tokens") or ())
            image = storage.join(_require(spec, "images", self.name), f"{get(row, 'image_id', url, where)}.jpg")
            requests.append(EvalRequest(qid, text, image))
        items = self._items(rows, url)
        accuracy = self.scoring().question_accuracy
        return EvalSet(
            requests, score=lambda answers, failed: score_open_ended(items, answers, accuracy, failed), protocol=self.protocol(prompt)
        )

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(records(read_json(annotations), "data", annotations), annotations)
        return score_open_ended(items, read_predictions(predictions), self.scoring().question_accuracy)

    @staticmethod
    def _items(rows: list, url: str) -> list[OpenEndedItem]:
        return [
            OpenEndedItem(str(get(r, "question_id", url, f"data[{n}]")), answer_texts(r, url, f"data[{n}]"))
            for n, r in enumerate(rows)
        ]


# ----------------------------------------------------------------------------- VizWiz


class VizWiz(Benchmark):
    """VizWiz VQA: a list of ``{"image", "question", "answers", "answer_type", "answerable"}``;
    the image file name is the question id. Per-type figures group by ``answer_type`` (as the
    official evaluator does), so ``unanswerable`` is the ``answer_type == "unanswerable"`` line."""

    name = "vizwiz_val"
    task = "vizwiz"
    split = "val"
    default_prompt = "llava15_vizwiz"
    scorer = "vizwiz"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        prompt = self.prompt(spec)
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = records(read_json(url), None, url)[:limit]
        requests = []
        for n, row in enumerate(rows):
            image = get(row, "image", url, f"[{n}]")
            text = prompt.format(question=get(row, "question", url, f"[{n}]"))
            requests.append(EvalRequest(image, text, storage.join(_require(spec, "images", self.name), image)))
        items = self._items(rows, url)
        return EvalSet(requests, score=lambda answers, failed: self._score(items, answers, failed), protocol=self.protocol(prompt))

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(records(read_json(annotations), None, annotations), annotations)
        return self._score(items, read_predictions(predictions), {})

    @staticmethod
    def _items(rows: list, url: str) -> list[OpenEndedItem]:
        items = []
        for n, row in enumerate(rows):
            where = f"[{n}]"
            groups = {"answer_type": str(get(row, "answer_type", url, where))}
            items.append(OpenEndedItem(get(row, "image", url, where), answer_texts(row, url, where), groups))
        return items

    def _score(self, items: list[OpenEndedItem], answers: Answers, failed: Failures) -> dict:
        result = score_open_ended(items, answers, self.scoring().question_accuracy, failed)
        # VizWiz reports the unanswerable questions on their own line
        if "unanswerable" in result.get("per_answer_type", {}):
            result["unanswerable"] = result["per_answer_type"]["unanswerable"]
        return result


# ----------------------------------------------------------------------------- GQA


class GQA(Benchmark):
    """GQA questions ``{qid: {"imageId", "question", "answer", "types", "isBalanced"}}`` + image
    folder. As the official ``eval.py``: only balanced questions count; per structural and
    semantic type, and binary (verify / logical / compare / choose) vs open (query) questions."""

    name = "gqa_testdev"
    task = "gqa"
    split = "testdev_balanced"
    default_prompt = "llava15_short_answer"
    scorer = "gqa"

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        prompt = self.prompt(spec)
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = list(self._balanced(self._rows(url)).items())[:limit]
        images = _require(spec, "images", self.name)
        requests = [
            EvalRequest(
                qid,
                prompt.format(question=get(q, "question", url, qid)),
                storage.join(images, f"{get(q, 'imageId', url, qid)}.jpg"),
            )
            for qid, q in rows
        ]
        items = self._items(dict(rows), url)
        accuracy = self.scoring().question_accuracy
        return EvalSet(
            requests, score=lambda answers, failed: score_open_ended(items, answers, accuracy, failed), protocol=self.protocol(prompt)
        )

    def score_files(self, predictions: str, annotations: str, questions: str | None = None) -> dict:
        items = self._items(self._balanced(self._rows(annotations)), annotations)
        return score_open_ended(items, read_predictions(predictions), self.scoring().question_accuracy)

    @staticmethod
    def _rows(url: str) -> dict:
        data = read_json(url)
        if not isinstance(data, dict):
            raise AnnotationError(f"{url}: top level: expected an object keyed by question id, got {type(data).__name__}")
        return data

    @staticmethod
    def _balanced(rows: Mapping) -> dict:
        """The questions ``eval.py`` scores (the balanced files hold only those)."""
        return {qid: q for qid, q in rows.items() if not isinstance(q, Mapping) or q.get("isBalanced", True)}

    @staticmethod
    def _items(rows: Mapping, url: str) -> list[OpenEndedItem]:
        items = []
        for qid, q in rows.items():
            answer = str(get(q, "answer", url, str(qid)))
            types = q.get("types") or {}
            groups = {k: str(types[k]) for k in ("structural", "semantic") if k in types}
            if "structural" in types:
                groups["question_kind"] = "open" if types["structural"] == "query" else "binary"
            items.append(OpenEndedItem(str(qid), [answer], groups))
        return items


# ----------------------------------------------------------------------------- MMBench


class MMBench(Benchmark):
    """MMBench TSV (base64 images). Dev splits are scored with CircularEval; test splits write
    the submission TSV (one row per pass, with the model's prediction)."""

    prompt_kind = "multiple_choice"
    scorer = "mmbench_circular"

    def __init__(self, name: str, lang: str, split: str, scored: bool, synth: bool = False) -> None:
        self.name, self.lang, self.split, self.scored, self.synth = name, lang, split, scored, synth
        self.task = "synth_mmbench" if synth else ("mmbench" if lang == "en" else "mmbench_cn")
        self.default_prompt = f"llava15_mmbench_{lang}"

    def default_spec(self, synth_root: str) -> BenchmarkSpec | None:
        return BenchmarkSpec(questions=storage.join(synth_root, "eval", "mmbench_dev.tsv")) if self.synth else None

    def load(self, spec: BenchmarkSpec, limit: int | None = None) -> EvalSet:
        prompt = self.prompt(spec)
        url = spec.questions or _require(spec, "annotations", self.name)
        rows = read_tsv(url)
        questions, failed, images = self._questions(rows, url, limit)
        passes = mmbench.expand_circular(questions)
        requests = [
            EvalRequest(
                str(p.index),
                prompt.format(question=p.question, options=p.options, hint=p.hint),
                images.get(p.group),
                failed.get(p.group),
            )
            for p in passes
        ]
        protocol = self.protocol(prompt)
        if self.scored:
            return EvalSet(requests, score=lambda answers, fails: mmbench.score_circular(passes, answers, fails), protocol=protocol)
        return EvalSet(requests, submission=lambda answers: self._submission(passes, answers), protocol=protocol)

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

for _bench in (
    VQAv2("vqav2_val", "val", "COCO_val2014_{image_id:012d}.jpg"),
    VQAv2("vqav2_testdev", "test-dev", "COCO_test2015_{image_id:012d}.jpg", scored=False),
    VQAv2("synth_vqa", "heldout", "{image_id}.png", synth=True),
    TextVQA(),
    VizWiz(),
    GQA(),
    MMBench("mmbench_dev_en", "en", "dev", scored=True),
    MMBench("mmbench_dev_cn", "cn", "dev", scored=True),
    MMBench("mmbench_test_en", "en", "test", scored=False),
    MMBench("mmbench_test_cn", "cn", "test", scored=False),
    MMBench("synth_mmbench", "en", "heldout", scored=True, synth=True),
):
    BENCHMARKS.add(_bench.name, _bench)
