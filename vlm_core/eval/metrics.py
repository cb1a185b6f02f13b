"""Official accuracy rules for the open-ended benchmarks (VQAv2, TextVQA, VizWiz, GQA).

Every scorer takes the ground truth keyed by question id and the predictions keyed the same way
(a missing prediction scores 0 and is counted), and returns a JSON-ready dict whose ``accuracy``
is the headline number in percent, rounded to 2 decimals like ``vqaEval.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vlm_core.eval.normalize import evalai_normalize, vqa_normalize_ground_truth, vqa_normalize_prediction


def percent(fraction: float) -> float:
    return round(100.0 * fraction, 2)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: each human answer is left out in turn; the prediction scores
    min(#matches among the others / 3, 1); the scores are averaged (10-choose-9)."""
    if not answers:
        return 0.0
    total = 0.0
    for left_out in range(len(answers)):
        matches = sum(1 for i, a in enumerate(answers) if i != left_out and a == prediction)
        total += min(1.0, matches / 3)
    return total / len(answers)


def vqav2_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One VQAv2 question, as ``vqaEval.py``: ground truth is punctuation-processed only when
    the annotators disagree (a unanimous answer is compared verbatim)."""
    if len(set(answers)) > 1:
        answers = [vqa_normalize_ground_truth(a) for a in answers]
    return leave_one_out_accuracy(vqa_normalize_prediction(prediction), answers)


def evalai_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One TextVQA / VizWiz question, as the m4c evaluator: EvalAI processing on both sides."""
    return leave_one_out_accuracy(evalai_normalize(prediction), [evalai_normalize(a) for a in answers])


def gqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """GQA: exact match with the single gold answer after the VQA normalization of both sides."""
    return float(vqa_normalize_prediction(prediction) == vqa_normalize_prediction(answers[0]))


@dataclass
class OpenEndedItem:
    """The ground truth of one open-ended question."""

    question_id: str
    answers: list[str]  # ten human answers (GQA: the single gold answer)
    groups: dict[str, str] = field(default_factory=dict)  # breakdown name -> group, e.g. answer_type -> "yes/no"


def score_open_ended(
    items: Sequence[OpenEndedItem],
    predictions: Mapping[str, str],
    question_accuracy: Callable[[str, Sequence[str]], float],
    failed: Mapping[str, str] | None = None,
    extra: Callable[[dict[str, float]], dict] | None = None,
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
    if extra:
        result.update(extra(scores))
    result["missing_predictions"] = missing
    result["failed"] = [{"question_id": qid, "error": err} for qid, err in failed.items()]
    return result

