"""Official accuracy rules for the open-ended benchmarks (VQAv2, TextVQA, VizWiz, GQA).

Each benchmark is scored by a :class:`Scorer`: one question's accuracy in [0, 1], plus the name,
version and reference that ``results.json`` records so a score can be traced to its rule.
:func:`score_open_ended` turns per-question accuracies into the JSON-ready result: ``accuracy``
in percent, rounded to 2 decimals like the official tools, and breakdowns per group (a missing
prediction scores 0 and is listed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vlm_core.eval.normalize import (
    evalai_normalize,
    strip_whitespace,
    vizwiz_normalize,
    vqa_normalize,
)
from vlm_core.registry import Registry

QuestionAccuracy = Callable[[str, Sequence[str]], float]


def percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: each human answer is left out in turn (by position; VQAv2's answer ids are
    unique); the prediction scores min(#matches among the others / 3, 1); the scores are averaged."""
    if not answers:
        return 0.0
    total = 0.0
    for left_out in range(len(answers)):
        matches = sum(1 for i, a in enumerate(answers) if i != left_out and a == prediction)
        total += min(1.0, matches / 3)
    return total / len(answers)


def vqaeval_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The current ``vqaEval.py`` rule (GT-Vision-Lab/VQA, commit a013f00 "Fixed processing
    answers bug"): both sides are whitespace-stripped; only when the ten answers disagree are the
    prediction *and* the answers normalized (punctuation, digits, articles, contractions); a
    unanimous answer is compared verbatim."""
    prediction = strip_whitespace(prediction)
    answers = [strip_whitespace(a) for a in answers]
    if len(set(answers)) > 1:
        answers = [vqa_normalize(a) for a in answers]
        prediction = vqa_normalize(prediction)
    return leave_one_out_accuracy(prediction, answers)


def vqav2_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 as LLaVA-1.5's numbers are made: the prediction goes through the EvalAI answer
    processor (LLaVA's ``scripts/convert_vqav2_for_submission.py``; lmms-eval's val scorer),
    then the current ``vqaEval.py`` rule (:func:`vqaeval_accuracy`)."""
    return vqaeval_accuracy(evalai_normalize(prediction), answers)


def textvqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's m4c ``TextVQAAccuracyEvaluator`` (LLaVA's ``llava/eval/m4c_evaluator.py``): the
    EvalAI answer processor on the prediction and on every answer, then leave-one-out."""
    return leave_one_out_accuracy(evalai_normalize(prediction), [evalai_normalize(a) for a in answers])


def vizwiz_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz's official ``vqaEval.py`` (VizWiz VQA API): the prediction is normalized (VQA steps,
    VizWiz's contraction table), the ten answers are compared as annotated; leave-one-out. As in
    LLaVA's ``scripts/convert_vizwiz_for_submission.py`` the prediction first goes through the
    EvalAI answer processor, which is what the evaluation server receives."""
    return leave_one_out_accuracy(vizwiz_normalize(evalai_normalize(prediction)), list(answers))


def gqa_prediction(prediction: str) -> str:
    """LLaVA's ``scripts/convert_gqa_for_eval.py``: ``text.rstrip('.').lower()`` of the stripped
    generation."""
    return prediction.strip().rstrip(".").lower()


def gqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """GQA's official ``eval.py``: ``predicted == gold``, a plain string match (no VQA
    normalization: "the table" does not match "table", "two" does not match "2")."""
    return float(gqa_prediction(prediction) == answers[0])


@dataclass(frozen=True)
class Scorer:
    """A scoring rule as ``results.json`` records it."""

    name: str
    version: str  # the upstream state the rule follows
    reference: str  # where the rule is published
    question_accuracy: QuestionAccuracy | None = None  # None: scored per benchmark (MMBench's CircularEval)

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "reference": self.reference}


SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.add(
    "vqav2",
    Scorer(
        "vqav2",
        "vqaeval-a013f00+evalai-prediction",
        "GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (a013f00); prediction through "
        "EvalAI's answer processor as in LLaVA's scripts/convert_vqav2_for_submission.py",
        vqav2_question_accuracy,
    ),
)
SCORERS.add(
    "textvqa",
    Scorer(
        "textvqa",
        "m4c-textvqa-accuracy",
        "facebookresearch/mmf TextVQAAccuracyEvaluator (EvalAI answer processor on both sides), "
        "as vendored in LLaVA's llava/eval/m4c_evaluator.py",
        textvqa_question_accuracy,
    ),
)
SCORERS.add(
    "vizwiz",
    Scorer(
        "vizwiz",
        "vizwiz-api-vqaeval+evalai-prediction",
        "VizWiz VQA API vqaEval.py (prediction normalized, answers as annotated, per answer_type); "
        "prediction through EvalAI's answer processor as in LLaVA's scripts/convert_vizwiz_for_submission.py",
        vizwiz_question_accuracy,
    ),
)
SCORERS.add(
    "gqa",
    Scorer(
        "gqa",
        "gqa-eval-1.2-balanced",
        "GQA eval.py (accuracy over isBalanced questions, per structural / semantic type); prediction "
        "strip().rstrip('.').lower() as in LLaVA's scripts/convert_gqa_for_eval.py",
        gqa_question_accuracy,
    ),
)


@dataclass
class OpenEndedItem:
    """The ground truth of one open-ended question."""

    question_id: str
    answers: list[str]  # ten human answers (GQA: the single gold answer)
    groups: dict[str, str] = field(default_factory=dict)  # breakdown name -> group, e.g. answer_type -> "yes/no"


def score_open_ended(
    items: Sequence[OpenEndedItem],
    predictions: Mapping[str, str],
    question_accuracy: QuestionAccuracy,
    failed: Mapping[str, str] | None = None,
) -> dict:
    """Score every item; unanswered or failed items score 0 and are listed."""
    failed = dict(failed or {})
    scores: dict[str, float] = {}
    missing: list[str] = []
    for item in items:
        if item.question_id in failed:
            scores[item.question_id] = 0.0
        elif item.question_id not in predictions:
            missing.append(item.question_id)
            scores[item.question_id] = 0.0
        else:
            scores[item.question_id] = question_accuracy(predictions[item.question_id], item.answers)
    result: dict = {
        "accuracy": percent(sum(scores.values()) / len(scores)) if scores else 0.0,
        "num_questions": len(scores),
    }
    breakdowns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        for name, group in item.groups.items():
            breakdowns[name][group].append(scores[item.question_id])
    for name, groups in sorted(breakdowns.items()):
        result[f"per_{name}"] = {g: percent(sum(v) / len(v)) for g, v in sorted(groups.items())}
    result["missing_predictions"] = missing
    result["failed"] = [{"question_id": qid, "error": err} for qid, err in failed.items()]
    return result
