"""Conversation templates: how turns become token ids and which ids carry the loss.

A template renders a conversation as *pieces*: text (trained on or not), single special tokens
(by their string, or the tokenizer's own BOS / EOS, always as ids, never written as text) and
image slots. Tokenization follows how the reference implementations tokenize a whole rendered
string:

- text between two special tokens or images is tokenized as one string (a *run*), so the ids
  are those of the whole string, never a concatenation of separately tokenized bits;
- a run at the start of the sequence or right after an image is tokenized as a fresh string
  (LLaVA's ``tokenizer_image_token`` tokenizes each chunk between images on its own, so a
  SentencePiece tokenizer adds its "▁" prefix there); a run right after a special token is
  tokenized as the tokenizer tokenizes text after a special token (transformers 5's Llama
  tokenizer adds no "▁" there; a legacy one does);
- inside a run, the pieces' training flags become labels by prefix lengths: the first
  ``len(tokenize(prefix))`` ids belong to the prefix, which is what LLaVA's length arithmetic
  in ``preprocess_v1`` / ``preprocess_llama_2`` computes whenever it is consistent.

``<image>`` placeholders are cut out by splitting on the whole placeholder string, never by
``str.strip("<image>")``, which strips a *character set* and eats letters of the text
(CodeFuse-VLM's bug). The LLaVA templates move them to the front of their turn as
``preprocess_multimodal`` does (``<image>\\n`` + the rest of the turn, stripped). See
docs/ARCHITECTURE.md, "Data", for the rules per template.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlm_core.registry import Registry

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
BOS, EOS = "bos", "eos"  # token names meaning the tokenizer's own bos_token / eos_token

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Text:
    text: str
    trainable: bool = False


@dataclass(frozen=True)
class Token:
    """One special token: ``BOS`` / ``EOS`` (the tokenizer's own) or a token string such as
    ``<|im_end|>``."""

    name: str
    trainable: bool = False

    @property
    def text(self) -> str:
        return "" if self.name in (BOS, EOS) else self.name


@dataclass(frozen=True)
class ImageSlot:
    trainable: bool = False
    text: str = IMAGE_PLACEHOLDER


Piece = Text | Token | ImageSlot


def normalize_turns(conversations: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(role, text) pairs with roles user/assistant/system; unknown roles are an error."""
    turns = []
    for i, turn in enumerate(conversations):
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLES or not isinstance(text, str):
            raise ValueError(
                f"turn {i} is not a conversation turn: {turn!r}; expected "
                f"{{'from': one of {sorted(ROLES)}, 'value': str}}"
            )
        turns.append((ROLES[speaker], text))
    return turns


def with_images(text: str, trainable: bool = False) -> list[Piece]:
    """``text`` as Text pieces with an Image piece for every ``<image>`` in it."""
    pieces: list[Piece] = []
    for j, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if j:
            pieces.append(ImageSlot())
        if part:
            pieces.append(Text(part, trainable))
    return pieces


def image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal``: a turn holding ``<image>`` becomes ``<image>\\n`` +
    the rest of the turn, stripped. LLaVA-1.5 has one image per sample; with several, each
    gets its ``<image>\\n`` in front, in order."""
    count = text.count(IMAGE_PLACEHOLDER)
    if not count:
        return text
    return ((IMAGE_PLACEHOLDER + "\n") * count + text.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


class Template(ABC):
    """Base of every template: subclasses say how turns become pieces."""

    name: str
    special_tokens: tuple[str, ...] = ()  # token strings the tokenizer must have (BOS/EOS checked apart)
    stop: str | None = None  # end of an assistant reply; None: the tokenizer's eos_token

    @abstractmethod
    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        """Pieces of ``turns``; with ``generation`` the turns end with a user turn and the result
        ends with the assistant prefix. Only the ``tokenizer`` template reads ``tokenizer`` (its
        chat template); the others give their fixed text without one (to train a tokenizer)."""

    # -- shared machinery

    def stop_string(self, tokenizer: Any) -> str:
        stop = self.stop or tokenizer.eos_token
        if stop is None:
            raise ValueError(f"template {self.name!r} stops at the tokenizer's eos_token, which is not set")
        return stop

    def stop_token_id(self, tokenizer: Any) -> int:
        """The id generation stops at (the end of an assistant reply)."""
        stop = self.stop_string(tokenizer)
        token_id = _token_ids(tokenizer, [stop])[0]
        if token_id is None:
            # a text stop (plain's "\n"): the id that ends it when tokenized
            ids = TokenizerView(tokenizer).encode(stop, after_special=True)
            if not ids:
                raise ValueError(f"template {self.name!r} stops at {stop!r}, which the tokenizer cannot encode")
            token_id = ids[-1]
        return token_id

    def check_tokenizer(self, tokenizer: Any) -> None:
        ids = _token_ids(tokenizer, list(self.special_tokens))
        missing = [t for t, i in zip(self.special_tokens, ids) if i is None]
        if missing:
            raise ValueError(
                f"template {self.name!r} needs special tokens {missing} that the tokenizer lacks; "
                "add them (tokenizer.add_special_tokens) or pick another template"
            )
        for role in (BOS, EOS):
            if getattr(tokenizer, f"{role}_token_id") is None and self.uses(role):
                raise ValueError(
                    f"template {self.name!r} starts or ends turns with the tokenizer's {role}_token, which is not "
                    "set; load a tokenizer that has one or pick another template"
                )

    def fixed_texts(self) -> list[str]:
        """The template's own text around a one-round conversation (system prompt, role tags,
        token strings), for training a tokenizer that spends few tokens on it."""
        example = [("user", f"{IMAGE_PLACEHOLDER}\n?"), ("assistant", "!")]
        return [p.text for p in self.segments(example, None, False) if p.text]

    def uses(self, token: str) -> bool:
        """Whether the template writes ``token`` (a token string, or BOS / EOS)."""
        return token in _written_tokens(self)

    def encode(
        self, conversations: list[dict[str, str]], tokenizer: Any, image_token_id: int, num_image_tokens: int
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a training conversation; labels are -100 outside assistant replies."""
        turns = normalize_turns(conversations)
        self.check_tokenizer(tokenizer)
        return tokenize(self.segments(turns, tokenizer, False), tokenizer, image_token_id, num_image_tokens)

    def prompt_ids(
        self, conversations: list[dict[str, str]], tokenizer: Any, image_token_id: int, num_image_tokens: int
    ) -> list[int]:
        """Token ids of a generation prompt: the conversation (ending with a user turn) and the
        assistant prefix."""
        turns = normalize_turns(conversations)
        if not turns or turns[-1][0] != "user":
            raise ValueError("a generation prompt's conversation must end with a human turn")
        self.check_tokenizer(tokenizer)
        ids, _ = tokenize(self.segments(turns, tokenizer, True), tokenizer, image_token_id, num_image_tokens)
        return ids


