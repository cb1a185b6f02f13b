"""The PROMPTS registry: LLaVA-1.5's evaluation prompts, each naming where LLaVA defines it.

A prompt is the text of the human turn after the image; the conversation template (the
checkpoint's, e.g. ``vicuna_v1``) wraps it and puts ``<image>\\n`` in front, as LLaVA's
``model_vqa_loader.py`` / ``model_vqa_mmbench.py`` do. ``results.json`` records each benchmark's
prompt id, so a score says which prompt produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlm_core.registry import Registry

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
LETTER_INSTRUCTION = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}

LLAVA_EVAL_DATA = "LLaVA-1.5's eval.zip (docs/Evaluation.md)"


@dataclass(frozen=True)
class Prompt:
    id: str
    kind: str  # which benchmarks it fits: "short_answer" (open-ended) or "multiple_choice"
    source: str  # where LLaVA-1.5 defines it
    build: Callable[..., str]

    def format(self, **fields: object) -> str:
        return self.build(**fields)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "source": self.source}


def _short_answer(question: str, **_: object) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def _textvqa_ocr(question: str, ocr_tokens: Sequence[str] = (), **_: object) -> str:
    # questions without OCR tokens get no reference line (LLaVA's eval_textvqa.py parses both layouts)
    if ocr_tokens:
        question = f"{question}\nReference OCR token: {', '.join(ocr_tokens)}"
    return _short_answer(question)


def _vizwiz(question: str, **_: object) -> str:
    return f"{question}\n{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"


def _multiple_choice(lang: str) -> Callable[..., str]:
    def build(question: str, options: Sequence[tuple[str, str]], hint: str | None = None, **_: object) -> str:
        text = question if hint is None else f"{hint}\n{question}"
        for letter, option in options:
            text += f"\n{letter}. {option}"
        return f"{text}\n{LETTER_INSTRUCTION[lang]}"

    return build


PROMPTS: Registry[Prompt] = Registry("prompt")
for _prompt in (
    Prompt(
        "llava15_short_answer",
        "short_answer",
        f"{LLAVA_EVAL_DATA}: llava_vqav2_mscoco_test-dev2015.jsonl, llava_gqa_testdev_balanced.jsonl, "
        "llava_textvqa_val_v051.jsonl (question + the short-answer line)",
        _short_answer,
    ),
    Prompt(
        "llava15_textvqa_ocr",
        "short_answer",
        f"{LLAVA_EVAL_DATA}: llava_textvqa_val_v051_ocr.jsonl (question, 'Reference OCR token: ...', "
        "short-answer line), used for LLaVA-1.5's published TextVQA numbers",
        _textvqa_ocr,
    ),
    Prompt(
        "llava15_vizwiz",
        "short_answer",
        f"{LLAVA_EVAL_DATA}: vizwiz/llava_test.jsonl (question, the unanswerable instruction, short-answer line)",
        _vizwiz,
    ),
    Prompt(
        "llava15_mmbench_en",
        "multiple_choice",
        "LLaVA's llava/eval/model_vqa_mmbench.py --single-pred-prompt (hint, question, 'A. option' lines, "
        "the letter instruction)",
        _multiple_choice("en"),
    ),
    Prompt(
        "llava15_mmbench_cn",
        "multiple_choice",
        "LLaVA's llava/eval/model_vqa_mmbench.py --single-pred-prompt --lang cn",
        _multiple_choice("cn"),
    ),
):
    PROMPTS.add(_prompt.id, _prompt)


def resolve(prompt_id: str | None, default: str, kind: str, benchmark: str) -> Prompt:
    """The prompt a benchmark uses: ``prompt_id`` (from ``eval.data.<benchmark>.prompt``) or its default."""
    prompt = PROMPTS.get(prompt_id or default)
    if prompt.kind != kind:
        fitting = ", ".join(p for p in PROMPTS if PROMPTS.get(p).kind == kind)
        raise ValueError(f"benchmark {benchmark!r}: prompt {prompt.id!r} does not fit it; use one of: {fitting}")
    return prompt
