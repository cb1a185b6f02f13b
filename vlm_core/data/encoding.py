"""RawSample -> model inputs: template tokens, labels and pixel values, or a BadSample."""

from __future__ import annotations

import copy
from typing import Any

from vlm_core.data.images import load_image
from vlm_core.data.templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, Template, get_template
from vlm_core.data.types import BadSample, RawSample


class SampleEncoder:
    """Encodes raw samples for training with a VLMProcessor-like ``processor``
    (``.tokenizer``, ``.image_token_id``, ``.num_image_tokens``, ``.process_images``).

    Every rejection raises ``BadSample`` naming the sample and dataset; ``strict`` tells callers
    (the mixtures) whether to stop on it or count it and move on. Checks run cheapest first, so
    an over-long sample never pays for decoding its images.
    """

    def __init__(
        self,
        processor: Any,
        template: str | Template = "vicuna_v1",
        max_length: int = 2048,
        image_aspect: str | None = None,
        strict: bool = False,
    ) -> None:
        processor_aspect = getattr(processor, "image_aspect", None)
        if image_aspect is not None and processor_aspect is not None and image_aspect != processor_aspect:
            raise ValueError(
                f"image_aspect {image_aspect!r} differs from the processor's {processor_aspect!r}; "
                "the processor applies it, so build the processor with the aspect you want"
            )
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = get_template(template)
        self.template.check_tokenizer(self.tokenizer)
        self.max_length = max_length
        self.strict = strict

    def encode(self, raw: RawSample, dataset_name: str = "", dataset_index: int = 0) -> dict[str, Any]:
        try:
            return self._encode(raw, dataset_index)
        except BadSample as bad:
            raise bad.located(raw.id, dataset_name) from None

    __call__ = encode

    def _encode(self, raw: RawSample, dataset_index: int) -> dict[str, Any]:
        import torch

        input_ids, labels = self.encode_tokens(raw)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": self.pixel_values(raw.images),
            "dataset_index": dataset_index,
        }

    def encode_tokens(self, raw: RawSample) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of ``raw``, or ``BadSample`` (without its location) when the text
        cannot be trained on. Images are not opened."""
        conversations = with_image_placeholders(raw)
        try:
            input_ids, labels = self.template.encode(
                conversations, self.tokenizer, self.processor.image_token_id, self.processor.num_image_tokens
            )
        except ValueError as err:
            raise BadSample("malformed", str(err)) from None
        if all(label == IGNORE_INDEX for label in labels):
            raise BadSample("no_assistant_turn", "no assistant tokens to train on")
        if len(input_ids) > self.max_length:
            # Never truncate: a cut-off reply would teach the model to stop mid-answer.
            raise BadSample("too_long", f"{len(input_ids)} tokens > max_length {self.max_length}")
        return input_ids, labels

    def pixel_values(self, refs: list) -> Any:
        """(n, 3, H, W) pixels of the images; the processor gives (0, 3, H, W) for none."""
        return self.processor.process_images([load_image(ref) for ref in refs])


def with_image_placeholders(raw: RawSample) -> list[dict[str, str]]:
    """The conversation with one ``<image>`` per image.

    As LLaVA: a sample with images but no placeholder gets ``<image>\\n`` (one per image) in
    front of its first human turn; otherwise placeholders stay where they are written and must match the images.
    """
    conversations = copy.deepcopy(raw.conversations)
    written = sum(str(turn.get("value", "")).count(IMAGE_PLACEHOLDER) for turn in conversations)
    if raw.images and written == 0:
        first_human = next((t for t in conversations if t.get("from") in ("human", "user")), None)
        if first_human is None:
            raise BadSample("malformed", "a sample with images has no human turn")
        first_human["value"] = (IMAGE_PLACEHOLDER + "\n") * len(raw.images) + first_human["value"]
        written = len(raw.images)
    if written != len(raw.images):
        raise BadSample("image_count_mismatch", f"{written} <image> placeholders for {len(raw.images)} images")
    return conversations
