"""VLMProcessor's batched image path gives the transformers image processors' pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, SiglipImageProcessor

from tests.fixtures.data.helpers import make_tokenizer
from vlm_core.models.processor import VLMProcessor
from vlm_core.models.vision import VISION_ENCODERS

FAMILIES = ["clip", "siglip", "chinese_clip", "dinov2", "qwen_vl_vit"]


def images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (20, 40), (50, 17), (7, 7)]]
    out.append(Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), "L"))
    out.append(Image.fromarray(rng.integers(0, 256, (30, 20, 4), dtype=np.uint8), "RGBA"))
    return out


def processor(image_processor, size: int, aspect: str) -> VLMProcessor:
    return VLMProcessor(make_tokenizer(), image_processor, image_size=size, num_image_tokens=4, template="plain", image_aspect=aspect)


def reference(p: VLMProcessor, batch: list[Image.Image]) -> torch.Tensor:
    """What the transformers processor makes of the same squared images."""
    return p.image_processor(p.square_images(batch), return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [16, 32, 56])
@pytest.mark.parametrize("aspect", ["square", "pad"])
def test_batched_path_equals_the_transformers_processor(family, size, aspect):
    p = processor(VISION_ENCODERS.get(family).image_processor(size), size, aspect)
    batch = images(size)
    got = p.process_images(batch)
    assert p._rescale_normalize, "the batched path should apply to this processor"
    want = reference(p, batch)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want)
    assert torch.equal(p.process_images(batch[:1]), want[:1])


def test_a_processor_that_does_more_is_used_as_it_is():
    # a crop smaller than the square: the batched path cannot reproduce it, so it steps aside
    cropping = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 24, "width": 24})
    p = processor(cropping, 32, "pad")
    batch = images(1)
    assert p.process_images(batch).shape == (len(batch), 3, 24, 24)
    assert p._rescale_normalize is False
    assert torch.equal(p.process_images(batch), reference(p, batch))


def test_unnormalized_processor():
    plain = SiglipImageProcessor(size={"height": 16, "width": 16}, do_normalize=False)
    p = processor(plain, 16, "square")
    batch = images(2)
    assert torch.equal(p.process_images(batch), reference(p, batch)) and p._rescale_normalize
