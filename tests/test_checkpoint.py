"""Checkpoints: save -> load (local and s3://) gives the same model, processor and Auto-class loading."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_core.config import ModelConfig
from vlm_core.models import build_vlm, load_checkpoint, save_checkpoint

TEXTS = ["What colour is the shape?", "red", "circle"]


@pytest.fixture(scope="module")
def built():
    torch.set_num_threads(1)
    cfg = ModelConfig.model_validate({"projector": {"type": "cross_attn", "num_queries": 4}})
    model, processor = build_vlm(cfg, template="chatml", image_aspect="pad", tokenizer_texts=TEXTS,
                                 special_tokens=["<|im_start|>", "<|im_end|>"])
    return model.eval(), processor


def _inputs(processor):
    image = Image.new("RGB", (48, 24), (200, 30, 30))
    pixels = processor.process_images([image])
    ids = processor.tokenizer("<|im_start|>user\n" + "<image>" * processor.num_image_tokens + "red?",
                              return_tensors="pt").input_ids
    return ids, pixels


def _logits(model, ids, pixels):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def _assert_same(built, loaded_model, loaded_processor):
    model, processor = built
    ids, pixels = _inputs(processor)
    loaded_ids, loaded_pixels = _inputs(loaded_processor)
    assert torch.equal(ids, loaded_ids) and torch.equal(pixels, loaded_pixels)
    torch.testing.assert_close(_logits(loaded_model, ids, pixels), _logits(model, ids, pixels), rtol=0, atol=0)
    for name in ("num_image_tokens", "image_token_id", "image_token", "template", "image_aspect", "image_size"):
        assert getattr(loaded_processor, name) == getattr(processor, name)
    assert loaded_model.generation_config.bos_token_id is None


def test_local_round_trip(built, tmp_path):
    save_checkpoint(*built, str(tmp_path / "ckpt"))
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "preprocessor_config.json", "vlm_processor.json"} <= files
    _assert_same(built, *load_checkpoint(str(tmp_path / "ckpt")))


def test_s3_round_trip(built, s3_bucket):
    url = f"{s3_bucket}/runs/instruct"
    save_checkpoint(*built, url)
    _assert_same(built, *load_checkpoint(url))


def test_loads_through_auto_classes_without_remote_code(built, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    save_checkpoint(*built, str(tmp_path))
    assert AutoConfig.from_pretrained(tmp_path).model_type == "vlm"
    ids, pixels = _inputs(built[1])
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
        loaded = auto.from_pretrained(tmp_path, trust_remote_code=False).eval()
        torch.testing.assert_close(_logits(loaded, ids, pixels), _logits(built[0], ids, pixels), rtol=0, atol=0)


def test_load_with_dtype(built, tmp_path):
    save_checkpoint(*built, str(tmp_path))
    model, _ = load_checkpoint(str(tmp_path), torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises((OSError, FileNotFoundError)):
        load_checkpoint(str(tmp_path / "nothing-here"))
