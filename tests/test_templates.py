"""Conversation templates: exact token ids and loss masks, pinned on a deterministic tokenizer."""

from __future__ import annotations

import pytest

from tests.fixtures.data.helpers import make_tokenizer
from vlm_core.data.templates import IGNORE_INDEX, TEMPLATES, VICUNA_SYSTEM

IMG = 3  # id of <image> in the test tokenizer
CONV = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Is it big?"},
    {"from": "gpt", "value": "yes"},
]

# name -> (input ids, the [start, end) spans that carry the loss, the decoded text)
PINS = {
    "vicuna_v1": (
        [1, 43, 78, 302, 291, 368, 23, 230, 354, 35, 230, 3, 3, 208, 315, 277, 321, 290, 91, 326, 273, 335, 40,
         230, 346, 352, 345, 61, 35, 341, 2, 354, 35, 230, 349, 328, 302, 373, 40, 230, 346, 352, 345, 61, 35,
         230, 98, 282, 2],
        [(29, 31), (45, 49)],
        "<s>Be brief. USER: <image><image>\nWhat colour is the shape? ASSISTANT: red</s>"
        "USER: Is it big? ASSISTANT: yes</s>",
    ),
    "llama2": (
        [1, 68, 337, 70, 329, 338, 312, 208, 43, 78, 302, 291, 368, 23, 208, 311, 24, 338, 312, 208, 208, 3, 3,
         208, 315, 277, 321, 290, 91, 326, 273, 335, 40, 323, 24, 337, 70, 341, 2, 1, 68, 337, 70, 230, 349, 328,
         302, 373, 40, 323, 24, 337, 70, 230, 98, 282, 2],
        [(37, 39), (53, 57)],
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image><image>\nWhat colour is the shape? [/INST] red</s>"
        "<s>[INST] Is it big? [/INST] yes</s>",
    ),
    "chatml": (
        [4, 92, 98, 393, 369, 208, 43, 78, 302, 291, 368, 23, 5, 208, 4, 272, 271, 208, 3, 3, 208, 315, 277, 321,
         290, 91, 326, 273, 335, 40, 5, 208, 4, 74, 275, 269, 285, 208, 284, 77, 5, 208, 4, 272, 271, 208, 349,
         328, 302, 373, 40, 5, 208, 4, 74, 275, 269, 285, 208, 98, 282, 5, 208],
        [(38, 41), (59, 62)],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image><image>\nWhat colour is the shape?"
        "<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nIs it big?<|im_end|>\n"
        "<|im_start|>assistant\nyes<|im_end|>\n",
    ),
    "llama3": (
        [6, 7, 92, 98, 393, 369, 8, 208, 208, 43, 78, 302, 291, 368, 23, 9, 7, 272, 271, 8, 208, 208, 3, 3, 208,
         315, 277, 321, 290, 91, 326, 273, 335, 40, 9, 7, 74, 275, 269, 285, 8, 208, 208, 284, 77, 9, 7, 272,
         271, 8, 208, 208, 349, 328, 302, 373, 40, 9, 7, 74, 275, 269, 285, 8, 208, 208, 98, 282, 9],
        [(43, 46), (66, 69)],
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<image><image>\nWhat colour is the shape?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nIs it big?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nyes<|eot_id|>",
    ),
}

# Qwen's ChatML as a jinja chat template, for the `tokenizer` template.
CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def labels_from(ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


@pytest.mark.parametrize("name", sorted(PINS))
def test_pinned_ids_and_loss_mask(tok, name):
    ids, spans, text = PINS[name]
    input_ids, labels = TEMPLATES.get(name).encode(CONV, tok, IMG, 2)
    assert input_ids == ids
    assert labels == labels_from(ids, spans)
    assert tok.decode(input_ids) == text


@pytest.mark.parametrize("name", sorted(PINS))
def test_loss_is_on_replies_and_their_end_token_only(tok, name):
    template = TEMPLATES.get(name)
    _, labels = template.encode(CONV, tok, IMG, 2)
    trained = tok.decode([t for t in labels if t != IGNORE_INDEX])
    stop = template.stop_string(tok)
    assert trained.replace(" ", "") == f"red{stop}yes{stop}"
    assert template.stop_token_id(tok) == tok.convert_tokens_to_ids(stop)


def test_plain_keeps_only_images_then_caption_and_eos(tok):
    conv = [{"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": "red"}]
    input_ids, labels = TEMPLATES.get("plain").encode(conv, tok, IMG, 2)
    assert input_ids == [3, 3, 284, 77, 2]  # <image> <image> r ed </s>
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 284, 77, 2]
    assert TEMPLATES.get("plain").prompt_ids(conv[:1], tok, IMG, 2) == [3, 3]


