"""Conversation templates: how turns become token ids and which ids carry the loss.

A template turns a conversation into *segments*: text pieces that either carry the loss (an
assistant reply plus its end token) or not (everything else). Each segment is tokenized on its
own and ``<image>`` placeholders inside it become ``num_image_tokens`` image ids, so labels
line up with input ids by construction, and the generation prompt (``prompt_ids``) is exactly
the training prefix up to the assistant's reply.

``<image>`` is replaced where it is written (LLaVA's convention) by splitting on the whole
placeholder string, never by ``str.strip("<image>")``, which strips a *character set* and eats
letters of the text (CodeFuse-VLM's bug).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from vlm_core.registry import Registry

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Segment:
    text: str
    trainable: bool


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


class Template(ABC):
    """Base of every template: subclasses say how turns become segments."""

    # Declared by each subclass (dataclass fields):
    name: str
    special_tokens: tuple[str, ...]  # strings the tokenizer must have as tokens
    stop: str | None  # end of an assistant reply; None: the tokenizer's own eos_token

    @abstractmethod
    def segments(self, turns: list[tuple[str, str]], tokenizer: Any, generation: bool) -> list[Segment]:
        """Segments of ``turns``; with ``generation`` the turns end with a user turn and the
        result ends with the assistant prefix. ``tokenizer`` may be None for callers that want
        only a template's fixed text (e.g. to train a tokenizer): text that depends on the
        tokenizer (its eos) is then left out."""

    # -- shared machinery

    def stop_string(self, tokenizer: Any) -> str:
        stop = self.stop or tokenizer.eos_token
        if stop is None:
            raise ValueError(f"template {self.name!r} stops at the tokenizer's eos_token, which is not set")
        return stop

    def stop_token_id(self, tokenizer: Any) -> int:
        """The id generation stops at (the end token of an assistant reply)."""
        stop = self.stop_string(tokenizer)
        token_id = _token_ids(tokenizer, [stop])[0]
        if token_id is None:
            raise ValueError(f"template {self.name!r} stops at {stop!r}, which the tokenizer does not have as a token")
        return token_id

    def check_tokenizer(self, tokenizer: Any) -> None:
        ids = _token_ids(tokenizer, list(self.special_tokens))
        missing = [t for t, i in zip(self.special_tokens, ids) if i is None]
        if missing:
            raise ValueError(
                f"template {self.name!r} needs special tokens {missing} that the tokenizer lacks; "
                "add them (tokenizer.add_special_tokens) or pick another template"
            )

    def encode(
        self, conversations: list[dict[str, str]], tokenizer: Any, image_token_id: int, num_image_tokens: int
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a training conversation; labels are -100 outside assistant replies."""
        turns = normalize_turns(conversations)
        return self._tokenize(self.segments(turns, tokenizer, False), tokenizer, image_token_id, num_image_tokens)

    def prompt_ids(
        self, conversations: list[dict[str, str]], tokenizer: Any, image_token_id: int, num_image_tokens: int
    ) -> list[int]:
        """Token ids of a generation prompt: the conversation (ending with a user turn) and the
        assistant prefix."""
        turns = normalize_turns(conversations)
        if not turns or turns[-1][0] != "user":
            raise ValueError("a generation prompt's conversation must end with a human turn")
        ids, _ = self._tokenize(self.segments(turns, tokenizer, True), tokenizer, image_token_id, num_image_tokens)
        return ids

    def _tokenize(
        self, segments: list[Segment], tokenizer: Any, image_token_id: int, num_image_tokens: int
    ) -> tuple[list[int], list[int]]:
        self.check_tokenizer(tokenizer)
        input_ids: list[int] = []
        labels: list[int] = []
        for seg in _merge(segments):
            for j, piece in enumerate(seg.text.split(IMAGE_PLACEHOLDER)):
                if j:
                    input_ids += [image_token_id] * num_image_tokens
                    labels += [IGNORE_INDEX] * num_image_tokens
                if piece:
                    ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                    input_ids += ids
                    labels += ids if seg.trainable else [IGNORE_INDEX] * len(ids)
        return input_ids, labels


def _token_ids(tokenizer: Any, tokens: list[str]) -> list[int | None]:
    """Ids of whole tokens; None where the tokenizer lacks the token (cheap: no vocab copy)."""
    ids = tokenizer.convert_tokens_to_ids(tokens) if tokens else []
    unk = tokenizer.unk_token_id
    return [None if i is None or (i == unk and t != tokenizer.unk_token) else i for t, i in zip(tokens, ids)]


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring segments of the same kind, so each is tokenized as one text."""
    out: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and out[-1].trainable == seg.trainable:
            out[-1] = Segment(out[-1].text + seg.text, seg.trainable)
        else:
            out.append(seg)
    return out


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


TEMPLATES: Registry[Template] = Registry("template")


@dataclass(frozen=True)
class RoleTemplate(Template):
    """Chat formats where each role's turn is a fixed text pattern around its content."""

    name: str
    begin: str  # text before everything (e.g. the bos token)
    system: str | None  # default system prompt; a leading system turn overrides it
    system_fmt: str
    user_fmt: str  # ends with everything up to the assistant prefix
    assistant_prefix: str  # not trained on; the generation prompt ends with it
    reply_fmt: str  # trained on: the reply and its end token
    after_reply: str  # not trained on: separators after the end token
    stop: str | None
    special_tokens: tuple[str, ...]
    system_in_first_user: bool = False  # llama2 puts <<SYS>> inside the first [INST]

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any, generation: bool) -> list[Segment]:
        system, turns = _split_system(turns, self.system)
        _check_alternation(turns, self.name)
        segs = [Segment(self.begin, False)]
        sys_text = self.system_fmt.format(system=system) if system else ""
        if not self.system_in_first_user:
            segs.append(Segment(sys_text, False))
        for i, (role, text) in enumerate(turns):
            if role == "user":
                if i == 0 and self.system_in_first_user:
                    text = sys_text + text
                segs += [Segment(self.user_fmt.format(content=text), False), Segment(self.assistant_prefix, False)]
            else:
                segs += [Segment(self.reply_fmt.format(content=text), True), Segment(self.after_reply, False)]
        return segs


