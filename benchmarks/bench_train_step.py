"""Training step: our VLM vs. transformers' LlavaForConditionalGeneration at equal shapes.

Both models are built from the same CLIP vision config and Llama text config, with LLaVA-1.5's
mlp2x_gelu projector, feature layer -2 without CLS, SDPA attention, fp32 on CPU; Llava gets our
initial weights (renamed), so both compute the same loss, which the note checks. Where ours does
less: it does not build the vision layer after the feature layer (Llava computes it and discards
the result), and it projects onto the vocabulary only the positions that predict a scored token
(Llava projects all of them, image and prompt included). A step is forward + backward + AdamW step
on one batch of one image and a text per sample, everything trainable, the loss the model returns
for ``labels``. Peak memory is measured per side in a fresh process (``harness.peak_rss_mb``).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.harness import alternate, median, peak_rss_mb, row

IMAGE_TOKEN = 1000
VOCAB = 1024
# LLaVA-1.5's (Vicuna's) vocabulary: the second comparison, where the LM head is a real share of
# the model, as in the small LLMs (Qwen2-0.5B: 136M of 494M parameters) small VLMs are built on.
LLAVA_VOCAB = 32000
# Shapes large enough that kernels, not Python overhead, dominate on two CPU cores.
SHAPES = {
    True: dict(batch=4, text=96, image=112, vision=(256, 3, 4), llm=(384, 3, 6)),
    False: dict(batch=8, text=256, image=224, vision=(384, 6, 6), llm=(768, 6, 12)),
}


def configs(quick: bool, vocab: int = VOCAB) -> dict[str, Any]:
    from transformers import CLIPVisionConfig, LlamaConfig

    s = SHAPES[quick]
    v_hidden, v_layers, v_heads = s["vision"]
    hidden, layers, heads = s["llm"]
    vision = CLIPVisionConfig(hidden_size=v_hidden, intermediate_size=4 * v_hidden, num_hidden_layers=v_layers,
                              num_attention_heads=v_heads, image_size=s["image"], patch_size=14)
    text = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                       tie_word_embeddings=False, use_cache=False)
    return {"vision": vision, "text": text}


def build_ours(quick: bool, vocab: int = VOCAB):
    from vlm_core.models.modeling_vlm import VLMConfig, VLMForConditionalGeneration

    c = configs(quick, vocab)
    cfg = VLMConfig(vision_config=c["vision"], text_config=c["text"], vision_encoder="clip", feature_layer=-2,
                    feature_select="patch", projector_type="mlp2x_gelu", image_token_id=IMAGE_TOKEN)
    torch.manual_seed(0)
    return VLMForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").train()


def build_baseline(quick: bool, ours=None, vocab: int = VOCAB):
    """LLaVA with the same configs; with ``ours`` given, its weights too (so the losses match)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    c = configs(quick, vocab)
    grid = c["vision"].image_size // c["vision"].patch_size
    cfg = LlavaConfig(vision_config=c["vision"], text_config=c["text"], image_token_index=IMAGE_TOKEN,
                      projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                      image_seq_length=grid * grid, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").train()
    if ours is not None:
        # Llava also builds the vision layer after the feature layer, which ours leaves out; its
        # output is never used, so with every other weight shared the losses still match.
        last = c["vision"].num_hidden_layers - 1
        result = model.load_state_dict(_as_llava_state(ours.state_dict()), strict=False)
        unused = [k for k in result.missing_keys if not k.startswith(f"model.vision_tower.encoder.layers.{last}.")]
        if unused or result.unexpected_keys:
            raise KeyError(f"weights not shared with Llava: missing {unused}, unexpected {result.unexpected_keys}")
    return model


_RENAMES = (
    ("vision_tower.model.", "model.vision_tower."),
    ("projector.0.", "model.multi_modal_projector.linear_1."),
    ("projector.2.", "model.multi_modal_projector.linear_2."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)


def _as_llava_state(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for ours, theirs in _RENAMES:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            raise KeyError(f"no Llava name for our parameter {key!r}")
    return out


def batch(quick: bool) -> dict[str, torch.Tensor]:
    s = SHAPES[quick]
    c = configs(quick)
    patches = (s["image"] // 14) ** 2
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, IMAGE_TOKEN, (s["batch"], 1 + patches + s["text"]), generator=g)
    ids[:, 1 : 1 + patches] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : 1 + patches + s["text"] // 4] = -100  # image and prompt carry no loss
    pixels = torch.randn(s["batch"], 3, c["vision"].image_size, c["vision"].image_size, generator=g)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


class Stepper:
    def __init__(self, model, data: dict):
        self.model, self.data = model, data
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        self.losses: list[float] = []

    def __call__(self) -> None:
        loss = self.model(**self.data, use_cache=False).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())


def run_steps(side: str, quick: bool, steps: int, vocab: int = VOCAB) -> None:
    """Memory probe body: build one side and train it a few steps (run in a fresh process)."""
    model = build_ours(quick, vocab) if side == "ours" else build_baseline(quick, vocab=vocab)
    step = Stepper(model, batch(quick))
    for _ in range(steps):
        step()


def compare(quick: bool, vocab: int, reps: int, probes: int) -> list:
    """Samples/s and peak-memory rows of both models at one vocabulary size."""
    ours_model = build_ours(quick, vocab)
    base_model = build_baseline(quick, ours=ours_model, vocab=vocab)
    data = batch(quick)
    ours, base = Stepper(ours_model, data), Stepper(base_model, data)
    base_t, ours_t = alternate(base, ours, reps=reps, warmup=1)
    same = abs(ours.losses[0] - base.losses[0]) < 1e-4
    del ours_model, base_model, ours, base  # the memory probes below run beside this process

    n, length = data["input_ids"].shape
    shape = f"batch {n} x {length} tokens, vocab {vocab:,}, fp32 sdpa, AdamW"
    spread = f"s/step Llava {min(base_t):.2f}-{max(base_t):.2f}, ours {min(ours_t):.2f}-{max(ours_t):.2f}"
    pairs = median([b / o for b, o in zip(base_t, ours_t)])
    label = "" if vocab == VOCAB else f", vocab {vocab:,}"
    rows = [row(f"train step{label}: samples/s (ours VLM vs HF Llava)", "samples/s", n / median(base_t), n / median(ours_t),
                target=">=1.0x", note=f"{shape}; same first loss: {same}; median of {reps}; {spread}; "
                                      f"median of per-repetition ratios {pairs:.2f}x")]

    # Peak RSS moves by +-50 MB from process to process (heap layout), so the median of a few.
    preload = ("transformers", "vlm_core.models.modeling_vlm", "transformers.models.llava.modeling_llava")
    mem: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(probes):
        for side, peaks in mem.items():
            kwargs = {"side": side, "quick": quick, "steps": 2, "vocab": vocab}
            peaks.append(peak_rss_mb("benchmarks.bench_train_step:run_steps", kwargs, preload))
    rows.append(row(f"train step{label}: peak memory (ours vs HF Llava)", "MB", median(mem["baseline"]),
                    median(mem["ours"]), target=">=1.0x", lower_is_better=True,
                    note=f"peak RSS added by build + 2 steps, median of {probes} fresh process(es) per side"))
    return rows


def bench(quick: bool) -> list:
    # The host's noise is +-10-20 % per step, so the main comparison takes many repetitions; at
    # LLaVA's vocabulary the gap is wide enough for a few.
    main = compare(quick, VOCAB, reps=4 if quick else 16, probes=1 if quick else 3)
    return main + compare(quick, LLAVA_VOCAB, reps=2 if quick else 6, probes=1)
