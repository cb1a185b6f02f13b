"""MMBench / MMBench-CN: CircularEval and VLMEvalKit's exact-matching answer extraction.

CircularEval asks a question with N options N times, the options rotated one step each time,
and counts it correct only if every pass is answered correctly. Passes follow the published
index convention: pass ``k`` of question ``i`` has index ``i + k * 1_000_000`` (MMBench TSVs that
already hold the copies are used as they are). The prompt is LLaVA-1.5's (``vlm_core.eval.prompts``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vlm_core.eval.metrics import SCORERS, Scorer, percent

CIRCULAR_STRIDE = 1_000_000
OPTION_LETTERS = "ABCDEFGHIJ"


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


# ----------------------------------------------------------------------------- answer extraction

# VLMEvalKit's exact matching (vlmeval/utils/matching_util.py, can_infer at commit e8e78f05).
REFUSAL = "Z"  # VLMEvalKit's letter for "the model declined": never the gold answer
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = ".()[],:;!*#{}"
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """``can_infer_option``: one option letter standing alone among the last four words, a
    refusal, or "answer is X"."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return REFUSAL
    cleaned = answer
    for c in _SEPARATORS:
        cleaned = cleaned.replace(c, " ")
    words = cleaned.split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1:
        # the letter must stand near the end: "B is wrong because ..." is not an answer
        # (VLMEvalKit's article guard for "A" only logs under VERBOSE: not applied)
        if words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and REFUSAL in words:
        return REFUSAL
    match = _VERBOSE_ANSWER.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def _infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """``can_infer_text``: exactly one option's text inside an answer at most twice as long as
    all option texts together."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(text)) for text in choices.values()):
        return None
    named = [letter for letter, text in choices.items() if str(text).lower() in answer]
    return named[0] if len(named) == 1 else None


def extract_choice(prediction: str, options: Sequence[tuple[str, str]]) -> str | None:
    """VLMEvalKit's ``can_infer`` (exact matching, no LLM): the option letter the prediction
    names, ``"Z"`` for a refusal, or None when neither rule decides (scored wrong, as VLMEvalKit's
    ``exact_matching`` mode does)."""
    choices = dict(options)
    return _infer_option(str(prediction), choices) or _infer_text(str(prediction), choices)


# ----------------------------------------------------------------------------- CircularEval

SCORERS.add(
    "mmbench_circular",
    Scorer(
        "mmbench_circular",
        "vlmevalkit-e8e78f05-exact-matching",
        "open-compass/VLMEvalKit vlmeval/utils/matching_util.py can_infer (no LLM) and the CircularEval of "
        "vlmeval/dataset/utils/multiple_choice.py: a question counts only if every rotation is answered right",
    ),
)


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
