"""Answer normalization exactly as the official evaluators do it.

Two published variants share their tables:

- ``vqa_*``: GT-Vision-Lab's ``vqaEval.py`` (VQAv2). The prediction is stripped, then
  punctuation- and digit/article-processed; ground-truth answers get punctuation processing only
  (and only when the ten answers disagree — see :mod:`vlm_core.eval.metrics`).
- :func:`evalai_normalize`: the EvalAI answer processor used by the TextVQA (m4c) evaluator,
  applied to prediction and answers alike; it lowercases first and has a greedier comma rule.

The quirks are deliberate: numbers must stay comparable with published ones.
"""

from __future__ import annotations

import re

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


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def vqa_normalize_prediction(answer: str) -> str:
    """The prediction side of ``vqaEval.py``."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_normalize_ground_truth(answer: str) -> str:
    """The ground-truth side of ``vqaEval.py`` (applied only when the ten answers disagree)."""
    return process_punctuation(answer)


def evalai_normalize(answer: str) -> str:
    """EvalAI's answer processor (TextVQA / m4c evaluator), for predictions and answers alike."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    answer = process_punctuation(answer, comma_strip=EVALAI_COMMA_STRIP)
    return process_digit_article(answer)
