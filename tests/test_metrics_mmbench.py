"""CircularEval, VLMEvalKit's exact-matching answer extraction and LLaVA-1.5's MMBench prompts,
with hand-worked cases (the comments give VLMEvalKit's reasoning; "old" is this project's former
extraction, which these cases show to disagree)."""

from __future__ import annotations

import pytest

from vlm_core.eval.mmbench import (
    MCQuestion,
    expand_circular,
    extract_choice,
    rotations,
    score_circular,
)
from vlm_core.eval.prompts import PROMPTS

OPTIONS = (("A", "cat"), ("B", "dog"), ("C", "bird"))


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("B. dog", "B"),
        ("The answer is B", "B"),  # one letter among the last four words
        ("The answer is (C).", "C"),
        ("dog", "B"),  # the text of exactly one option
        ("It is a bird.", "C"),  # lowercase "a" is no option letter; "bird" is an option text
        ("I think A or B", None),  # two letters, no option text
        ("A cat sits on a mat", "A"),  # "A" is word 0 of 6 (not in the last four); the text rule finds "cat"
        ("A cat and a dog", None),  # two option texts
        ("no idea", None),
        ("D", None),  # not an option
        # where VLMEvalKit and the old extraction disagree:
        ("answer: c", None),  # letters are matched case-sensitively (old: C)
        ("答案是B", None),  # no Chinese patterns: "答案是B" is one word (old: B)
        ("A dog is here", "A"),  # the article guard only logs under VERBOSE: "A" stands alone (old: B)
        ("B is right because the image clearly shows a dog", None),  # the letter is not among the last four words (old: B)
        ("It could be a cat, I am really not sure about that", None),  # too long for the text rule (old: A)
        ("The correct answer is **B**. Here is why: the animal has four legs and barks loudly", "B"),  # "answer is X"
        ("Cannot determine the answer", "Z"),  # a refusal: VLMEvalKit's "Z", never right
    ],
)
def test_extract_choice_is_vlmevalkits_can_infer(prediction, letter):
    assert extract_choice(prediction, OPTIONS) == letter


def test_rotations_move_the_gold_letter():
    q = MCQuestion(index=7, question="What animal?", options=OPTIONS, answer="B")
    passes = rotations(q)
    assert [p.index for p in passes] == [7, 1_000_007, 2_000_007]
    assert [p.options for p in passes] == [
        OPTIONS,
        (("A", "dog"), ("B", "bird"), ("C", "cat")),
        (("A", "bird"), ("B", "cat"), ("C", "dog")),
    ]
    assert [p.answer for p in passes] == ["B", "A", "C"]
    assert {p.group for p in passes} == {7}


def test_expand_keeps_copies_already_in_the_file():
    base = MCQuestion(index=1, question="q", options=OPTIONS, answer="A")
    copy = MCQuestion(index=1_000_001, question="q", options=OPTIONS[1:] + OPTIONS[:1], answer="C")
    assert expand_circular([base, copy]) == [base, copy]
    assert len(expand_circular([base])) == 3


def test_circular_correct_only_if_every_rotation_is():
    q1 = MCQuestion(1, "q1", OPTIONS, "B", category="animals", l2_category="perception")
    q2 = MCQuestion(2, "q2", OPTIONS, "A", category="animals", l2_category="reasoning")
    passes = expand_circular([q1, q2])
    # q1: right in all three rotations (B, A, C); q2: right only in the original order.
    predictions = {"1": "B", "1000001": "A", "2000001": "C", "2": "A", "1000002": "A", "2000002": "no idea"}
    result = score_circular(passes, predictions)
    assert result["circular_accuracy"] == 50.0
    assert result["vanilla_accuracy"] == 100.0
    assert result["accuracy"] == 50.0
    assert result["num_questions"] == 2 and result["num_passes"] == 6
    assert result["per_l2_category"] == {
        "perception": {"circular": 100.0, "vanilla": 100.0},
        "reasoning": {"circular": 0.0, "vanilla": 100.0},
    }
    assert result["unmatched"] == [2000002]


def test_missing_and_failed_passes_count_wrong():
    passes = expand_circular([MCQuestion(3, "q", OPTIONS, "C")])
    result = score_circular(passes, {"3": "C", "1000003": "B"}, failed={"2000003": "unreadable image"})
    assert result["circular_accuracy"] == 0.0 and result["vanilla_accuracy"] == 100.0
    assert result["failed"] == [{"question_id": "2000003", "error": "unreadable image"}]


def test_refusal_counts_wrong_but_is_matched():
    passes = expand_circular([MCQuestion(4, "q", OPTIONS, "A")])
    predictions = {"4": "Cannot determine the answer", "1000004": "C", "2000004": "B"}
    result = score_circular(passes, predictions)
    assert result["circular_accuracy"] == 0.0 and result["unmatched"] == []


def test_llava_prompts_english_chinese_and_missing_hint():
    options = (("A", "猫"), ("B", "狗"))
    cn = PROMPTS.get("llava15_mmbench_cn").format(question="图中是什么动物？", options=options, hint=None)
    assert cn == "图中是什么动物？\nA. 猫\nB. 狗\n请直接回答选项字母。"
    en = PROMPTS.get("llava15_mmbench_en").format(question="What animal?", options=OPTIONS, hint="A pet photo.")
    assert en == (
        "A pet photo.\nWhat animal?\nA. cat\nB. dog\nC. bird\n"
        "Answer with the option's letter from the given choices directly."
    )
