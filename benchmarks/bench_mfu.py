"""Model FLOPs utilization of our VLM's training step on this machine.

Row: baseline = the peak fp32 matmul FLOP/s this harness measures (``harness.peak_matmul_flops``),
ours = achieved model FLOP/s of a training step, ratio = MFU. Model FLOPs per step (PaLM's
convention; backward = 2 x forward; attention over the full S x S):

    LLM        6 * P_body * B * S + 12 * L * d * S^2 * B     (P_body: non-embedding params without lm_head)
    LM head    6 * P_head * T                                 (T: positions that predict a scored token)
    vision     6 * P_vit * B * N  + 12 * Lv * dv * N^2 * B   (N = patches + CLS; trainable here)
    projector  6 * P_proj * B * patches

The LM head counts only where a logit is needed: the others are work our model skips, so
counting them would inflate its MFU.
"""

from __future__ import annotations

from benchmarks import bench_train_step as shapes
from benchmarks.harness import median, peak_matmul_flops, row, timed
from vlm_core.models.loss import next_token_targets


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_flops(model, batch: int, seq: int, scored: int) -> float:
    text, vision = model.config.text_config, model.config.vision_config
    llm = model.language_model
    p_head = llm.get_output_embeddings().weight.numel()
    p_body = _params(llm) - llm.get_input_embeddings().weight.numel() - p_head
    patches = (vision.image_size // vision.patch_size) ** 2
    n_vit = patches + 1
    return float(
        6 * p_body * batch * seq + 12 * text.num_hidden_layers * text.hidden_size * seq**2 * batch
        + 6 * p_head * scored
        + 6 * _params(model.vision_tower) * batch * n_vit
        + 12 * vision.num_hidden_layers * vision.hidden_size * n_vit**2 * batch
        + 6 * _params(model.projector) * batch * patches
    )


def bench(quick: bool) -> list:
    model = shapes.build_ours(quick)
    data = shapes.batch(quick)
    step = shapes.Stepper(model, data)
    step()  # warm-up
    seconds = median([timed(step) for _ in range(3 if quick else 6)])
    b, s = data["input_ids"].shape
    _, targets = next_token_targets(data["labels"])
    achieved = model_flops(model, b, s, targets.numel()) / seconds
    peak = peak_matmul_flops(1024 if quick else 2048)
    return [row("MFU: model FLOP/s of our train step / peak fp32 matmul", "GFLOP/s", peak / 1e9, achieved / 1e9,
                target="report", note=f"ratio = MFU; batch {b} x {s} tokens, fp32 sdpa, AdamW; 6*P*tokens + 12*L*d*S^2, head at scored positions")]
