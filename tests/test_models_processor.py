"""VLMProcessor: square / pad image handling and persistence."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_core.config import ModelConfig
from vlm_core.models import VLMProcessor, build_vlm


@pytest.fixture(scope="module")
def processors():
    _, square = build_vlm(ModelConfig(), template="plain", image_aspect="square", tokenizer_texts=["red"])
    _, pad = build_vlm(ModelConfig(), template="plain", image_aspect="pad", tokenizer_texts=["red"])
    return square, pad


def test_square_stretches_and_pad_keeps_the_aspect(processors):
    square, pad = processors
    red = Image.new("RGB", (64, 32), (255, 0, 0))  # wide: pad adds bands above and below
    stretched, padded = square.process_images([red]), pad.process_images([red])
    assert stretched.shape == padded.shape == (1, 3, 32, 32)
    red_value = stretched[0, 0, 16, 16]
    assert torch.allclose(stretched[0, 0], red_value)  # all red: nothing cropped or padded
    # the padded bands are the processor's mean colour, which normalises to ~0
    assert padded[0, :, 0, 16].abs().max() < 0.02 and padded[0, :, 31, 16].abs().max() < 0.02
    assert torch.allclose(padded[0, 0, 16, :], red_value, atol=1e-5)


def test_empty_and_grey_images(processors):
    square, _ = processors
    assert square.process_images([]).shape == (0, 3, 32, 32)
    assert square.process_images([Image.new("L", (10, 10), 128)]).shape == (1, 3, 32, 32)


def test_round_trip(processors, tmp_path):
    _, pad = processors
    pad.save_pretrained(str(tmp_path))
    loaded = VLMProcessor.from_pretrained(str(tmp_path))
    assert (loaded.image_token_id, loaded.num_image_tokens, loaded.template, loaded.image_aspect) == (
        pad.image_token_id, pad.num_image_tokens, "plain", "pad")
    image = Image.new("RGB", (20, 50), (0, 0, 255))
    assert torch.equal(loaded.process_images([image]), pad.process_images([image]))


def test_bad_settings(processors, tmp_path):
    square, _ = processors
    with pytest.raises(ValueError, match="unknown image_aspect 'crop'"):
        VLMProcessor(square.tokenizer, square.image_processor, image_size=32, num_image_tokens=16, template="plain",
                     image_aspect="crop")
    with pytest.raises(FileNotFoundError, match="not a VLM checkpoint folder"):
        VLMProcessor.from_pretrained(str(tmp_path))


def test_pad_colour_is_llavas_truncated_mean(processors):
    """LLaVA pads with ``int(255 * mean)``: (122, 116, 104) for CLIP's mean, not the rounded (123, 117, 104)."""
    from vlm_core.models.processor import expand_to_square

    _, pad = processors
    padded = expand_to_square(Image.new("RGB", (8, 4), (255, 0, 0)), pad._background())
    assert padded.size == (8, 8)
    assert padded.getpixel((0, 0)) == (122, 116, 104) and padded.getpixel((0, 4)) == (255, 0, 0)
