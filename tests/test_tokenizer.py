"""The on-the-fly byte-level BPE tokenizer."""

from __future__ import annotations

from vlm_core.models.tokenizer import train_bpe_tokenizer

CORPUS = [
    "What colour is the shape in the top left?",
    "The red circle is in the top left corner.",
    "A blue square sits at the bottom right.",
    "Is there a green triangle? Answer with a single word.",
] * 3 + ["red", "blue", "green", "circle", "square", "triangle", "yes", "no", "top left"]
SPECIAL = ["<|im_start|>", "<|im_end|>"]


def test_training_is_deterministic():
    a = train_bpe_tokenizer(CORPUS, 400, SPECIAL)
    b = train_bpe_tokenizer(list(CORPUS), 400, SPECIAL)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) <= 400


def test_special_tokens_have_fixed_ids_and_stay_whole():
    tok = train_bpe_tokenizer(CORPUS, 400, SPECIAL)
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert tok.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<image>", *SPECIAL]) == [0, 1, 2, 3, 4, 5, 6]
    ids = tok("<|im_start|>user\n<image><image>red?<|im_end|>", add_special_tokens=True).input_ids
    assert ids[0] == 5 and ids[-1] == 6 and ids.count(4) == 2  # nothing added automatically, <image> whole


def test_bare_answers_are_single_tokens():
    tok = train_bpe_tokenizer(CORPUS, 400, SPECIAL)
    for word in ["red", "blue", "green", "circle", "square", "triangle", "yes", "no"]:
        assert len(tok(word).input_ids) == 1, word
        assert len(tok(" " + word).input_ids) == 1, word  # after "ASSISTANT:" the answer follows a space


def test_round_trip_of_arbitrary_text():
    tok = train_bpe_tokenizer(CORPUS, 400, SPECIAL)
    text = "Zebra ünïcödé 123 — unseen words\n\ttabs"
    assert tok.decode(tok(text).input_ids) == text
