"""Hand-computed cases for the official scoring rules."""

from __future__ import annotations

import pytest

from vlm_core.eval.metrics import (
    OpenEndedItem,
    evalai_question_accuracy,
    gqa_question_accuracy,
    leave_one_out_accuracy,
    score_open_ended,
    vqav2_question_accuracy,
)
from vlm_core.eval.normalize import evalai_normalize, process_punctuation, vqa_normalize_prediction


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("A dog", "dog"),  # articles dropped
        ("the an a cat", "cat"),
        ("dont", "don't"),  # contractions restored
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a decimal point stays
        ("hot-dog", "hot dog"),  # punctuation inside a word becomes a space
        ("red , blue", "red blue"),  # punctuation next to a space is removed
        ("1,000", "1000"),  # a digit group comma removes every mark
        ("  Yes\n", "yes"),
    ],
)
def test_vqa_prediction_normalization(raw, normalized):
    assert vqa_normalize_prediction(raw) == normalized


def test_punctuation_condition_reads_the_input_but_edits_pile_up():
    # "?" touches a space in the input, so it is removed; "/" does not, so it becomes a space.
    assert process_punctuation("a/b ?") == "a b "


def test_leave_one_out_averaging_10_choose_9():
    answers = ["cat"] * 2 + ["dog"] * 8
    # leaving out a "cat" leaves 1 match (1/3); leaving out a "dog" leaves 2 (2/3)
    assert leave_one_out_accuracy("cat", answers) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert leave_one_out_accuracy("cat", answers) == pytest.approx(0.6)
    assert leave_one_out_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert leave_one_out_accuracy("dog", answers) == 1.0
    assert leave_one_out_accuracy("bird", answers) == 0.0


def test_ground_truth_processed_only_when_annotators_disagree():
    # Unanimous: compared verbatim, so the processed prediction "hot dog" misses "hot-dog".
    assert vqav2_question_accuracy("hot-dog", ["hot-dog"] * 10) == 0.0
    # Disagreeing: ground truth is punctuation-processed too, and all ten now match.
    assert vqav2_question_accuracy("hot-dog", ["hot-dog"] * 9 + ["hot dog"]) == 1.0
    # Ground truth gets no digit/article processing even then.
    assert vqav2_question_accuracy("two", ["two"] * 9 + ["2"]) == pytest.approx(0.3)


def test_numbers_articles_contractions_against_ground_truth():
    assert vqav2_question_accuracy("Two", ["2"] * 10) == 1.0
    assert vqav2_question_accuracy("a dog", ["dog"] * 10) == 1.0
    assert vqav2_question_accuracy("dont know", ["don't know"] * 10) == 1.0


def test_evalai_processor_lowercases_and_splits_possessives():
    assert evalai_normalize("The Cat's toy!") == "cat 's toy"
    assert evalai_normalize("1,000,000") == "1000000"
    # both sides are processed, so a unanimous "Hot-Dog" now matches
    assert evalai_question_accuracy("hot dog", ["Hot-Dog"] * 10) == 1.0


def test_gqa_exact_match_after_normalization():
    assert gqa_question_accuracy("The Left.", ["left"]) == 1.0
    assert gqa_question_accuracy("left side", ["left"]) == 0.0


def test_score_open_ended_breakdowns_missing_and_failed():
    items = [
        OpenEndedItem("1", ["yes"] * 10, {"answer_type": "yes/no", "question_type": "is the"}),
        OpenEndedItem("2", ["2"] * 10, {"answer_type": "number", "question_type": "how many"}),
        OpenEndedItem("3", ["red"] * 10, {"answer_type": "other", "question_type": "what color"}),
        OpenEndedItem("4", ["cat"] * 2 + ["dog"] * 8, {"answer_type": "other", "question_type": "what"}),
    ]
    result = score_open_ended(
        items, {"1": "Yes", "2": "two", "4": "cat"}, vqav2_question_accuracy, failed={"3": "missing image x.png"}
    )
    assert result["accuracy"] == 65.0  # (1 + 1 + 0 + 0.6) / 4
    assert result["per_answer_type"] == {"number": 100.0, "other": 30.0, "yes/no": 100.0}
    assert result["per_question_type"]["what"] == 60.0
    assert result["failed"] == [{"question_id": "3", "error": "missing image x.png"}]
    assert result["missing_predictions"] == []
    result = score_open_ended(items, {"1": "yes"}, vqav2_question_accuracy)
    assert result["accuracy"] == 25.0
    assert result["missing_predictions"] == ["2", "3", "4"]


def test_rounding_to_two_decimals():
    items = [OpenEndedItem(str(i), ["a1"] * 10) for i in range(3)]
    assert score_open_ended(items, {"0": "a1"}, vqav2_question_accuracy)["accuracy"] == 33.33
