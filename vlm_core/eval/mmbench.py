"""MMBench / MMBench-CN: CircularEval, rule-based answer extraction and the LLaVA-1.5 prompt.

CircularEval asks a question with N options N times, the options rotated one step each time,
and counts it correct only if every pass is answered correctly. Passes follow the published
index convention: pass ``k`` of question ``i`` has index ``i + k * 1_000_000`` (MMBench TSVs that
already hold the copies are used as they are).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vlm_core.eval.metrics import percent

CIRCULAR_STRIDE = 1_000_000
OPTION_LETTERS = "ABCDEFGHIJ"

INSTRUCTIONS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


@dataclass(frozen=True)
class MCQuestion:
    """One pass of a multiple-choice question as shown to the model."""

    index: int
    question: str
    options: tuple[tuple[str, str], ...]  # (letter, text) in display order
    answer: str | None  # gold letter for this pass (None on test splits)
    hint: str | None = None
    category: str = ""
    l2_category: str = ""

    @property
    def group(self) -> int:
        return self.index % CIRCULAR_STRIDE


def is_missing(value: object) -> bool:
    """Empty cells come out of pandas-written TSVs as NaN or the text 'nan'."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return str(value).strip().lower() in ("", "nan", "none")


def rotations(q: MCQuestion) -> list[MCQuestion]:
    """The N passes of CircularEval; pass 0 is the question as published."""
    letters = [letter for letter, _ in q.options]
    texts = [text for _, text in q.options]
    gold_text = dict(q.options).get(q.answer) if q.answer else None
    passes = []
    for k in range(len(texts)):
        rotated = texts[k:] + texts[:k]
        answer = letters[rotated.index(gold_text)] if gold_text is not None else None
        passes.append(replace(q, index=q.index + k * CIRCULAR_STRIDE, options=tuple(zip(letters, rotated)), answer=answer))
    return passes


def expand_circular(questions: Sequence[MCQuestion]) -> list[MCQuestion]:
    """All passes: the file's own copies if it has them, else generated rotations."""
    if any(q.index >= CIRCULAR_STRIDE for q in questions):
        return list(questions)
    return [p for q in questions for p in rotations(q)]


def prompt(q: MCQuestion, lang: str) -> str:
    """LLaVA-1.5's MMBench prompt: hint, question, 'A. option' lines, the instruction."""
    text = q.question if q.hint is None else f"{q.hint}\n{q.question}"
    for letter, option in q.options:
        text += f"\n{letter}. {option}"
    return f"{text}\n{INSTRUCTIONS[lang]}"


# ----------------------------------------------------------------------------- answer extraction

_EXPLICIT = (
    re.compile(r"answer\s*(?:is|:)\s*:?\s*[\(\[]?([A-J])\b", re.IGNORECASE),
    re.compile(r"(?:答案|选项|选择|选)\s*(?:是|为|应为|应该是)?\s*[:：]?\s*[（(\[]?\s*([A-J])(?![A-Za-z])"),
)
_TOKEN_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def extract_choice(prediction: str, options: Sequence[tuple[str, str]]) -> str | None:
    """The option letter a free-form answer names, or None when no rule decides.

    Rules, first decisive one wins: an explicit "The answer is A" / "答案是A" / "选A"; exactly
    one option letter standing alone ("A", "A.", "(A)") — unless it is a sentence where "A" may be
    the article (VLMEvalKit's guard); exactly one option whose text appears in the answer.
    """
    letters = [letter for letter, _ in options]
    for pattern in _EXPLICIT:
        match = pattern.search(prediction)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    tokens = _TOKEN_SEPARATORS.sub(" ", prediction).split()
    named = [letter for letter in letters if letter in tokens]
    if len(named) == 1 and not ("A" in tokens and len(tokens) > 3):
        return named[0]
    lowered = prediction.lower()
    by_text = [letter for letter, text in options if text and str(text).lower() in lowered]
    if len(by_text) == 1:
        return by_text[0]
    return None


# ----------------------------------------------------------------------------- CircularEval


def score_circular(
    passes: Sequence[MCQuestion], predictions: Mapping[str, str], failed: Mapping[str, str] | None = None
) -> dict:
    """Circular and vanilla (pass 0 only) accuracy, overall and per category / l2-category."""
    failed = dict(failed or {})
    by_group: dict[int, list[MCQuestion]] = defaultdict(list)
    for p in passes:
        by_group[p.group].append(p)
    unmatched: list[int] = []
    missing: list[int] = []
    circular: dict[int, bool] = {}
    vanilla: dict[int, bool] = {}
    for group, group_passes in by_group.items():
        outcomes = []
        for p in sorted(group_passes, key=lambda p: p.index):
            key = str(p.index)
            if key in failed:
                outcomes.append(False)
                continue
            if key not in predictions:
                missing.append(p.index)
                outcomes.append(False)
                continue
            choice = extract_choice(predictions[key], p.options)
            if choice is None:
                unmatched.append(p.index)
            outcomes.append(choice is not None and choice == p.answer)
        circular[group] = all(outcomes)
        vanilla[group] = outcomes[0]

    def rate(flags: Sequence[bool]) -> float:
        return percent(sum(flags) / len(flags)) if flags else 0.0

    def breakdown(attr: str) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for group, group_passes in by_group.items():
            groups[getattr(group_passes[0], attr) or "unknown"].append(group)
        return {
            name: {"circular": rate([circular[g] for g in gs]), "vanilla": rate([vanilla[g] for g in gs])}
            for name, gs in sorted(groups.items())
        }

    circular_acc = rate(list(circular.values()))
    return {
        "accuracy": circular_acc,
        "circular_accuracy": circular_acc,
        "vanilla_accuracy": rate(list(vanilla.values())),
        "num_questions": len(by_group),
        "num_passes": len(passes),
        "per_category": breakdown("category"),
        "per_l2_category": breakdown("l2_category"),
        "unmatched": sorted(unmatched),
        "missing_predictions": sorted(missing),
        "failed": [{"question_id": qid, "error": err} for qid, err in failed.items()],
    }
