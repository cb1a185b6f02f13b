"""GPU probe: one LLaVA-1.5-7B-shaped training step in bf16, its tokens/s and MFU.

    python benchmarks/gpu_mfu.py --quick          # < 2 min on one H100
    python benchmarks/gpu_mfu.py                  # fuller sweep, still guarded by --time-limit
    PYTHONPATH=. python benchmarks/gpu_mfu.py --model vlm llava   # ours and transformers' Llava

Needs torch + transformers and a CUDA GPU (`--model vlm` also this repo's vlm_core on the path,
which needs pydantic); never part of CI. Random weights, shapes of
LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px (576 patch tokens per image, feature layer -2), an
mlp2x_gelu projector, Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32064).

Training step as LLaVA-1.5's instruction stage: vision tower frozen, projector + LLM trained;
forward + backward + optimizer step, one image per sample, sequences of --seq tokens (576 of
them image tokens). Optimizer: plain SGD on bf16 weights, because AdamW's fp32 states and master
weights (16 bytes/param, ~110 GB for 7B) do not fit one 80 GB GPU; the optimizer is <1% of the
step's FLOPs, so MFU is what forward+backward achieve.

Model FLOPs per step (PaLM's convention, counted once even when checkpointing recomputes):
    LLM:    6 * P_body * tokens + 12 * L * d * S^2 * B    (P_body: non-embedding params without lm_head;
                                                            attention counted over the full S x S)
    head:   6 * P_head * scored                           (only positions that predict a scored token:
                                                            ours skips the rest, Llava computes them anyway)
    vision: 2 * P_vit * patches + 4 * Lv * dv * N^2 * images   (forward only: frozen)
    projector: 6 * P_proj * image_tokens
MFU = model FLOPs / step time / dense bf16 peak (by device name, or --peak-tflops).
Prints progress to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s; the first matching name wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
)

VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=336, patch_size=14, projection_dim=768)
LLM = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096)
IMAGE_TOKEN = 32000


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    raise SystemExit(f"no known bf16 peak for {name!r}; pass --peak-tflops (known: {', '.join(k for k, _ in PEAK_BF16_TFLOPS)})")


def build(kind: str, layers: int, attn: str):
    return MODELS[kind](layers, attn)


def build_vlm(layers: int, attn: str):
    """Our VLMForConditionalGeneration with the same encoder, projector and LLM shapes."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from vlm_core.models.modeling_vlm import VLMConfig, VLMForConditionalGeneration

    cfg = VLMConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=LlamaConfig(**{**LLM, "num_hidden_layers": layers}, use_cache=False),
        vision_encoder="clip", feature_layer=-2, feature_select="patch", projector_type="mlp2x_gelu",
        image_token_id=IMAGE_TOKEN, num_image_tokens=(VISION["image_size"] // VISION["patch_size"]) ** 2,
    )
    with torch.device("cuda"):
        model = VLMForConditionalGeneration._from_config(cfg, attn_implementation=attn, dtype=torch.bfloat16)
    model.vision_tower.requires_grad_(False)
    return model.train()


def build_llava(layers: int, attn: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=LlamaConfig(**{**LLM, "num_hidden_layers": layers}, use_cache=False),
        image_token_index=IMAGE_TOKEN, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=(VISION["image_size"] // VISION["patch_size"]) ** 2,
    )
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation=attn, dtype=torch.bfloat16)
    model.model.vision_tower.requires_grad_(False)
    return model.train()


MODELS = {"vlm": build_vlm, "llava": build_llava}


def _parts(model):
    """(LLM body, LM head, vision tower, projector) of either model."""
    if hasattr(model, "language_model") and hasattr(model, "projector"):  # ours
        return model.language_model.model, model.language_model.lm_head, model.vision_tower, model.projector
    return model.model.language_model, model.lm_head, model.model.vision_tower, model.model.multi_modal_projector


