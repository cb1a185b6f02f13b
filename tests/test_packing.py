"""Padding-free packing: the packed batch trains exactly like the padded one."""

from __future__ import annotations

import pytest
import torch

from vlm_core.data.collate import VLMCollator, pad_right
from vlm_core.data.packing import (
    IGNORE_INDEX,
    PackingCollator,
    make_packing_collator,
    plan_rows,
    token_sample_index,
)

PAD = 0
LENGTHS = (9, 3, 14, 1, 6)


def _samples(lengths=LENGTHS, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, length in enumerate(lengths):
        ids = torch.randint(1, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[: length // 3] = IGNORE_INDEX  # a prompt without loss, as templates make
        out.append({"input_ids": ids, "labels": labels, "pixel_values": torch.zeros(0, 3, 4, 4), "dataset_index": n % 2})
    return out


def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).train()


def _summed_loss_and_grads(model, batch):
    """Sum of token losses (so both layouts normalize identically) and every parameter's gradient."""
    model.zero_grad()
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "dataset_index")}
    if "pixel_values" in inputs and inputs["pixel_values"].shape[0] == 0:
        del inputs["pixel_values"]  # text-only samples (the tiny Llama takes no images)
    logits = model(**inputs).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("max_tokens", [None, 16])
def test_packed_loss_and_gradients_equal_padded(attn, max_tokens):
    model = _tiny_llama(attn)
    samples = _samples()
    packed = PackingCollator(pad_token_id=PAD, max_tokens=max_tokens)(samples)
    assert "attention_mask" not in packed
    assert packed["input_ids"].shape[0] == (1 if max_tokens is None else 3)

    ref_loss, ref_grads = _summed_loss_and_grads(model, pad_right(samples, PAD))
    loss, grads = _summed_loss_and_grads(model, packed)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_model_mean_loss_equals_padded():
    """The model's own (mean) loss matches too: both layouts count the same predicted tokens."""
    model = _tiny_llama("sdpa")
    samples = _samples()
    packed = make_packing_collator(PAD)(samples)
    padded = pad_right(samples, PAD)
    ours = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"], use_cache=False).loss
    ref = model(**padded).loss
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_without_use_cache_false_samples_leak():
    """Why the batch carries use_cache=False: with a cache transformers skips packed-mask detection."""
    model = _tiny_llama("sdpa")
    samples = _samples((5, 7))
    packed = make_packing_collator(PAD)(samples)
    alone = model(input_ids=samples[1]["input_ids"][None]).logits
    confined = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[:, 5:]
    leaked = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True).logits[:, 5:]
    torch.testing.assert_close(confined, alone, rtol=1e-5, atol=1e-5)
    assert (leaked - alone).abs().max() > 1e-3


def test_layout_positions_labels_and_order():
    samples = _samples((3, 2))
    samples[0]["pixel_values"] = torch.full((1, 3, 4, 4), 1.0)
    samples[1]["pixel_values"] = torch.full((2, 3, 4, 4), 2.0)
    samples[1]["labels"] = samples[1]["input_ids"].clone()
    batch = make_packing_collator(PAD)(samples + [None])

    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["input_ids"][0].tolist() == samples[0]["input_ids"].tolist() + samples[1]["input_ids"].tolist()
    # each sample's first label is ignored; the rest are unchanged
    assert batch["labels"][0, 3] == IGNORE_INDEX
    assert batch["labels"][0, 4] == samples[1]["labels"][1]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
    assert batch["dataset_index"].tolist() == [0, 1]
    assert batch["use_cache"] is False


def test_rows_padding_continues_the_last_sample():
    batch = make_packing_collator(PAD, max_tokens=5)(_samples((3, 4, 1)))
    # first-fit-decreasing: [4, 1], [3] + 2 pads
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4]]
    assert batch["input_ids"][1, 3:].tolist() == [PAD, PAD]
    assert batch["labels"][1, 3:].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    assert batch["dataset_index"].tolist() == [1, 0, 0]
    assert token_sample_index(batch["position_ids"]).tolist() == [[0, 0, 0, 0, 1], [2, 2, 2, 2, 2]]


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([5, 2, 7, 3], None) == [[0, 1, 2, 3]]
    assert plan_rows([5, 2, 7, 3], 8) == [[2], [0, 3], [1]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: PackingCollator(PAD, max_tokens=0), "max_tokens must be positive"),
        (lambda: make_packing_collator(PAD, max_tokens=2)(_samples((3,))), r"samples of \[3\] tokens exceed"),
        (lambda: make_packing_collator(PAD)([None]), "every sample of the batch was skipped"),
    ],
)
def test_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- the full VLM

IMAGE_ID = 45


def _tiny_vlm(attn: str):
    from transformers import CLIPVisionConfig, LlamaConfig

    from vlm_core.models.modeling_vlm import VLMConfig, VLMForConditionalGeneration

    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4)
    text = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg = VLMConfig(vision_config=vision, text_config=text, feature_layer=-1, image_token_id=IMAGE_ID)
    torch.manual_seed(0)
    return VLMForConditionalGeneration._from_config(cfg, attn_implementation=attn).train()


def _vlm_samples():
    """Samples with 1, 0 and 2 images (4 image tokens each) and distinct pixels per image."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n, (images, text) in enumerate([(1, 6), (0, 9), (2, 3), (1, 1)]):
        ids = torch.cat([torch.full((4 * images,), IMAGE_ID), torch.randint(1, IMAGE_ID, (text,), generator=g)])
        labels = ids.clone()
        labels[: 4 * images + 1] = IGNORE_INDEX
        pixels = torch.randn(images, 3, 16, 16, generator=g)
        out.append({"input_ids": ids, "labels": labels, "pixel_values": pixels, "dataset_index": n})
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("max_tokens", [None, 12])
def test_vlm_packed_loss_and_gradients_equal_padded(attn, max_tokens):

    model = _tiny_vlm(attn)
    samples = _vlm_samples()
    packed = PackingCollator(pad_token_id=PAD, max_tokens=max_tokens)(samples)
    ref_loss, ref_grads = _summed_loss_and_grads(model, VLMCollator(PAD)(samples))
    loss, grads = _summed_loss_and_grads(model, packed)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert any(name.startswith("vision_tower.") for name in grads)  # images reached the loss
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
