"""`VLMProcessor`: the tokenizer, the image processor and the few facts that tie them to the model."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.image_processing_utils import BaseImageProcessor
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from vlm_core.models.tokenizer import IMAGE_TOKEN

PROCESSOR_FILE = "vlm_processor.json"
IMAGE_ASPECTS = ("square", "pad")


def expand_to_square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's pad: centre the image on a square canvas of ``background`` (the processor's mean colour)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class VLMProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: BaseImageProcessor,
        *,
        image_size: int,
        num_image_tokens: int,
        template: str,
        image_aspect: str,
        image_token: str = IMAGE_TOKEN,
    ) -> None:
        if image_aspect not in IMAGE_ASPECTS:
            raise ValueError(f"unknown image_aspect {image_aspect!r}; allowed: {', '.join(IMAGE_ASPECTS)}")
        image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token!r} token")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.template = template
        self.image_aspect = image_aspect
        self.image_token = image_token
        self.image_token_id: int = image_token_id

    def _background(self) -> tuple[int, ...]:
        # LLaVA's expand2square colour, truncated as LLaVA does: tuple(int(x * 255) for x in image_mean)
        return tuple(int(m * 255) for m in self.image_processor.image_mean)

    def process_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``n`` PIL images -> ``(n, 3, image_size, image_size)`` normalised pixels."""
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        prepared = []
        for image in images:
            image = image.convert("RGB")
            if self.image_aspect == "pad":
                image = expand_to_square(image, self._background())
            # Resizing to the exact square here makes the processor's own resize / crop no-ops,
            # so `square` never crops and `pad` keeps the whole padded image.
            prepared.append(image.resize((self.image_size, self.image_size), Image.BICUBIC))
        return self.image_processor(prepared, return_tensors="pt")["pixel_values"]

    # -- persistence: the same folder as the model

    def _settings(self) -> dict[str, Any]:
        return {
            "image_token": self.image_token,
            "image_size": self.image_size,
            "num_image_tokens": self.num_image_tokens,
            "template": self.template,
            "image_aspect": self.image_aspect,
        }

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        with open(os.path.join(directory, PROCESSOR_FILE), "w") as f:
            json.dump(self._settings(), f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str) -> VLMProcessor:
        path = os.path.join(directory, PROCESSOR_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} holds no {PROCESSOR_FILE}: not a VLM checkpoint folder")
        with open(path) as f:
            settings = json.load(f)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        image_processor = AutoImageProcessor.from_pretrained(directory)
        return cls(tokenizer, image_processor, **settings)