def test_default_system_prompts(tok):
    conv = CONV[1:3]
    text = tok.decode(TEMPLATES.get("vicuna_v1").encode(conv, tok, IMG, 1)[0])
    assert text.startswith(f"<s>{VICUNA_SYSTEM} USER: <image>\n")
    text = tok.decode(TEMPLATES.get("chatml").encode(conv, tok, IMG, 1)[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    text = tok.decode(TEMPLATES.get("llama3").encode(conv, tok, IMG, 1)[0])
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")


@pytest.mark.parametrize("name", sorted(PINS) + ["plain"])
def test_generation_prompt_is_the_training_prefix(tok, name):
    """What the model sees at generation equals what it saw in training up to the reply."""
    conv = CONV[1:] if name == "plain" else CONV
    template = TEMPLATES.get(name)
    input_ids, labels = template.encode(conv[:2] if name == "plain" else conv, tok, IMG, 3)
    prompt = template.prompt_ids(conv[:-1] if name != "plain" else conv[:1], tok, IMG, 3)
    first_trained_of_last_reply = max(
        i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)
    )
    assert prompt == input_ids[:first_trained_of_last_reply]


def test_image_placeholder_is_replaced_not_stripped(tok):
    """str.strip("<image>") would also eat the letters of "image" and "game" at the edges."""
    conv = [{"from": "human", "value": "<image>\nimage game"}, {"from": "gpt", "value": "game"}]
    input_ids, labels = TEMPLATES.get("vicuna_v1").encode(conv, tok, IMG, 4)
    assert input_ids.count(IMG) == 4
    text = tok.decode([t for t in input_ids if t != IMG])
    assert "USER: \nimage game ASSISTANT: game</s>" in text
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == " game</s>"


def test_image_placeholder_stays_where_written(tok):
    conv = [{"from": "human", "value": "Is it big? <image>"}, {"from": "gpt", "value": "yes"}]
    input_ids, _ = TEMPLATES.get("chatml").encode(conv, tok, IMG, 2)
    text = tok.decode(input_ids)
    assert "user\nIs it big? <image><image><|im_end|>" in text


def test_tokenizer_chat_template_matches_the_fixed_chatml(tok):
    chat_tok = make_tokenizer(chat_template=CHATML_JINJA)
    ours = TEMPLATES.get("chatml").encode(CONV, tok, IMG, 2)
    via_tokenizer = TEMPLATES.get("tokenizer").encode(CONV, chat_tok, IMG, 2)
    assert via_tokenizer == ours
    assert TEMPLATES.get("tokenizer").prompt_ids(CONV[:-1], chat_tok, IMG, 2) == TEMPLATES.get("chatml").prompt_ids(
        CONV[:-1], tok, IMG, 2
    )


def test_tokenizer_template_needs_a_chat_template(tok):
    with pytest.raises(ValueError, match="chat_template"):
        TEMPLATES.get("tokenizer").encode(CONV, tok, IMG, 2)


def test_missing_special_tokens_are_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"needs special tokens \['<\|im_start\|>', '<\|im_end\|>'\]"):
        TEMPLATES.get("chatml").encode(CONV, bare, 0, 1)


def test_turns_must_alternate(tok):
    with pytest.raises(ValueError, match="turn 1 is from 'user', expected 'assistant'"):
        TEMPLATES.get("vicuna_v1").encode([CONV[1], CONV[3]], tok, IMG, 1)


def test_unknown_template_lists_known():
    with pytest.raises(KeyError, match="known: chatml, llama2, llama3, plain, tokenizer, vicuna_v1"):
        TEMPLATES.get("vicuna")