@functools.cache
def _written_tokens(template: Template) -> frozenset[str]:
    """The tokens a template writes around a one-round conversation (checked once per template)."""
    example = [("user", IMAGE_PLACEHOLDER), ("assistant", "!")]
    return frozenset(p.name for p in template.segments(example, None, False) if isinstance(p, Token))


# ----------------------------------------------------------------------------- tokenization


class TokenizerView:
    """The two ways a run of text is tokenized (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # any special token works as the "after a special token" context; eos is always there
        self.sentinel = next(
            (t for t in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) if t is not None), None
        )
        self.sentinel_id = _token_ids(tokenizer, [self.sentinel])[0] if self.sentinel else None
        self._special_ids: dict[str, int | None] = {}
        self._ids = self._fast_ids(tokenizer) or (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def _fast_ids(tokenizer: Any) -> Any:
        """The Rust tokenizer's own encode where calling it is what transformers' wrapper would do
        (no truncation, padding or special-token splitting): the wrapper's per-call bookkeeping
        cost more than the tokenization of a short turn (about 2/3 of encoding a conversation)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or getattr(tokenizer, "split_special_tokens", False) or backend.encode_special_tokens:
            return None
        if backend.truncation is not None or backend.padding is not None:
            return None
        return lambda text: backend.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, after_special: bool) -> list[int]:
        if after_special and self.sentinel_id is not None:
            ids = self._ids(self.sentinel + text)
            if ids and ids[0] == self.sentinel_id:
                return ids[1:]
        return self._ids(text)

    def token_id(self, token: Token) -> int:
        if token.name in (BOS, EOS):
            attr = "bos_token_id" if token.name == BOS else "eos_token_id"
            token_id = getattr(self.tokenizer, attr)
            if token_id is None:
                raise ValueError(f"the template needs the tokenizer's {token.name}_token, which is not set")
            return token_id
        if token.name not in self._special_ids:  # a conversation repeats its few role tokens
            self._special_ids[token.name] = _token_ids(self.tokenizer, [token.name])[0]
        token_id = self._special_ids[token.name]
        if token_id is None:
            raise ValueError(f"the tokenizer has no {token.name!r} token")
        return token_id


