"""A Jinja chat template that renders a run's conversation template, for processors outside this project.

The run's template is known only through what it produces: `Template.prompt_ids` / `encode`
(and `vlm chat`'s prompt, `vlm_core.eval.generate.prompt_ids`). So the fixed text is read off
those ids: probe conversations whose turns are sentinel words are encoded and decoded, and the
text between the sentinels is the template's own (the prefix before the first user turn, with and
without a system prompt; what closes a user turn and opens the reply; what closes a reply and
opens the next user turn; what an image adds to a user turn). `chat_template_for` assembles
those pieces into Jinja; the exporter then checks that the processor it writes tokenizes the
rendering to exactly the run's ids, so a template this cannot express is an error, never a
silently different prompt.
"""

from __future__ import annotations

import json
from typing import Any

SENTINELS = {"system": "QQSYSQQ", "user": "QQUSERQQ", "reply": "QQREPLYQQ", "next": "QQNEXTQQ"}


class InexpressibleTemplate(ValueError):
    """The run's template does not fit the shape of a Jinja chat template this module writes."""


def _collapse_images(ids: list[int], image_token_id: int, per_image: int) -> list[int]:
    """One image id per image (the processor expands ``<image>`` to ``per_image`` ids again)."""
    out: list[int] = []
    run = 0
    for token in ids:
        if token == image_token_id:
            run += 1
            if run % per_image == 1 or per_image == 1:
                out.append(token)
        else:
            run = 0
            out.append(token)
    return out


def _split(text: str, *sentinels: str) -> list[str]:
    """``text`` cut at each sentinel in order: the fixed pieces around them."""
    pieces = []
    for sentinel in sentinels:
        head, found, text = text.partition(sentinel)
        if not found:
            raise InexpressibleTemplate(f"the template drops a turn's text ({sentinel!r} is not in its rendering)")
        pieces.append(head)
    return [*pieces, text]


def _literal(text: str) -> str:
    return "{{- " + json.dumps(text) + " -}}"


def template_pieces(processor: Any) -> dict[str, str]:
    """The fixed text of ``processor``'s template, read off its token ids (see the module docstring)."""
    from vlm_core.data.templates import get_template
    from vlm_core.eval.generate import prompt_ids as chat_prompt_ids

    template = get_template(processor.template)
    tokenizer = processor.tokenizer
    args = (tokenizer, processor.image_token_id, processor.num_image_tokens)

    def text(ids: list[int]) -> str:
        ids = _collapse_images(ids, processor.image_token_id, processor.num_image_tokens)
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def turn(role: str, sentinel: str) -> dict[str, str]:
        return {"from": role, "value": SENTINELS[sentinel]}

    s = SENTINELS
    first, after_user = _split(text(template.prompt_ids([turn("human", "user")], *args)), s["user"])
    with_system = _split(text(template.prompt_ids([turn("system", "system"), turn("human", "user")], *args)), s["system"], s["user"])
    two_turns = _split(text(template.prompt_ids([turn("human", "user"), turn("gpt", "reply"), turn("human", "next")], *args)),
                       s["user"], s["reply"], s["next"])
    trained, _ = template.encode([turn("human", "user"), turn("gpt", "reply")], *args)
    one_reply = _split(text(trained), s["user"], s["reply"])
    with_image, image_after = _split(text(chat_prompt_ids(processor, s["user"], True)), s["user"])

    consistent = (
        with_system[2] == after_user == two_turns[3] and two_turns[0] == first == one_reply[0]
        and one_reply[1] == two_turns[1] and two_turns[1].startswith(after_user)
        and two_turns[2].startswith(one_reply[2]) and with_image.startswith(first) and image_after == after_user
    )
    if not consistent:
        raise InexpressibleTemplate(
            f"template {processor.template!r} renders turns in a way a turn-by-turn chat template cannot reproduce"
        )
    image = with_image[len(first):]
    if processor.image_token not in image:
        raise InexpressibleTemplate(f"template {processor.template!r} puts the image outside the user's turn")
    return {
        "first": first,  # before the first user turn, default system prompt included
        "system_open": with_system[0],  # before a given system prompt ...
        "system_close": with_system[1],  # ... and between it and the first user turn
        "user_close": after_user,  # after a user turn: the reply's prefix (the generation prompt)
        "reply_open": two_turns[1][len(after_user):],
        "reply_close": one_reply[2],
        "user_open": two_turns[2][len(one_reply[2]):],  # before every user turn but the first
        "image": image,  # what each image adds at the start of its user turn
    }


def chat_template_for(processor: Any) -> str:
    """Jinja for transformers' ``apply_chat_template`` (messages with string or typed-list content)."""
    p = template_pieces(processor)
    return "".join([
        "{%- macro images(message) -%}{%- if message['content'] is not string -%}",
        "{%- for item in message['content'] if item['type'] == 'image' -%}", _literal(p["image"]), "{%- endfor -%}",
        "{%- endif -%}{%- endmacro -%}",
        "{%- macro text(message) -%}{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}",
        "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}",
        "{%- endif -%}{%- endmacro -%}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        _literal(p["system_open"]), "{{- text(messages[0]) -}}", _literal(p["system_close"]),
        "{%- set turns = messages[1:] -%}",
        "{%- else -%}", _literal(p["first"]), "{%- set turns = messages -%}{%- endif -%}",
        "{%- for message in turns -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- if not loop.first -%}", _literal(p["user_open"]), "{%- endif -%}",
        "{{- images(message) -}}{{- text(message) -}}",
        "{%- if not loop.last or add_generation_prompt -%}", _literal(p["user_close"]), "{%- endif -%}",
        "{%- else -%}", _literal(p["reply_open"]), "{{- text(message) -}}", _literal(p["reply_close"]), "{%- endif -%}",
        "{%- endfor -%}",
    ])
