"""Batched greedy decoding with the model's own conversation template (shared by eval and chat).

Prompts are left-padded so that every row's last prompt token sits at the same position and the
new tokens line up; the model derives position ids from the attention mask, so a padded row
decodes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tqdm import tqdm

from vlm_core.data.images import load_image
from vlm_core.data.templates import get_template
from vlm_core.data.types import BadSample
from vlm_core.eval.benchmarks import EvalRequest

AnswerRecord = dict[str, Any]  # {"question_id", "answer"} plus "error" when it was not asked

# LLaVA-1.5 evaluates with greedy decoding (docs/Evaluation.md: temperature 0, no beam search).
GREEDY = {"do_sample": False, "num_beams": 1}


def decoding_settings(processor: Any, max_new_tokens: int) -> dict[str, Any]:
    """How answers are generated, as results.json records it."""
    template = get_template(processor.template)
    return {
        "strategy": "greedy",
        **GREEDY,
        "max_new_tokens": max_new_tokens,
        "template": template.name,
        "stop": template.stop_string(processor.tokenizer),
    }


def prompt_ids(processor: Any, prompt: str, with_image: bool) -> list[int]:
    """Token ids of a one-turn generation prompt in the processor's template (LLaVA puts the
    image first: ``<image>\\n{prompt}``)."""
    value = f"{processor.image_token}\n{prompt}" if with_image else prompt
    template = get_template(processor.template)
    return template.prompt_ids(
        [{"from": "human", "value": value}], processor.tokenizer, processor.image_token_id, processor.num_image_tokens
    )


def _prepare(processor: Any, request: EvalRequest) -> tuple[list[int], Any] | str:
    """(prompt ids, image or None) — or the reason the request cannot be asked."""
    if request.error:
        return request.error
    image = None
    if request.image is not None:
        try:
            image = load_image(request.image)
        except BadSample as err:
            return str(err)
    return prompt_ids(processor, request.prompt, image is not None), image


def _generate_batch(
    model: Any, processor: Any, ready: list[tuple[EvalRequest, tuple[list[int], Any]]], max_new_tokens: int, streamer: Any
) -> dict[str, str]:
    """Greedy answers of prepared requests, decoded up to the template's stop token."""
    import torch

    tokenizer = processor.tokenizer
    stop_id = get_template(processor.template).stop_token_id(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = max(len(ids) for _, (ids, _) in ready)
    input_ids = torch.full((len(ready), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ready), width), dtype=torch.long)
    for row, (_, (ids, _)) in enumerate(ready):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    images = [image for _, (_, image) in ready if image is not None]
    pixel_values = processor.process_images(images).to(device, dtype) if images else None
    with torch.inference_mode():
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            pixel_values=pixel_values,
            max_new_tokens=max_new_tokens,
            **GREEDY,
            eos_token_id=stop_id,
            pad_token_id=pad_id,
            streamer=streamer,
        )
    answers = {}
    for (request, _), row in zip(ready, generated[:, width:].tolist()):
        if stop_id in row:
            row = row[: row.index(stop_id)]
        answers[request.question_id] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


def generate_answers(
    model: Any,
    processor: Any,
    requests: Sequence[EvalRequest],
    batch_size: int = 16,
    max_new_tokens: int = 16,
    on_batch: Callable[[list[AnswerRecord]], None] | None = None,
    streamer: Any = None,
    progress: bool = True,
) -> list[AnswerRecord]:
    """Answer ``requests`` with greedy decoding; unreadable requests get ``error``. Answers come
    back in the order of ``requests``.

    Batches group prompts of similar length (MMBench's options are long, VQA's questions short),
    so little of a batch is padding; ``on_batch`` sees each finished batch in that order (the eval
    runner appends it to the answers file); ``streamer`` (a transformers streamer) prints tokens
    as they come, for one request at a time.
    """
    if streamer is not None and batch_size != 1:
        raise ValueError("streaming decodes one request at a time: use batch_size=1")
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
    out: dict[int, AnswerRecord] = {}
    batches = range(0, len(requests), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress or len(batches) < 2):
        positions = order[start : start + batch_size]
        batch = [requests[i] for i in positions]
        prepared = [_prepare(processor, r) for r in batch]
        ready = [(r, p) for r, p in zip(batch, prepared) if not isinstance(p, str)]
        answers = _generate_batch(model, processor, ready, max_new_tokens, streamer) if ready else {}
        records: list[AnswerRecord] = []
        for request, prep in zip(batch, prepared):
            if isinstance(prep, str):
                records.append({"question_id": request.question_id, "answer": "", "error": prep})
            else:
                records.append({"question_id": request.question_id, "answer": answers[request.question_id]})
        if on_batch is not None:
            on_batch(records)
        out.update(zip(positions, records))
    return [out[i] for i in range(len(requests))]
