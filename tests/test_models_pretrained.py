"""A VLM built from checkpoints that transformers itself wrote stays causal and equals its LLM.

Tiny random models never showed the bug this guards against: a VLM config given the live config
of a loaded LLM switched that LLM to no attention implementation, so it built no causal mask.
Every checkpoint here is written by transformers' own ``save_pretrained``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlm_core.config import ModelConfig
from vlm_core.models import build_vlm
from vlm_core.models.tokenizer import train_bpe_tokenizer

TEXTS = ["a chat between a user and an assistant", "what colour is the shape?", "red", "circle"]
LLMS = {
    "llama": lambda vocab: LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,
    ),
    "qwen2": lambda vocab: Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    ),
    # Mistral-style grouped-query attention with a sliding window wider than the inputs
    "mistral": lambda vocab: MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, sliding_window=64,
    ),
}
TOWERS = {
    "clip": lambda: CLIPVisionModel(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4,
    )),
    "siglip": lambda: SiglipVisionModel(SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4,
    )),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{name: folder}`` of LLMs (with the tokenizer) and vision towers saved by transformers."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    folders = {}
    for name, make in LLMS.items():
        llm = AutoModelForCausalLM.from_config(make(len(tokenizer)))
        llm.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = root / name
    for name, make in TOWERS.items():
        make().save_pretrained(root / name)
        folders[name] = root / name
    return folders


def _build(checkpoints, llm: str, tower: str, **llm_options):
    cfg = ModelConfig.model_validate({
        "vision": {"encoder": tower, "name_or_path": str(checkpoints[tower]), "feature_layer": -1},
        "llm": {"name_or_path": str(checkpoints[llm]), **llm_options},
    })
    model, processor = build_vlm(cfg, template="vicuna_v1", image_aspect="pad")
    return model, processor


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(5, 250, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("llm,tower", [("llama", "clip"), ("qwen2", "siglip"), ("mistral", "clip")])
def test_future_tokens_never_change_past_logits(checkpoints, llm, tower, mode):
    model, _ = _build(checkpoints, llm, tower)
    model.train(mode == "train")
    ids = _ids(12, 0)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 250 + 5
    mask = torch.ones_like(ids)
    with torch.no_grad():
        for attention_mask in (mask, None):
            before = model(input_ids=ids, attention_mask=attention_mask).logits
            after = model(input_ids=changed, attention_mask=attention_mask).logits
            torch.testing.assert_close(before[:, :-1], after[:, :-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("llm", list(LLMS))
def test_text_only_logits_equal_the_plain_llm(checkpoints, llm):
    model, _ = _build(checkpoints, llm, "clip")
    reference = AutoModelForCausalLM.from_pretrained(checkpoints[llm]).eval()
    model.eval()
    ids = torch.cat([_ids(9, 1), _ids(9, 2)])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a right-padded row
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        theirs = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=0, atol=1e-5)


@pytest.mark.parametrize("llm", list(LLMS))
def test_packed_rows_keep_samples_apart(checkpoints, llm):
    model, _ = _build(checkpoints, llm, "clip")
    model.train()
    first, second = _ids(7, 3), _ids(5, 4)
    other = _ids(5, 5)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions).logits
        repacked = model(input_ids=torch.cat([first, other], 1), position_ids=positions).logits
        alone = model(input_ids=second, position_ids=torch.arange(5)[None]).logits
    torch.testing.assert_close(packed[:, :7], repacked[:, :7], rtol=0, atol=1e-6)
    torch.testing.assert_close(packed[:, 7:], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("llm", list(LLMS))
def test_first_training_loss_equals_transformers_loss(checkpoints, llm):
    """In train mode, on the same text batch, our loss is the one transformers' LLM computes."""
    model, _ = _build(checkpoints, llm, "clip")
    reference = AutoModelForCausalLM.from_pretrained(checkpoints[llm])
    model.train()
    reference.train()
    ids = torch.cat([_ids(10, 6), _ids(10, 7)])
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # a prompt that carries no loss
    ours = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    theirs = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_parts_keep_the_implementation_they_were_loaded_with(checkpoints):
    model, _ = _build(checkpoints, "llama", "clip", attn_implementation="eager")
    assert model.language_model.config._attn_implementation == "eager"
    assert model.config.text_config is model.language_model.config
    assert model.vision_tower.model.config._attn_implementation is not None


def _llava_reference(model, tower: str):
    """transformers' Llava holding our model's weights (tower and LLM as loaded, our projector)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=model.vision_tower.model.config.to_dict(), text_config=model.language_model.config.to_dict(),
        image_token_index=model.config.image_token_id, vision_feature_layer=-1,
        vision_feature_select_strategy="default" if tower == "clip" else "full", projector_hidden_act="gelu",
    )
    reference = LlavaForConditionalGeneration(config)
    reference.model.vision_tower.load_state_dict(model.vision_tower.model.state_dict())
    reference.model.language_model.load_state_dict(model.language_model.model.state_dict())
    reference.lm_head.load_state_dict(model.language_model.lm_head.state_dict())
    reference.model.multi_modal_projector.load_state_dict(
        {f"linear_{1 if k[0] == '0' else 2}.{k.split('.')[1]}": v for k, v in model.projector.state_dict().items()})
    return reference


@pytest.mark.parametrize("llm,tower", [("llama", "clip"), ("qwen2", "siglip"), ("mistral", "clip")])
def test_first_image_batch_loss_equals_transformers_llava(checkpoints, llm, tower):
    """Train mode, a right-padded batch of two image conversations: our first loss is Llava's."""
    from vlm_core.data.templates import get_template

    model, processor = _build(checkpoints, llm, tower)
    reference = _llava_reference(model, tower)
    model.train()
    reference.train()
    template = get_template("vicuna_v1")
    rows = [template.encode([{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}],
                            processor.tokenizer, processor.image_token_id, processor.num_image_tokens)
            for q, a in (("what colour is the shape?", "red"), ("circle?", "a red circle in the top left"))]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((2, width), processor.tokenizer.pad_token_id)
    labels = torch.full((2, width), -100)
    mask = torch.zeros_like(ids)
    for row, (row_ids, row_labels) in enumerate(rows):
        ids[row, : len(row_ids)], labels[row, : len(row_ids)] = torch.tensor(row_ids), torch.tensor(row_labels)
        mask[row, : len(row_ids)] = 1
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    ours = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
    theirs = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