@dataclass(frozen=True)
class PlainTemplate(Template):
    """LLaVA's alignment format: the human turn is reduced to its images, the reply is a caption."""

    name: str = "plain"
    special_tokens: tuple[str, ...] = ()
    stop: str | None = None

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any, generation: bool) -> list[Segment]:
        _, turns = _split_system(turns, None)
        _check_alternation(turns, self.name)
        stop = self.stop_string(tokenizer) if tokenizer is not None else ""
        segs = []
        for role, text in turns:
            if role == "user":
                segs.append(Segment(IMAGE_PLACEHOLDER * text.count(IMAGE_PLACEHOLDER), False))
            else:
                segs.append(Segment(text + stop, True))
        return segs


@dataclass(frozen=True)
class TokenizerChatTemplate(Template):
    """The tokenizer's own chat template (``apply_chat_template``).

    Segments come from rendering growing prefixes of the conversation as text: what the reply
    adds to the rendering is trained on, what the generation prompt adds is not. Rendering text
    (not token ids) sidesteps transformers 5's BatchEncoding return and keeps ``<image>`` whole.
    """

    name: str = "tokenizer"
    special_tokens: tuple[str, ...] = ()
    stop: str | None = None

    def segments(self, turns: list[tuple[str, str]], tokenizer: Any, generation: bool) -> list[Segment]:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template")
        messages = [{"role": role, "content": text} for role, text in turns]

        def render(upto: int, add_generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(
                messages[:upto], tokenize=False, add_generation_prompt=add_generation_prompt
            )

        segs: list[Segment] = []
        done = ""
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before, after = render(i, True), render(i + 1, False)
            reply = after[len(before):]
            # The end token is trained on; separators the template writes after it are not.
            trained = reply.rstrip()
            if not (before.startswith(done) and after.startswith(before)):
                raise ValueError(
                    "the tokenizer's chat template renders earlier turns differently once later ones are "
                    "added, so the assistant turns cannot be located; pick a fixed template instead"
                )
            segs += [Segment(before[len(done):], False), Segment(trained, True)]
            done = before + trained
        final = render(len(messages), generation)
        if not final.startswith(done):
            raise ValueError("the tokenizer's chat template is not prefix-stable; pick a fixed template instead")
        segs.append(Segment(final[len(done):], False))
        return segs


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES.add("plain", PlainTemplate())
TEMPLATES.add("tokenizer", TokenizerChatTemplate())
# LLaVA-1.5's conv_vicuna_v1: "<sys> USER: <q> ASSISTANT: <a></s>USER: ..."
TEMPLATES.add(
    "vicuna_v1",
    RoleTemplate(
        name="vicuna_v1",
        begin="<s>",
        system=VICUNA_SYSTEM,
        system_fmt="{system} ",
        user_fmt="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        reply_fmt=" {content}</s>",
        after_reply="",
        stop="</s>",
        special_tokens=("<s>", "</s>"),
    ),
)
# Meta's Llama-2 chat: "<s>[INST] <<SYS>>\n<sys>\n<</SYS>>\n\n<q> [/INST] <a></s><s>[INST] ..."
TEMPLATES.add(
    "llama2",
    RoleTemplate(
        name="llama2",
        begin="",
        system=LLAVA_LLAMA2_SYSTEM,
        system_fmt="<<SYS>>\n{system}\n<</SYS>>\n\n",
        user_fmt="<s>[INST] {content} [/INST]",
        assistant_prefix="",
        reply_fmt=" {content}</s>",
        after_reply="",
        stop="</s>",
        special_tokens=("<s>", "</s>"),
        system_in_first_user=True,
    ),
)
# Qwen's ChatML: "<|im_start|>role\n<content><|im_end|>\n"
TEMPLATES.add(
    "chatml",
    RoleTemplate(
        name="chatml",
        begin="",
        system="You are a helpful assistant.",
        system_fmt="<|im_start|>system\n{system}<|im_end|>\n",
        user_fmt="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        reply_fmt="{content}<|im_end|>",
        after_reply="\n",
        stop="<|im_end|>",
        special_tokens=("<|im_start|>", "<|im_end|>"),
    ),
)
# Llama-3 instruct: header tokens around each role, <|eot_id|> ends every turn.
TEMPLATES.add(
    "llama3",
    RoleTemplate(
        name="llama3",
        begin="<|begin_of_text|>",
        system=None,
        system_fmt="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_fmt="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        reply_fmt="{content}<|eot_id|>",
        after_reply="",
        stop="<|eot_id|>",
        special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
)


def get_template(template: str | Template) -> Template:
    return template if isinstance(template, Template) else TEMPLATES.get(template)
