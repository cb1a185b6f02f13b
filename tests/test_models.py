"""The composed VLM: image-feature placement, loss, count checks, generation, packing, builder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlm_core.config import ModelConfig, load_config
from vlm_core.data.templates import get_template
from vlm_core.models import VLMForConditionalGeneration, build_vlm

TEXTS = ["What colour is the shape?", "The red circle is in the top left.", "red", "circle", "square"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model, processor = build_vlm(ModelConfig(), template="vicuna_v1", image_aspect="pad", tokenizer_texts=TEXTS)
    return model.eval(), processor


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _batch(processor, images_per_sample: list[int], text_len: int = 3):
    """Right-padded ids where each sample has its images' tokens after a few text tokens."""
    t, image = processor.num_image_tokens, processor.image_token_id
    rows = []
    for i, n in enumerate(images_per_sample):
        row = []
        for j in range(n):
            row += [10 + i + j] + [image] * t
        row += list(range(20 + i, 20 + i + text_len))
        rows.append(row)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), processor.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _manual_embeds(model, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Embeddings with each image's features written position by position, in reading order."""
    embeds = model.get_input_embeddings()(ids).clone()
    features = model.projector(model.vision_tower(pixels))
    image = 0
    for b in range(ids.shape[0]):
        positions = (ids[b] == model.config.image_token_id).nonzero().flatten().tolist()
        for k in range(0, len(positions), model.config.num_image_tokens):
            for j, pos in enumerate(positions[k : k + model.config.num_image_tokens]):
                embeds[b, pos] = features[image, j]
            image += 1
    assert image == pixels.shape[0]
    return embeds


def test_image_features_are_placed_at_image_tokens(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [0, 1, 2])
    pixels = _pixels(3)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        manual = model.language_model(inputs_embeds=_manual_embeds(model, ids, pixels), attention_mask=mask).logits
        swapped = model(input_ids=ids, attention_mask=mask, pixel_values=pixels.flip(0)).logits
    torch.testing.assert_close(ours, manual)
    assert not torch.allclose(ours[1:], swapped[1:]), "image order must matter"


def _full_logits_loss(model, ids, mask, pixels, labels):
    """LLaVA's loss: every position's logits, shifted labels, mean over scored targets."""
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def test_loss_ignores_image_positions_and_padding(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [1, 2])
    pixels = _pixels(3)
    labels = ids.masked_fill(mask == 0, -100)  # image positions deliberately left as targets
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
        expected = _full_logits_loss(model, ids, mask, pixels, labels.masked_fill(ids == processor.image_token_id, -100))
    torch.testing.assert_close(out.loss, expected)


def _loss_and_grads(model, forward):
    """``forward()``'s result (an output with ``.loss``, or a loss) and every parameter's gradient."""
    model.zero_grad()
    out = forward()
    (out if isinstance(out, torch.Tensor) else out.loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out, grads


def test_logits_only_where_scored_give_the_full_loss_and_gradients(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [1, 2], text_len=5)
    pixels = _pixels(3, seed=4)
    labels = ids.masked_fill((mask == 0) | (ids == processor.image_token_id), -100)
    labels[:, : ids.shape[1] - 4] = -100  # a prompt: only the last few tokens are answers
    model.train()
    try:
        scored, scored_grads = _loss_and_grads(
            model, lambda: model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
        )
        full_loss, full_grads = _loss_and_grads(model, lambda: _full_logits_loss(model, ids, mask, pixels, labels))
    finally:
        model.eval()
    scored_targets = int((labels[:, 1:] != -100).sum())
    assert scored.logits.shape == (scored_targets, model.config.text_config.vocab_size)
    torch.testing.assert_close(scored.loss, full_loss)
    assert scored_grads.keys() == full_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(scored_grads[name], grad, msg=name)
    # num_items_in_batch (the Trainer's count over accumulation steps) divides the sum instead
    with torch.no_grad():
        halved = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                       num_items_in_batch=2 * scored_targets).loss
    torch.testing.assert_close(halved, full_loss.detach() / 2)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels, logits_to_keep=1)


def test_image_token_count_mismatch_raises(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [1, 1])
    with pytest.raises(ValueError, match=r"holds 32 image tokens .* 3 image\(s\) x 16 tokens per image = 48"):
        model(input_ids=ids, attention_mask=mask, pixel_values=_pixels(3))
    with pytest.raises(ValueError, match="image tokens .* but no pixel_values"):
        model(input_ids=ids, attention_mask=mask)


def test_text_only_forward_matches_the_llm(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [0, 0])
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits,
            model.language_model(input_ids=ids, attention_mask=mask).logits,
        )