def model_flops(model, batch: int, seq: int, scored: int) -> float:
    text, vision = model.config.text_config, model.config.vision_config
    lm, head, tower, projector = _parts(model)
    p_body = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    p_vit = sum(p.numel() for p in tower.parameters())
    p_proj = sum(p.numel() for p in projector.parameters())
    patches = (vision.image_size // vision.patch_size) ** 2
    n_vit = patches + 1  # + CLS
    llm = 6 * p_body * batch * seq + 6 * head.weight.numel() * scored
    llm += 12 * text.num_hidden_layers * text.hidden_size * seq**2 * batch
    vit = 2 * p_vit * n_vit * batch + 4 * vision.num_hidden_layers * vision.hidden_size * n_vit**2 * batch
    proj = 6 * p_proj * patches * batch
    return float(llm + vit + proj)


def inputs(model, batch: int, seq: int) -> dict:
    vision = model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    if seq <= patches:
        raise SystemExit(f"--seq must exceed the {patches} image tokens, got {seq}")
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(2, IMAGE_TOKEN, (batch, seq), device="cuda", generator=g)
    ids[:, 1 : 1 + patches] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : 1 + patches] = -100
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, device="cuda", dtype=torch.bfloat16, generator=g)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "use_cache": False}


def measure(model, batch: int, seq: int, steps: int, checkpointing: bool, peak: float) -> dict:
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, foreach=True)
    data = inputs(model, batch, seq)

    def step() -> float:
        loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: kernels selected, allocator grown
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    t = sorted(times)[len(times) // 2]
    flops = model_flops(model, batch, seq, scored=int((data["labels"][:, 1:] != -100).sum()))
    return {
        "batch": batch, "seq": seq, "gradient_checkpointing": checkpointing, "step_s": round(t, 4),
        "tokens_per_s": round(batch * seq / t, 1), "model_tflops_per_s": round(flops / t / 1e12, 1),
        "mfu": round(flops / t / (peak * 1e12), 4), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }


def attention_impls(wanted: list[str]) -> list[str]:
    from transformers.utils import is_flash_attn_2_available

    return [a for a in wanted if a != "flash_attention_2" or is_flash_attn_2_available()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one batch size, 3 timed steps per setting")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: by device name)")
    parser.add_argument("--layers", type=int, default=LLM["num_hidden_layers"], help="LLM layers (32 = 7B)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sample (576 are image tokens)")
    parser.add_argument("--batch", type=int, nargs="*", help="batch sizes (default: 2 quick; 2 4 8 full)")
    parser.add_argument("--attn", nargs="*", default=["sdpa", "flash_attention_2"], help="attention implementations to try")
    parser.add_argument("--model", nargs="*", default=["vlm", "llava"], choices=sorted(MODELS),
                        help="vlm: ours; llava: transformers' LlavaForConditionalGeneration")
    parser.add_argument("--time-limit", type=float, default=270.0, help="stop starting new settings after this many seconds")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        raise SystemExit("gpu_mfu.py needs a CUDA GPU")
    started = time.time()
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, args.peak_tflops)
    batches = args.batch or ([2] if args.quick else [2, 4, 8])
    steps = 3 if args.quick else 6
    impls = attention_impls(args.attn)
    skipped = [a for a in args.attn if a not in impls]

    import transformers

    results, notes = [], [f"attention not available: {a}" for a in skipped]
    for kind, attn in [(k, a) for a in impls for k in args.model]:
        model = build(kind, args.layers, attn)
        for checkpointing in (False, True):
            for batch in batches:
                setting = f"{kind} {attn} ckpt={checkpointing} batch={batch}"
                if time.time() - started > args.time_limit:
                    notes.append(f"skipped (time limit): {setting}")
                    continue
                print(f"[gpu_mfu] {setting} ...", file=sys.stderr, flush=True)
                try:
                    res = measure(model, batch, args.seq, steps, checkpointing, peak)
                except torch.OutOfMemoryError:
                    notes.append(f"out of memory: {setting}")
                    torch.cuda.empty_cache()
                    continue
                res.update(model=kind, attn=attn)
                results.append(res)
                print(f"[gpu_mfu]   {json.dumps(res)}", file=sys.stderr, flush=True)
        del model
        torch.cuda.empty_cache()

    best = max(results, key=lambda r: r["mfu"], default=None)
    print(json.dumps({
        "device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "transformers": transformers.__version__,
        "llm_layers": args.layers, "optimizer": "SGD on bf16 weights (no states)", "vision": "frozen",
        "best": best, "results": results, "notes": notes, "seconds": round(time.time() - started, 1),
    }))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
