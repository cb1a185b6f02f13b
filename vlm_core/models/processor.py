"""`VLMProcessor`: the tokenizer, the image processor and the few facts that tie them to the model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
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


def _batched_equivalent(image_processor: BaseImageProcessor, size: int) -> Callable[[torch.Tensor], torch.Tensor] | Literal[False]:
    """A batched ``uint8 (n, 3, size, size) -> float32`` function equal to ``image_processor`` on
    ``size`` squares, or False.

    On a square of the final size the transformers processors' resize and crop change nothing,
    and what remains is pointwise: ``float32(float64(x) * rescale_factor)``, then ``(x - mean) / std``
    in float32 (transformers' numpy order, kept here so the pixels are bit-identical). Pointwise
    means one probe that holds every byte value in every channel proves equality for all images;
    a processor that differs on it (another size, padding, other steps) is used as it is.
    """
    def rescale_normalize(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels
        if getattr(image_processor, "do_rescale", False):
            x = (x.double() * image_processor.rescale_factor).float()
        x = x.float()
        if getattr(image_processor, "do_normalize", False):
            mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    levels = np.arange(size * size, dtype=np.int64) % 256
    probe = np.stack([levels, (levels * 7 + 3) % 256, (levels * 13 + 5) % 256], axis=-1).reshape(size, size, 3)
    probe_image = Image.fromarray(probe.astype(np.uint8), "RGB")
    try:
        expected = image_processor([probe_image], return_tensors="pt")["pixel_values"]
        got = rescale_normalize(torch.from_numpy(np.array(probe_image)).permute(2, 0, 1)[None])
    except (AttributeError, TypeError, ValueError):
        return False
    return rescale_normalize if expected.shape == got.shape and torch.equal(expected, got) else False


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
        # The image processor's rescale + normalize as one batched torch op, once checked to give
        # its exact pixels; False where it does not (then the processor itself runs).
        self._rescale_normalize: Callable[[torch.Tensor], torch.Tensor] | Literal[False] | None = None

    def _background(self) -> tuple[int, ...]:
        # LLaVA's expand2square colour, truncated as LLaVA does: tuple(int(x * 255) for x in image_mean)
        return tuple(int(m * 255) for m in self.image_processor.image_mean)

    def square_images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """RGB ``image_size`` squares: ``square`` stretches, ``pad`` centres on the mean colour first."""
        prepared = []
        for image in images:
            image = image.convert("RGB")
            if self.image_aspect == "pad":
                image = expand_to_square(image, self._background())
            # Resizing to the exact square here makes the processor's own resize / crop no-ops,
            # so `square` never crops and `pad` keeps the whole padded image.
            prepared.append(image.resize((self.image_size, self.image_size), Image.BICUBIC))
        return prepared

    def process_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``n`` PIL images -> ``(n, 3, image_size, image_size)`` normalised pixels."""
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        prepared = self.square_images(images)
        if self._rescale_normalize is None:
            self._rescale_normalize = _batched_equivalent(self.image_processor, self.image_size)
        if self._rescale_normalize is False:
            return self.image_processor(prepared, return_tensors="pt")["pixel_values"]
        pixels = torch.from_numpy(np.stack([np.asarray(image) for image in prepared])).permute(0, 3, 1, 2)
        return self._rescale_normalize(pixels)

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