def test_generate_with_images_matches_stepwise_argmax(tiny):
    model, processor = tiny
    ids, mask = _batch(processor, [1, 1])
    pixels = _pixels(2, seed=1)
    new_tokens = 6
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new_tokens, do_sample=False
        )
        sequence = ids
        for _ in range(new_tokens):  # no cache: the full sequence (and the images) every step
            logits = model(input_ids=sequence, pixel_values=pixels).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    eos = processor.tokenizer.eos_token_id
    expected = sequence.clone()
    for row in expected[:, ids.shape[1] :]:  # generate pads after EOS
        done = (row == eos).nonzero()
        if len(done):
            row[done[0, 0] + 1 :] = processor.tokenizer.pad_token_id
    assert torch.equal(generated[:, : expected.shape[1]], expected)


def test_packed_samples_attend_only_within_themselves(tiny):
    model, processor = tiny
    first, _ = _batch(processor, [1], text_len=4)
    second, _ = _batch(processor, [2], text_len=2)
    pixels = _pixels(3, seed=2)
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])]).unsqueeze(0)
    with torch.no_grad():
        packed_logits = model(input_ids=packed, position_ids=position_ids, pixel_values=pixels).logits
        alone = model(input_ids=second, pixel_values=pixels[1:]).logits
    torch.testing.assert_close(packed_logits[:, first.shape[1] :], alone)


def test_text_only_training_step_reaches_the_same_vision_parameters(tiny):
    """A text-only batch must touch the parameters an image batch touches (ZeRO-3 / DDP lockstep)."""
    model, processor = tiny
    text_ids, text_mask = _batch(processor, [0])
    image_ids, image_mask = _batch(processor, [1])

    def reached(**inputs) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**inputs).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None and not n.startswith("language_model")}

    model.train()
    try:
        with_image = reached(input_ids=image_ids, attention_mask=image_mask, labels=image_ids, pixel_values=_pixels(1))
        text_only = reached(input_ids=text_ids, attention_mask=text_mask, labels=text_ids)
    finally:
        model.zero_grad()
        model.eval()
    assert with_image.keys() == text_only.keys() and any(n.startswith("projector") for n in text_only)
    assert all(float(g.abs().sum()) == 0.0 for g in text_only.values())


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    _, processor = tiny
    ids, mask = _batch(processor, [1])
    pixels = _pixels(1)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model, _ = build_vlm(ModelConfig(), template="vicuna_v1", image_aspect="pad", tokenizer_texts=TEXTS)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_build_is_deterministic_per_seed():
    a, _ = build_vlm(ModelConfig(seed=3), template="plain", image_aspect="square", tokenizer_texts=TEXTS)
    b, _ = build_vlm(ModelConfig(seed=3), template="plain", image_aspect="square", tokenizer_texts=TEXTS)
    c, _ = build_vlm(ModelConfig(seed=4), template="plain", image_aspect="square", tokenizer_texts=TEXTS)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("encoder", ["clip", "siglip", "dinov2", "qwen_vl_vit"])
def test_position_init_std_redraws_only_the_position_table(encoder):
    """The table comes out at the asked scale, the same for one seed, and no other weight moves
    (its own generator: the rest of the model is the build without the option)."""
    from vlm_core.models.vision import VISION_ENCODERS

    def build(std):
        cfg = ModelConfig.model_validate({"seed": 5, "vision": {"encoder": encoder, "position_init_std": std}})
        return build_vlm(cfg, template="plain", image_aspect="square", tokenizer_texts=TEXTS)[0].state_dict()

    table = "vision_tower.model." + VISION_ENCODERS.get(encoder).position_table
    default, wide, again = build(None), build(1.5), build(1.5)
    assert 1.2 < float(wide[table].std()) < 1.8 and float(default[table].std()) < 0.5
    assert all(torch.equal(wide[k], again[k]) for k in wide)
    assert [k for k in wide if not torch.equal(wide[k], default[k])] == [table]


def test_position_init_std_needs_a_known_table():
    from types import SimpleNamespace

    from vlm_core.models.vision import redraw_position_table

    # `auto` builds any transformers vision model, whose table's name is not known in advance
    with pytest.raises(ValueError, match="encoder 'auto' has no known position-embedding table"):
        redraw_position_table(SimpleNamespace(encoder="auto"), 1.0, seed=0)


