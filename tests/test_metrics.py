"""The official scoring rules, on cases worked out by hand.

The adversarial cases are those where the superseded rules (the older ``vqaEval.py``: prediction
always processed, answers only punctuation-stripped; GQA and VizWiz with VQA/EvalAI processing on
both sides) and the current official ones disagree; each expected score is computed in the
comment next to it.
"""

from __future__ import annotations

import pytest

from vlm_core.eval.metrics import (
    SCORERS,
    OpenEndedItem,
    gqa_question_accuracy,
    leave_one_out_accuracy,
    score_open_ended,
    textvqa_question_accuracy,
    vizwiz_question_accuracy,
    vqaeval_accuracy,
    vqav2_question_accuracy,
)
from vlm_core.eval.normalize import (
    VIZWIZ_CONTRACTIONS,
    evalai_normalize,
    process_punctuation,
    vqa_normalize,
)


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
    ],
)
def test_vqa_normalization(raw, normalized):
    assert vqa_normalize(raw) == normalized


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


# ----------------------------------------------------------------------------- VQAv2


def test_current_vqaeval_compares_unanimous_answers_verbatim():
    # The case: ten "t-shirt". Old rule: prediction processed to "t shirt", answers
    # compared verbatim -> 0. Current rule: unanimous, nothing processed, "t-shirt" == "t-shirt" -> 1.
    assert vqaeval_accuracy("t-shirt", ["t-shirt"] * 10) == 1.0
    # and nothing is processed on either side: "two" vs ten "2" -> 0 (old rule: 1)
    assert vqaeval_accuracy("two", ["2"] * 10) == 0.0


def test_current_vqaeval_normalizes_both_sides_when_answers_disagree():
    # nine "the dog", one "cat"; prediction "the dog". Old rule: prediction -> "dog", answers
    # only punctuation-processed ("the dog") -> 0 matches -> 0. Current: all become "dog"/"cat":
    # leaving out a "dog" leaves 8 matches (min(1, 8/3) = 1), leaving out "cat" leaves 9 -> 1.0
    assert vqaeval_accuracy("the dog", ["the dog"] * 9 + ["cat"]) == 1.0
    # nine "two", one "2"; prediction "two". Old rule: prediction "2" matches one answer ->
    # leave-one-out (9 x 1/3 + 1 x 0) / 10 = 0.3. Current: all ten become "2" -> 1.0
    assert vqaeval_accuracy("two", ["two"] * 9 + ["2"]) == 1.0
    # both sides strip newlines/tabs first: "\tyes\n" == "yes"
    assert vqaeval_accuracy("\tyes\n", ["yes"] * 10) == 1.0


def test_vqav2_is_evalai_processing_then_the_current_rule():
    # EvalAI turns "Two" into "2": unanimous "2" now matches (the pure current rule gives 0)
    assert vqav2_question_accuracy("Two", ["2"] * 10) == 1.0
    assert vqav2_question_accuracy("The Dog.", ["dog"] * 10) == 1.0  # lower, period, article
    # EvalAI also splits the hyphen of the prediction ("t shirt"), so a unanimous, verbatim
    # "t-shirt" is missed, as on the EvalAI server LLaVA-1.5 submits to -> 0
    assert vqav2_question_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    # six "2 dogs", four "two dogs": disagree -> all "2 dogs"; EvalAI("Two dogs?") = "2 dogs" -> 1.0
    assert vqav2_question_accuracy("Two dogs?", ["2 dogs"] * 6 + ["two dogs"] * 4) == 1.0


# ----------------------------------------------------------------------------- TextVQA (m4c, kept)


def test_textvqa_processes_both_sides_with_evalai():
    assert evalai_normalize("The Cat's toy!") == "cat 's toy"
    assert evalai_normalize("1,000,000") == "1000000"
    # both sides are processed, so a unanimous "Hot-Dog" matches "hot dog"
    assert textvqa_question_accuracy("hot dog", ["Hot-Dog"] * 10) == 1.0


# ----------------------------------------------------------------------------- VizWiz


def test_vizwiz_processes_the_prediction_only():
    # answers stay as annotated: ten "Hot Dog" never match a processed prediction ("hot dog")
    # -> 0 (old rule, EvalAI on both sides: 1)
    assert vizwiz_question_accuracy("hot dog", ["Hot Dog"] * 10) == 0.0
    # the prediction is normalized: "Two." -> "2" matches seven "2" (leave-one-out: 7 x 1 for
    # the three "3" left out, 7 x min(1, 6/3) = 1) -> 1.0
    assert vizwiz_question_accuracy("Two.", ["2"] * 7 + ["3"] * 3) == 1.0
    # "unanswerable" keeps its spelling: the LLaVA instruction's "Unanswerable" -> lowercase
    assert vizwiz_question_accuracy("Unanswerable", ["unanswerable"] * 10) == 1.0


def test_vizwiz_contraction_table_has_curly_apostrophes():
    # VizWiz's table writes "dont" -> "don’t" (U+2019), except a few entries kept straight
    assert VIZWIZ_CONTRACTIONS["dont"] == "don\u2019t"
    assert VIZWIZ_CONTRACTIONS["weve"] == "we've" and VIZWIZ_CONTRACTIONS["cant"] == "can't"
    assert VIZWIZ_CONTRACTIONS["couldn'tve"] == "couldn\u2019t\u2019ve"
    # EvalAI runs first and already gives "don't" (straight), which VizWiz's table leaves alone:
    # it matches ten straight "don't"
    assert vizwiz_question_accuracy("dont", ["don't"] * 10) == 1.0


# ----------------------------------------------------------------------------- GQA


@pytest.mark.parametrize(
    ("prediction", "gold", "score"),
    [
        ("left.", "left", 1.0),  # LLaVA: strip, rstrip('.'), lower
        (" Yes ", "yes", 1.0),
        ("The table.", "table", 0.0),  # no article removal (VQA normalization: 1)
        ("two", "2", 0.0),  # no number words (VQA normalization: 1)
        ("hot-dog", "hot dog", 0.0),  # no punctuation processing
        ("left side", "left", 0.0),
    ],
)
def test_gqa_is_a_raw_string_match(prediction, gold, score):
    assert gqa_question_accuracy(prediction, [gold]) == score


# ----------------------------------------------------------------------------- aggregation


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


def test_every_scorer_names_its_reference_and_version():
    for name in SCORERS:
        scorer = SCORERS.get(name)
        assert scorer.version and scorer.reference
        assert scorer.describe() == {"name": name, "version": scorer.version, "reference": scorer.reference}