def tokenize(
    pieces: Sequence[Piece], tokenizer: Any, image_token_id: int, num_image_tokens: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of ``pieces``; images become ``num_image_tokens`` image ids (never trained)."""
    view = TokenizerView(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    run: list[Text] = []
    after_special = False  # how the current run is tokenized

    def flush() -> None:
        ids, flags = _tokenize_run(run, view, after_special)
        input_ids.extend(ids)
        labels.extend(i if trained else IGNORE_INDEX for i, trained in zip(ids, flags))
        run.clear()

    for n, piece in enumerate(pieces):
        if isinstance(piece, Text):
            if piece.text:
                run.append(piece)
            continue
        flush()
        if isinstance(piece, ImageSlot):
            input_ids += [image_token_id] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
            after_special = False  # LLaVA tokenizes the chunk after an image as a fresh string
        else:
            token_id = view.token_id(piece)
            input_ids.append(token_id)
            labels.append(token_id if piece.trainable else IGNORE_INDEX)
            # the leading BOS is the one a tokenizer's post-processor adds: text after it is
            # still the start of the string
            after_special = not (n == 0 and piece.name == BOS)
    flush()
    return input_ids, labels


def _tokenize_run(run: list[Text], view: TokenizerView, after_special: bool) -> tuple[list[int], list[bool]]:
    if not run:
        return [], []
    merged: list[Text] = []
    for piece in run:
        if merged and merged[-1].trainable == piece.trainable:
            merged[-1] = Text(merged[-1].text + piece.text, piece.trainable)
        else:
            merged.append(piece)
    ids = view.encode("".join(p.text for p in merged), after_special)
    flags: list[bool] = []
    prefix = ""
    for k, piece in enumerate(merged):
        prefix += piece.text
        end = len(ids) if k == len(merged) - 1 else min(len(view.encode(prefix, after_special)), len(ids))
        flags += [piece.trainable] * max(0, end - len(flags))
    return ids, flags


def _token_ids(tokenizer: Any, tokens: list[str]) -> list[int | None]:
    """Ids of whole tokens; None where the tokenizer lacks the token (cheap: no vocab copy)."""
    ids = tokenizer.convert_tokens_to_ids(tokens) if tokens else []
    unk = tokenizer.unk_token_id
    return [None if i is None or (i == unk and t != tokenizer.unk_token) else i for t, i in zip(tokens, ids)]


def _split_system(turns: list[tuple[str, str]], default: str | None) -> tuple[str | None, list[tuple[str, str]]]:
    if turns and turns[0][0] == "system":
        return turns[0][1], turns[1:]
    return default, turns


def _check_alternation(turns: list[tuple[str, str]], template: str) -> None:
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"template {template!r}: turn {i} is from {role!r}, expected {expected!r} "
                "(turns alternate human, gpt, ... after an optional leading system turn)"
            )


def _rounds(turns: list[tuple[str, str]], template: str, generation: bool) -> list[tuple[str, str | None]]:
    """(user, reply) rounds; the last reply is None for a generation prompt."""
    _check_alternation(turns, template)
    if len(turns) % 2 and not generation and len(turns) > 1:
        # LLaVA's masking finds no reply in the last round and masks the whole sample
        raise ValueError(f"template {template!r}: a training conversation must end with a gpt turn")
    return [(q, a) for q, a in zip(turns[0::2], [*turns[1::2], None])]  # type: ignore[misc]


TEMPLATES: Registry[Template] = Registry("template")


# ----------------------------------------------------------------------------- LLaVA's templates


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def _no_separator_inside(template: str, round_text: str, separator: str, eos_text: str | None) -> None:
    """LLaVA finds the reply of a round by splitting it at ``separator`` and the rounds by
    splitting at ``</s>``; a turn that contains either throws its length arithmetic off and the
    whole sample is masked. Refuse such samples instead of training on nothing."""
    if round_text.count(separator) != 1 or (eos_text and eos_text in round_text):
        raise ValueError(
            f"template {template!r}: a turn contains the separator {separator.strip()!r} or {eos_text!r}, "
            "which LLaVA's preprocessing cannot split (it would train on nothing)"
        )


@dataclass(frozen=True)
class VicunaTemplate(Template):
    """LLaVA-1.5's ``conv_vicuna_v1`` (SeparatorStyle.TWO) as ``preprocess_v1`` tokenizes it:
    ``BOS {system} USER: {q} ASSISTANT: {a}EOS USER: ...`` (no space after EOS); trained: the
    reply with its leading space, and EOS."""

    name: str = "vicuna_v1"
    system: str = VICUNA_SYSTEM
    user: str = "USER"
    assistant: str = "ASSISTANT"

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        system, turns = _split_system(turns, self.system)
        turns = [(role, image_first(text)) for role, text in turns]
        pieces: list[Piece] = [Token(BOS)]
        for i, ((_, question), reply) in enumerate(_rounds(turns, self.name, generation)):
            head = f"{system} " if i == 0 else ""
            pieces += with_images(f"{head}{self.user}: {question} {self.assistant}:")
            if reply is not None:
                _no_separator_inside(
                    self.name, f"{head}{self.user}: {question} {self.assistant}: {reply[1]}", f" {self.assistant}: ", "</s>"
                )
                pieces += [*with_images(" " + reply[1], trainable=True), Token(EOS, trainable=True)]
        return pieces


@dataclass(frozen=True)
class LlavaLlama2Template(Template):
    """LLaVA's ``conv_llava_llama_2`` (SeparatorStyle.LLAMA_2) as ``preprocess_llama_2`` tokenizes
    it, which is Meta's Llama-2 chat format: ``BOS [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST]
    {a} EOS BOS [INST] {q2} [/INST] ...``; trained: `` {a} `` (both spaces) and EOS."""

    name: str = "llava_llama_2"
    system: str = LLAVA_LLAMA2_SYSTEM

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        system, turns = _split_system(turns, self.system)
        turns = [(role, image_first(text)) for role, text in turns]
        pieces: list[Piece] = [Token(BOS)]
        for i, ((_, question), reply) in enumerate(_rounds(turns, self.name, generation)):
            if i:
                pieces.append(Token(BOS))  # LLaVA writes the separator "<s>" into the text
            if i == 0 and system:
                question = f"<<SYS>>\n{system}\n<</SYS>>\n\n{question}"
            pieces += with_images(f"[INST] {question} [/INST]")
            if reply is not None:
                _no_separator_inside(self.name, f"[INST] {question} [/INST] {reply[1]} ", "[/INST] ", "</s>")
                pieces += [*with_images(f" {reply[1]} ", trainable=True), Token(EOS, trainable=True)]
        return pieces


@dataclass(frozen=True)
class PlainTemplate(Template):
    """LLaVA's alignment format (``preprocess_plain``): ``BOS <image> {caption}\\n``. The human
    turn is reduced to its image(s); the caption and the "\\n" after it are trained (no EOS:
    generation stops at the newline)."""

    name: str = "plain"
    stop: str | None = "\n"

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        _, turns = _split_system(turns, None)
        rounds = _rounds(turns, self.name, generation)
        if len(rounds) != 1 or IMAGE_PLACEHOLDER not in rounds[0][0][1]:
            raise ValueError(f"template {self.name!r} takes one human turn with an <image> and one caption")
        (_, question), reply = rounds[0]
        pieces: list[Piece] = [Token(BOS), *[ImageSlot() for _ in range(question.count(IMAGE_PLACEHOLDER))]]
        if reply is not None:
            pieces.append(Text(reply[1] + "\n", trainable=True))
        return pieces


# ----------------------------------------------------------------------------- chat formats with header tokens


@dataclass(frozen=True)
class HeaderTemplate(Template):
    """Chat formats where each turn is ``header(role) content end``: Qwen's ChatML and Meta's
    Llama-3. Images stay where the data writes them (these formats place content verbatim)."""

    name: str
    begin: tuple[str, ...]  # tokens before everything
    header: tuple[str | None, ...]  # None marks where the role name goes; other strings are tokens
    after_header: str  # text after the header, before the content
    end: str  # token ending every turn
    after_end: str  # text after the end token (not trained)
    system: str | None  # default system prompt; a leading system turn overrides it
    special_tokens: tuple[str, ...] = ()
    trim: bool = False  # Meta's template trims every message

    @property
    def stop(self) -> str:  # type: ignore[override]
        return self.end

    def _turn(self, role: str, content: str | None, trainable: bool) -> list[Piece]:
        pieces: list[Piece] = [Text(role) if part is None else Token(part) for part in self.header]
        pieces.append(Text(self.after_header))
        if content is not None:
            pieces += [*with_images(content.strip() if self.trim else content, trainable), Token(self.end, trainable)]
            pieces.append(Text(self.after_end))
        return pieces

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        system, turns = _split_system(turns, self.system)
        _check_alternation(turns, self.name)
        pieces: list[Piece] = [Token(t) for t in self.begin]
        if system is not None:
            pieces += self._turn("system", system, False)
        for role, text in turns:
            pieces += self._turn(role, text, role == "assistant")
        if generation:
            pieces += self._turn("assistant", None, False)
        return pieces


@dataclass(frozen=True)
class TokenizerChatTemplate(Template):
    """The tokenizer's own chat template (``apply_chat_template``).

    Pieces come from rendering growing prefixes of the conversation as text: what the reply
    adds to the rendering is trained on, what the generation prompt adds is not. Rendering text
    (not token ids) sidesteps transformers 5's BatchEncoding return and keeps ``<image>`` whole.
    """

    name: str = "tokenizer"

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any = None, generation: bool = False) -> list[Piece]:
        if tokenizer is None:
            return []  # no fixed text of its own
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template")
        messages = [{"role": role, "content": text} for role, text in turns]

        def render(upto: int, add_generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(
                messages[:upto], tokenize=False, add_generation_prompt=add_generation_prompt
            )

        pieces: list[Piece] = []
        done = ""
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before, after = render(i, True), render(i + 1, False)
            # The end token is trained on; separators the template writes after it are not.
            trained = after[len(before) :].rstrip()
            if not (before.startswith(done) and after.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template renders earlier turns differently once later ones are "
                    "added, so the assistant turns cannot be located; pick a fixed template instead"
                )
            pieces += [*with_images(before[len(done) :]), *with_images(trained, trainable=True)]
            done = before + trained
        final = render(len(messages), generation)
        if not final.startswith(done):
            raise ValueError("the tokenizer's chat template is not prefix-stable; pick a fixed template instead")
        return [*pieces, *with_images(final[len(done) :])]


TEMPLATES.add("plain", PlainTemplate())
TEMPLATES.add("vicuna_v1", VicunaTemplate())
TEMPLATES.add("llava_llama_2", LlavaLlama2Template())
TEMPLATES.add("tokenizer", TokenizerChatTemplate())
# Qwen's ChatML (Qwen2's chat template): "<|im_start|>{role}\n{content}<|im_end|>\n", default system prompt
TEMPLATES.add(
    "chatml",
    HeaderTemplate(
        name="chatml",
        begin=(),
        header=("<|im_start|>", None),
        after_header="\n",
        end="<|im_end|>",
        after_end="\n",
        system="You are a helpful assistant.",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    ),
)
# Meta's Llama-3 instruct template: header tokens around each role, trimmed content, <|eot_id|> ends every turn
TEMPLATES.add(
    "llama3",
    HeaderTemplate(
        name="llama3",
        begin=("<|begin_of_text|>",),
        header=("<|start_header_id|>", None, "<|end_header_id|>"),
        after_header="\n\n",
        end="<|eot_id|>",
        after_end="",
        system=None,
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        trim=True,
    ),
)


def get_template(template: str | Template) -> Template:
    return template if isinstance(template, Template) else TEMPLATES.get(template)