def test_tiny_preset_and_overrides(tiny):
    model, processor = tiny
    llm = model.language_model.config
    assert (llm.model_type, llm.hidden_size, llm.num_hidden_layers, llm.num_attention_heads, llm.intermediate_size) == (
        "llama", 128, 2, 4, 256
    )
    assert llm.vocab_size == len(processor.tokenizer)
    assert model.config.image_token_id == processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.num_image_tokens == processor.num_image_tokens == 16
    assert model.generation_config.bos_token_id is None
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id

    cfg = ModelConfig.model_validate(
        {
            "llm": {"config": {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 96}},
            "projector": {"type": "cross_attn", "num_queries": 9},
            "vision": {"encoder": "siglip", "feature_layer": -1},
        }
    )
    other, other_processor = build_vlm(cfg, template="chatml", image_aspect="square", tokenizer_texts=TEXTS,
                                       special_tokens=["<|im_start|>", "<|im_end|>"])
    assert type(other.language_model).__name__ == "Qwen2ForCausalLM"
    assert other.config.num_image_tokens == other_processor.num_image_tokens == 9
    ids = torch.tensor([[5] + [other_processor.image_token_id] * 9 + [6]])
    assert other(input_ids=ids, pixel_values=_pixels(1)).logits.shape == (1, 11, len(other_processor.tokenizer))


def test_quickstart_llm_starts_at_the_fan_in_scale():
    """configs/quickstart.yaml's ``initializer_range`` reaches the random LLM's weights: at 0.02
    (transformers' default) the width-128 model never learnt the multiple-choice letters (README)."""
    cfg = load_config("configs/quickstart.yaml")
    model, processor = build_vlm(cfg.model, template=cfg.data.template, image_aspect=cfg.data.image_aspect,
                                 tokenizer_texts=TEXTS, special_tokens=get_template(cfg.data.template).special_tokens)
    scale = cfg.model.llm.config["initializer_range"]
    assert scale == pytest.approx(cfg.model.llm.config["hidden_size"] ** -0.5, rel=0.2)
    for layer in model.language_model.model.layers:
        for weight in (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.mlp.up_proj.weight):
            assert weight.std().item() == pytest.approx(scale, rel=0.05)
    assert processor.num_image_tokens == 4  # patch 16 on 32 px: one token per quadrant


def test_pretrained_parts_load_by_path(tmp_path):
    """LLM + tokenizer and a vision encoder from folders: weights kept, <image> added, embeddings resized."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    # A hub-like tokenizer without <image> and without a pad token.
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, image_size=32, patch_size=8))
    vision.save_pretrained(tmp_path / "vision")

    cfg = ModelConfig.model_validate(
        {"llm": {"name_or_path": str(tmp_path / "llm")}, "vision": {"name_or_path": str(tmp_path / "vision")}}
    )
    model, processor = build_vlm(cfg, template="chatml", image_aspect="pad", special_tokens=["<|im_start|>"])
    vocab = processor.tokenizer.get_vocab()
    assert {"<image>", "<|im_start|>", "<pad>"} <= vocab.keys() and "<image>" not in tokenizer.get_vocab()
    assert processor.tokenizer.pad_token == "<pad>"
    assert processor.tokenizer.tokenize("red <image>")[-1] == "<image>"
    assert model.language_model.get_input_embeddings().weight.shape[0] >= len(processor.tokenizer)
    torch.testing.assert_close(
        model.language_model.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight
    )
    loaded, saved = model.vision_tower.model.state_dict(), vision.state_dict()
    # feature layer -2 of 2: the last layer is never used, so it is not built
    assert loaded.keys() == {k for k in saved if ".layers.1." not in k}
    for name in loaded:
        torch.testing.assert_close(loaded[name], saved[name], msg=name)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(model.vision_tower(pixels), expected)
    assert isinstance(model, VLMForConditionalGeneration)


def test_random_parts_get_their_own_classes_initialization():
    """A random tower and LLM inside the VLM are initialized as transformers initializes them alone
    (CLIP's attention and MLP scales, not a generic 0.02), so a seed means the same model however
    the VLM is built."""
    from transformers import AutoModel, AutoModelForCausalLM

    model, _ = build_vlm(ModelConfig(), template="vicuna_v1", image_aspect="pad", tokenizer_texts=TEXTS)
    for part, cls in ((model.vision_tower.model, AutoModel), (model.language_model, AutoModelForCausalLM)):
        alone = dict(cls.from_config(part.config).named_parameters())
        for name, param in part.named_parameters():
            if param.numel() >= 256 and alone[name].std() > 0:
                ratio = float(param.std() / alone[name].std())
                assert 0.8 < ratio < 1.25, (type(part).__name__, name, ratio)
