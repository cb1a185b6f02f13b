"""Answer normalization exactly as the official evaluators do it, quirks included.

Three published variants share one set of tables:

- GT-Vision-Lab's ``vqaEval.py`` (VQAv2, current version): :func:`vqa_normalize` (punctuation,
  then digits / articles / contractions) runs on the prediction *and* the ten answers, but only
  when the answers disagree (see :mod:`vlm_core.eval.metrics`).
- The EvalAI answer processor (:func:`evalai_normalize`; TextVQA's m4c evaluator, LLaVA's
  submission scripts): lowercases first, splits "'s", and has a greedier comma rule.
- The VizWiz VQA API's ``vqaEval.py`` (:func:`vizwiz_normalize`): the VQA steps on the
  prediction only, with its own contraction table (curly apostrophes).

The quirks are deliberate: numbers must stay comparable with published ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# The official lookbehind is mistyped as a lookahead "(?!<=\d)": in effect every period that is
# not followed by a digit is removed. Kept as published.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
VQA_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")

# Both evaluators call ``PERIOD_STRIP.sub("", text, re.UNICODE)``: the flag lands in the *count*
# argument, so at most 32 periods are removed.
_PERIOD_COUNT = int(re.UNICODE)


# The VizWiz API writes its table with curly apostrophes, except in these entries, which kept
# straight ones (keys) or straight values.
_VIZWIZ_STRAIGHT_KEYS = frozenset({"couldn'tve", "hadn'tve"})
_VIZWIZ_STRAIGHT_VALUES = frozenset({"aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"})


def _curly(text: str) -> str:
    return text.replace("'", "\u2019")


VIZWIZ_CONTRACTIONS = {
    (k if k in _VIZWIZ_STRAIGHT_KEYS else _curly(k)): (v if k in _VIZWIZ_STRAIGHT_VALUES else _curly(v))
    for k, v in CONTRACTIONS.items()
}


def process_punctuation(text: str, comma_strip: re.Pattern[str] = VQA_COMMA_STRIP) -> str:
    """Remove punctuation marks that touch a space (or any, when a digit group uses commas);
    replace the others by a space. The test looks at the *input*, the edits pile up on the output."""
    out = text
    has_digit_comma = comma_strip.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str, contractions: Mapping[str, str] = CONTRACTIONS) -> str:
    """Lowercase, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def strip_whitespace(answer: str) -> str:
    """What every evaluator does first: newlines and tabs become spaces, then ``strip()``."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def vqa_normalize(answer: str) -> str:
    """``vqaEval.py``'s processing of one answer (prediction or ground truth alike)."""
    return process_digit_article(process_punctuation(answer))


def evalai_normalize(answer: str) -> str:
    """EvalAI's answer processor (m4c evaluator, LLaVA's ``convert_*_for_submission``)."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = process_punctuation(strip_whitespace(answer), comma_strip=EVALAI_COMMA_STRIP)
    return process_digit_article(answer)


def vizwiz_normalize(prediction: str) -> str:
    """The VizWiz API's processing of a prediction (the ground truth stays as annotated)."""
    return process_digit_article(process_punctuation(strip_whitespace(prediction)), VIZWIZ_CONTRACTIONS)
