"""Conversation templates against the reference implementations, token for token.

LLaVA's templates are checked against `Llava`, a re-implementation in this file of LLaVA's
published preprocessing (``llava/train/train.py``: ``preprocess_multimodal``, ``preprocess_v1``,
``preprocess_llama_2``, ``preprocess_plain``; ``llava/conversation.py``: ``get_prompt``;
``llava/mm_utils.py``: ``tokenizer_image_token``), including its length arithmetic for the label
mask. It runs on two tokenizers: a SentencePiece-style Llama tokenizer (transformers 5's
``LlamaTokenizer``: Metaspace, byte fallback, BOS added by the post-processor, no "▁" after a
special token) whose vocabulary is built here with Llama's relevant property ("USER" is one
piece, "▁USER" two), and the project's byte-level BPE. ChatML and Llama-3 are checked against
transformers' ``apply_chat_template`` with Qwen2's and Meta's published chat templates.
"""

from __future__ import annotations

import re

import pytest

from tests.fixtures.data.helpers import make_tokenizer
from vlm_core.data.templates import IGNORE_INDEX, LLAVA_LLAMA2_SYSTEM, TEMPLATES, VICUNA_SYSTEM

IMAGE_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX; our templates take the image id as an argument
IMG = 3  # id of <image> in the byte-level test tokenizer

# ----------------------------------------------------------------------------- an independent LLaVA


class Llava:
    """LLaVA-1.5's preprocessing, step by step as published, for one tokenizer.

    ``tokenize(text)`` is LLaVA's ``tokenizer(text).input_ids`` (BOS first). ``non_legacy`` is
    LLaVA's ``not tokenizer.legacy``: the tokenizer adds "▁" to a fresh string but not after a
    special token, so a round tokenized alone is one token longer than inside the conversation.
    """

    def __init__(self, tokenizer, adds_bos: bool, non_legacy: bool) -> None:
        self.tokenizer, self.adds_bos, self.non_legacy = tokenizer, adds_bos, non_legacy

    def tokenize(self, text: str) -> list[int]:
        if self.adds_bos:
            return self.tokenizer(text)["input_ids"]
        return [self.tokenizer.bos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenizer_image_token(self, prompt: str) -> list[int]:
        chunks = [self.tokenize(chunk) for chunk in prompt.split("<image>")]
        out: list[int] = []
        offset = 0
        if chunks and chunks[0] and chunks[0][0] == self.tokenizer.bos_token_id:
            offset = 1
            out.append(chunks[0][0])
        for n, chunk in enumerate(chunks):
            if n:
                out.append(IMAGE_INDEX)
            out.extend(chunk[offset:])
        return out

    @staticmethod
    def preprocess_multimodal(conversation: list[dict]) -> list[dict]:
        out = []
        for sentence in conversation:
            value = sentence["value"]
            if "<image>" in value:
                value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
            out.append({**sentence, "value": value})
        return out

    # conversation.py's get_prompt, for the three separator styles used here

    @staticmethod
    def prompt_two(system: str, messages: list[tuple[str, str | None]]) -> str:
        seps = [" ", "</s>"]
        text = system + seps[0]
        for i, (role, message) in enumerate(messages):
            text += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return text

    @staticmethod
    def prompt_llama_2(system: str, messages: list[tuple[str, str | None]]) -> str:
        text = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue
            if i == 0:
                message = (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else "") + message
            text += f"<s>[INST] {message} [/INST]" if i % 2 == 0 else f" {message} </s>"
        return text.lstrip("<s>")  # a character set, as published (the text starts with "[")

    def _ids(self, prompt: str, has_image: bool) -> list[int]:
        return self.tokenizer_image_token(prompt) if has_image else self.tokenize(prompt)

    def _mask(self, prompt: str, ids: list[int], sep: str, has_image: bool, adjust: bool) -> list[int]:
        target = list(ids)
        cur = 1
        target[:cur] = [IGNORE_INDEX] * cur
        for i, rou in enumerate(prompt.split("</s>")):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            round_len = len(self._ids(rou, has_image))
            instruction_len = len(self._ids(parts[0], has_image)) - 2
            if adjust and i != 0 and self.non_legacy:
                round_len -= 1
                instruction_len -= 1
            target[cur : cur + instruction_len] = [IGNORE_INDEX] * len(target[cur : cur + instruction_len])
            cur += round_len
        target[cur:] = [IGNORE_INDEX] * len(target[cur:])
        if cur != len(ids):  # LLaVA's "tokenization mismatch": the sample trains on nothing
            target = [IGNORE_INDEX] * len(ids)
        return target

    def _messages(self, conversation: list[dict]) -> tuple[list[tuple[str, str | None]], bool]:
        has_image = any("<image>" in s["value"] for s in conversation)
        if has_image:
            conversation = self.preprocess_multimodal(conversation)
        roles = {"human": "USER", "gpt": "ASSISTANT"}
        return [(roles[s["from"]], s["value"]) for s in conversation], has_image

    def preprocess_v1(self, conversation: list[dict]) -> tuple[list[int], list[int]]:
        messages, has_image = self._messages(conversation)
        prompt = self.prompt_two(VICUNA_SYSTEM, messages)
        ids = self._ids(prompt, has_image)
        return ids, self._mask(prompt, ids, " ASSISTANT: ", has_image, adjust=True)

    def preprocess_llama_2(self, conversation: list[dict]) -> tuple[list[int], list[int]]:
        messages, has_image = self._messages(conversation)
        prompt = self.prompt_llama_2(LLAVA_LLAMA2_SYSTEM, messages)
        ids = self._ids(prompt, has_image)
        return ids, self._mask(prompt, ids, "[/INST] ", has_image, adjust=False)

    def preprocess_plain(self, conversation: list[dict]) -> tuple[list[int], list[int]]:
        assert len(conversation) == 2 and "<image>" in conversation[0]["value"]
        ids = self.tokenizer_image_token("<image>" + conversation[1]["value"] + "\n")
        masked = len(self.tokenizer_image_token("<image>"))
        return ids, [IGNORE_INDEX] * masked + ids[masked:]

    # model_vqa_loader.py: the prompt a LLaVA checkpoint is evaluated with

    def eval_prompt(self, template: str, question: str) -> list[int]:
        messages = [("USER", "<image>\n" + question), ("ASSISTANT", None)]
        if template == "vicuna_v1":
            return self.tokenizer_image_token(self.prompt_two(VICUNA_SYSTEM, messages))
        return self.tokenizer_image_token(self.prompt_llama_2(LLAVA_LLAMA2_SYSTEM, messages))


# ----------------------------------------------------------------------------- tokenizers


CORPUS = [
    VICUNA_SYSTEM,
    LLAVA_LLAMA2_SYSTEM,
    "What colour is the shape? red. Is it big? yes. Describe the image briefly. a red circle at the top left",
    "image game INST SYS : [ ] / < >",
]


def llama_style_tokenizer():
    """A transformers 5 ``LlamaTokenizer`` over a small vocabulary laid out like Llama's:
    ``<unk> <s> </s>``, 256 byte-fallback pieces, then characters and word pieces with their
    "▁". As in Llama's vocabulary, "USER" is one piece and "▁USER" is not ("▁" + "USER")."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    merges: list[tuple[str, str]] = []

    def add(piece: str) -> None:
        vocab.setdefault(piece, len(vocab))

    def chain(word: str) -> None:
        for ch in word:
            add(ch)
        for k in range(1, len(word)):
            if (word[:k], word[k]) not in merges:
                merges.append((word[:k], word[k]))
            add(word[: k + 1])

    add("▁")
    for ch in sorted(set("".join(CORPUS)) - {" ", "\n"}):  # "\n" stays a byte-fallback piece, as in Llama
        add(ch)
    for word in ["USER", "▁US", "ER", "▁ASSISTANT"]:
        chain(word)
    for word in sorted(set(re.findall(r"[A-Za-z]+", " ".join(CORPUS)))):
        if word not in ("USER", "ASSISTANT"):
            chain("▁" + word)
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


@pytest.fixture(scope="module")
def llama_tok():
    tok = llama_style_tokenizer()
    # the properties LLaVA's arithmetic was written for (transformers 5, legacy=False)
    assert tok.legacy is False
    assert tok("A")["input_ids"][0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(tok("</s>USER")["input_ids"][1:]) == ["</s>", "USER"]
    assert len(tok("USER", add_special_tokens=False)["input_ids"]) == 2  # "▁" "USER"
    return tok


@pytest.fixture(scope="module")
def bpe_tok():
    return make_tokenizer()


def _reference(name: str):
    if name == "llama":
        return Llava(llama_style_tokenizer(), adds_bos=True, non_legacy=True)
    # the byte-level BPE adds no BOS of its own and no prefix anywhere: LLaVA's legacy branch
    return Llava(make_tokenizer(), adds_bos=False, non_legacy=False)


@pytest.fixture(scope="module", params=["llama", "bpe"])
def llava(request):
    return _reference(request.param)


# ----------------------------------------------------------------------------- LLaVA's templates

Q1, A1, Q2, A2 = "What colour is the shape?", "red", "Is it big?", "yes"
SAMPLES = {
    "single": [{"from": "human", "value": f"<image>\n{Q1}"}, {"from": "gpt", "value": A1}],
    "multi": [
        {"from": "human", "value": f"<image>\n{Q1}"}, {"from": "gpt", "value": A1},
        {"from": "human", "value": Q2}, {"from": "gpt", "value": A2},
    ],
    "text_only": [{"from": "human", "value": Q1}, {"from": "gpt", "value": A1}],
    "text_only_multi": [
        {"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
        {"from": "human", "value": Q2}, {"from": "gpt", "value": A2},
    ],
    "image_after_text": [{"from": "human", "value": f"{Q1}\n<image>"}, {"from": "gpt", "value": A1}],
    "image_mid_text": [{"from": "human", "value": f"Look: <image> {Q1}"}, {"from": "gpt", "value": "a red circle at the top left"}],
}  # fmt: skip
PREPROCESS = {"vicuna_v1": "preprocess_v1", "llava_llama_2": "preprocess_llama_2"}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("template", sorted(PREPROCESS))
def test_llava_templates_equal_llava_preprocessing(llava, template, sample):
    conversation = SAMPLES[sample]
    ids, labels = getattr(llava, PREPROCESS[template])(conversation)
    assert any(label != IGNORE_INDEX for label in labels), "LLaVA's masking lost the sample on this tokenizer"
    assert TEMPLATES.get(template).encode(conversation, llava.tokenizer, IMAGE_INDEX, 1) == (ids, labels)


@pytest.mark.parametrize("sample", ["single", "image_after_text", "image_mid_text"])
def test_plain_equals_llava_preprocess_plain(llava, sample):
    conversation = SAMPLES[sample]
    expected = llava.preprocess_plain(conversation)
    assert TEMPLATES.get("plain").encode(conversation, llava.tokenizer, IMAGE_INDEX, 1) == expected
    assert expected[0][:2] == [llava.tokenizer.bos_token_id, IMAGE_INDEX]  # BOS, then the image


@pytest.mark.parametrize("template", sorted(PREPROCESS))
def test_generation_prompt_equals_llava_eval_prompt(llava, template):
    ours = TEMPLATES.get(template).prompt_ids([{"from": "human", "value": f"<image>\n{Q1}"}], llava.tokenizer, IMAGE_INDEX, 1)
    assert ours == llava.eval_prompt(template, Q1)


def test_llama_tokens_where_the_old_templates_differed(llama_tok):
    """The issue's cases, as token strings: BOS is an id so the system prompt starts with "▁A";
    after EOS comes "USER", not "▁USER"; the text after an image starts with "▁" "<0x0A>"."""
    ids, labels = TEMPLATES.get("vicuna_v1").encode(SAMPLES["multi"], llama_tok, IMAGE_INDEX, 1)
    pieces = ["<image>" if i == IMAGE_INDEX else llama_tok.convert_ids_to_tokens(i) for i in ids]
    assert pieces[:3] == ["<s>", "▁A", "▁chat"]
    after_eos = pieces.index("</s>") + 1
    assert pieces[after_eos : after_eos + 2] == ["USER", ":"]
    image = pieces.index("<image>")
    assert pieces[image + 1 : image + 3] == ["▁", "<0x0A>"]
    trained = [llama_tok.convert_ids_to_tokens(i) for i in labels if i != IGNORE_INDEX]
    assert trained == ["▁red", "</s>", "▁yes", "</s>"]
    ids, labels = TEMPLATES.get("llava_llama_2").encode(SAMPLES["single"], llama_tok, IMAGE_INDEX, 1)
    trained = [llama_tok.convert_ids_to_tokens(i) for i in labels if i != IGNORE_INDEX]
    assert trained == ["▁red", "▁", "</s>"]  # Meta's " {a} </s>"
    ids, labels = TEMPLATES.get("plain").encode(SAMPLES["single"], llama_tok, IMAGE_INDEX, 1)
    assert [llama_tok.convert_ids_to_tokens(i) for i in ids[2:]] == ["▁red", "<0x0A>"]
    assert TEMPLATES.get("plain").stop_token_id(llama_tok) == llama_tok.convert_tokens_to_ids("<0x0A>")


@pytest.mark.parametrize("name", ["llama", "bpe"])
def test_tokenizer_view_gives_the_wrappers_ids(llama_tok, bpe_tok, name):
    """The view calls the Rust tokenizer directly (the wrapper's bookkeeping dominated encoding
    time): ids equal transformers' `tokenizer(text, add_special_tokens=False)`, and a tokenizer
    set to split special tokens goes through the wrapper."""
    import copy

    from vlm_core.data.templates import TokenizerView

    tok = llama_tok if name == "llama" else bpe_tok
    texts = ["", " ", "USER: What colour?\n", " ASSISTANT: red</s>", "</s>USER", "a  b\t\nc", "<image>\nWhere is it?"]
    view = TokenizerView(tok)
    for text in texts:
        for after_special in (False, True):
            wrapper = tok(tok.eos_token + text if after_special else text, add_special_tokens=False)["input_ids"]
            if after_special and wrapper and wrapper[0] == tok.eos_token_id:
                wrapper = wrapper[1:]
            assert view.encode(text, after_special) == wrapper, (text, after_special)
    splitting = copy.deepcopy(tok)
    splitting.split_special_tokens = True
    assert TokenizerView(splitting).encode("</s>USER", False) == splitting("</s>USER", add_special_tokens=False)["input_ids"]
    assert tok.eos_token_id not in TokenizerView(splitting).encode("</s>USER", False)


def test_bpe_keeps_bos_as_an_id_and_ids_are_pinned(bpe_tok):
    """The project's byte-level BPE has no post-processor: the template writes BOS itself."""
    ids, labels = TEMPLATES.get("vicuna_v1").encode(SAMPLES["multi"], bpe_tok, IMG, 2)
    assert ids[0] == bpe_tok.bos_token_id == 1
    assert bpe_tok.decode(ids) == (
        f"<s>{VICUNA_SYSTEM} USER: <image><image>\n{Q1} ASSISTANT: red</s>USER: {Q2} ASSISTANT: yes</s>"
    )
    assert bpe_tok.decode([i for i in labels if i != IGNORE_INDEX]) == " red</s> yes</s>"


def test_separator_inside_a_turn_is_refused_where_llava_trains_on_nothing(llava):
    conversation = [{"from": "human", "value": "Say ASSISTANT: hi"}, {"from": "gpt", "value": "hi"}]
    _, labels = llava.preprocess_v1(conversation)
    assert set(labels) == {IGNORE_INDEX}
    with pytest.raises(ValueError, match="separator 'ASSISTANT:'"):
        TEMPLATES.get("vicuna_v1").encode(conversation, llava.tokenizer, IMAGE_INDEX, 1)


def test_training_conversation_must_end_with_a_reply(bpe_tok):
    with pytest.raises(ValueError, match="must end with a gpt turn"):
        TEMPLATES.get("vicuna_v1").encode(SAMPLES["multi"][:3], bpe_tok, IMG, 1)


def test_plain_needs_one_image_turn_and_one_caption(bpe_tok):
    for sample in ("text_only", "multi"):
        with pytest.raises(ValueError, match="one human turn with an <image>"):
            TEMPLATES.get("plain").encode(SAMPLES[sample], bpe_tok, IMG, 1)


def test_templates_that_write_bos_need_one(bpe_tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    no_bos = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="</s>")
    with pytest.raises(ValueError, match="tokenizer's bos_token, which is not set"):
        TEMPLATES.get("vicuna_v1").encode(SAMPLES["single"], no_bos, IMG, 1)


# ----------------------------------------------------------------------------- ChatML and Llama-3

# Qwen2's published chat template (tokenizer_config.json of Qwen2-*-Instruct)
QWEN2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta-Llama-3-*-Instruct's published chat template, with its bos_token written out
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = '<|begin_of_text|>' + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<image>\nWhat colour is the shape? "},
    {"role": "assistant", "content": " red"},
    {"role": "user", "content": "Is it big?"},
    {"role": "assistant", "content": "yes\n"},
]


def _chat_template_ids(tok, jinja, messages, generation=False):
    return tok.apply_chat_template(messages, chat_template=jinja, tokenize=True, add_generation_prompt=generation)[
        "input_ids"
    ]


@pytest.mark.parametrize(("template", "jinja"), [("chatml", QWEN2_JINJA), ("llama3", LLAMA3_JINJA)], ids=["chatml", "llama3"])
@pytest.mark.parametrize("system", [True, False])
def test_header_templates_equal_the_published_chat_templates(bpe_tok, template, jinja, system):
    messages = CHAT if system else CHAT[1:]
    image_id = bpe_tok.convert_tokens_to_ids("<image>")
    ids, labels = TEMPLATES.get(template).encode(messages, bpe_tok, image_id, 1)
    assert ids == _chat_template_ids(bpe_tok, jinja, messages)
    prompt = TEMPLATES.get(template).prompt_ids(messages[:-1], bpe_tok, image_id, 1)
    assert prompt == _chat_template_ids(bpe_tok, jinja, messages[:-1], generation=True)
    end = TEMPLATES.get(template).stop_string(bpe_tok)
    trained = bpe_tok.decode([i for i in labels if i != IGNORE_INDEX])
    assert trained == (f"red{end}yes{end}" if template == "llama3" else f" red{end}yes\n{end}")


# ----------------------------------------------------------------------------- all templates

CONV = [
    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Is it big?"},
    {"from": "gpt", "value": "yes"},
]


@pytest.mark.parametrize("name", ["chatml", "llama3", "llava_llama_2", "plain", "vicuna_v1"])
def test_generation_prompt_is_the_training_prefix(bpe_tok, name):
    """What the model sees at generation equals what it saw in training up to the reply."""
    conv = CONV[:2] if name == "plain" else CONV
    template = TEMPLATES.get(name)
    input_ids, labels = template.encode(conv, bpe_tok, IMG, 3)
    prompt = template.prompt_ids(conv[:-1], bpe_tok, IMG, 3)
    starts = [i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
    assert prompt == input_ids[: starts[-1]]


def test_stop_tokens(bpe_tok):
    assert TEMPLATES.get("vicuna_v1").stop_token_id(bpe_tok) == bpe_tok.eos_token_id
    assert TEMPLATES.get("chatml").stop_token_id(bpe_tok) == bpe_tok.convert_tokens_to_ids("<|im_end|>")
    assert TEMPLATES.get("plain").stop_token_id(bpe_tok) == bpe_tok.convert_tokens_to_ids("Ċ")  # "\n"


def test_default_system_prompts(bpe_tok):
    conv = CONV[:2]
    text = bpe_tok.decode(TEMPLATES.get("chatml").encode(conv, bpe_tok, IMG, 1)[0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    text = bpe_tok.decode(TEMPLATES.get("llama3").encode(conv, bpe_tok, IMG, 1)[0])
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    text = bpe_tok.decode(TEMPLATES.get("llava_llama_2").encode(conv, bpe_tok, IMG, 1)[0])
    assert text.startswith(f"<s>[INST] <<SYS>>\n{LLAVA_LLAMA2_SYSTEM}\n<</SYS>>\n\n<image>\nWhat")
    override = [{"from": "system", "value": "Be brief."}, *conv]
    assert bpe_tok.decode(TEMPLATES.get("vicuna_v1").encode(override, bpe_tok, IMG, 1)[0]).startswith("<s>Be brief. USER:")


def test_image_placeholder_is_replaced_not_stripped(bpe_tok):
    """str.strip("<image>") would also eat the letters of "image" and "game" at the edges."""
    conv = [{"from": "human", "value": "<image>\nimage game"}, {"from": "gpt", "value": "game"}]
    input_ids, labels = TEMPLATES.get("vicuna_v1").encode(conv, bpe_tok, IMG, 4)
    assert input_ids.count(IMG) == 4
    assert "USER: <image><image><image><image>\nimage game ASSISTANT: game</s>" in bpe_tok.decode(input_ids)
    assert bpe_tok.decode([t for t in labels if t != IGNORE_INDEX]) == " game</s>"


def test_header_templates_keep_the_image_where_written(bpe_tok):
    conv = [{"from": "human", "value": "Is it big? <image>"}, {"from": "gpt", "value": "yes"}]
    text = bpe_tok.decode(TEMPLATES.get("chatml").encode(conv, bpe_tok, IMG, 2)[0])
    assert "user\nIs it big? <image><image><|im_end|>" in text


def test_tokenizer_chat_template_matches_the_fixed_chatml(bpe_tok):
    chat_tok = make_tokenizer(chat_template=QWEN2_JINJA)
    assert TEMPLATES.get("tokenizer").encode(CHAT, chat_tok, IMG, 2) == TEMPLATES.get("chatml").encode(CHAT, bpe_tok, IMG, 2)
    assert TEMPLATES.get("tokenizer").prompt_ids(CHAT[:-1], chat_tok, IMG, 2) == TEMPLATES.get("chatml").prompt_ids(
        CHAT[:-1], bpe_tok, IMG, 2
    )


def test_tokenizer_template_needs_a_chat_template(bpe_tok):
    with pytest.raises(ValueError, match="chat_template"):
        TEMPLATES.get("tokenizer").encode(CONV, bpe_tok, IMG, 2)


def test_missing_special_tokens_are_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"needs special tokens \['<\|im_start\|>', '<\|im_end\|>'\]"):
        TEMPLATES.get("chatml").encode(CONV, bare, 0, 1)


def test_turns_must_alternate(bpe_tok):
    with pytest.raises(ValueError, match="turn 1 is from 'user', expected 'assistant'"):
        TEMPLATES.get("vicuna_v1").encode([CONV[0], CONV[2]], bpe_tok, IMG, 1)


@pytest.mark.parametrize("name", ["chatml", "llama3", "llava_llama_2", "plain", "vicuna_v1"])
def test_fixed_texts_for_training_a_tokenizer(name):
    """What an on-the-fly tokenizer is trained on besides the data (train/run.py)."""
    texts = TEMPLATES.get(name).fixed_texts()
    assert texts and all(isinstance(t, str) and t for t in texts)
    expected = {"vicuna_v1": VICUNA_SYSTEM, "llava_llama_2": LLAVA_LLAMA2_SYSTEM, "chatml": "<|im_start|>"}.get(name)
    assert expected is None or any(expected in t for t in texts)


def test_unknown_template_lists_known():
    with pytest.raises(KeyError, match="known: chatml, llama3, llava_llama_2, plain, tokenizer, vicuna_v1"):
        TEMPLATES.get("llama2")
