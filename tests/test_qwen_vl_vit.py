"""The Qwen-VL ViT and the name mapping of Qwen-VL's ``transformer.visual.*`` checkpoint.

The state dict below uses Qwen-VL's exact key names and shapes (visual.py: conv1 without bias,
positional_embedding (positions, width), resblocks with fused ``attn.in_proj``, ``mlp.c_fc`` /
``mlp.c_proj``; ``attn_pool`` = Resampler with query, pos_embed, kv_proj (no bias),
nn.MultiheadAttention, ln_q, ln_kv; ``ln_post``; ``proj`` (output_dim, output_dim)). The
reference forward is written independently from Qwen-VL's description (sequence-first tensors,
the per-head ``[q|k|v]`` split, bmm attention) to pin the layout.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlm_core.config import ModelConfig
from vlm_core.models import build_vlm, split_qwen_vl_visual_state_dict
from vlm_core.models.grid import sincos_2d

WIDTH, LAYERS, HEADS, MLP, PATCH, IMAGE, POSITIONS = 64, 2, 4, 96, 8, 32, 4  # positions: a 2x2 table, resized to 4x4
OUT, QUERIES = 128, 16  # LLM width, resampler queries


def qwen_vl_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    p = "transformer.visual."
    sd = {
        f"{p}conv1.weight": r(WIDTH, 3, PATCH, PATCH),
        f"{p}positional_embedding": r(POSITIONS, WIDTH),
        f"{p}ln_pre.weight": 1 + r(WIDTH),
        f"{p}ln_pre.bias": r(WIDTH),
    }
    for i in range(LAYERS):
        b = f"{p}transformer.resblocks.{i}."
        sd |= {
            f"{b}ln_1.weight": 1 + r(WIDTH), f"{b}ln_1.bias": r(WIDTH),
            f"{b}attn.in_proj.weight": r(3 * WIDTH, WIDTH), f"{b}attn.in_proj.bias": r(3 * WIDTH),
            f"{b}attn.out_proj.weight": r(WIDTH, WIDTH), f"{b}attn.out_proj.bias": r(WIDTH),
            f"{b}ln_2.weight": 1 + r(WIDTH), f"{b}ln_2.bias": r(WIDTH),
            f"{b}mlp.c_fc.weight": r(MLP, WIDTH), f"{b}mlp.c_fc.bias": r(MLP),
            f"{b}mlp.c_proj.weight": r(WIDTH, MLP), f"{b}mlp.c_proj.bias": r(WIDTH),
        }
    a = f"{p}attn_pool."
    sd |= {
        f"{a}query": r(QUERIES, OUT),
        f"{a}pos_embed": sincos_2d(OUT, 4, 4),
        f"{a}kv_proj.weight": r(OUT, WIDTH),
        f"{a}attn.in_proj_weight": r(3 * OUT, OUT), f"{a}attn.in_proj_bias": r(3 * OUT),
        f"{a}attn.out_proj.weight": r(OUT, OUT), f"{a}attn.out_proj.bias": r(OUT),
        f"{a}ln_q.weight": 1 + r(OUT), f"{a}ln_q.bias": r(OUT),
        f"{a}ln_kv.weight": 1 + r(OUT), f"{a}ln_kv.bias": r(OUT),
        f"{p}ln_post.weight": 1 + r(OUT), f"{p}ln_post.bias": r(OUT),
        f"{p}proj": r(OUT, OUT),
        "transformer.wte.weight": r(10, OUT),  # the LLM's: ignored by the split
    }
    return sd


def reference_visual(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """Qwen-VL's visual forward, sequence-first as in the original."""
    p = "transformer.visual."
    ln = lambda x, name: F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)  # noqa: E731
    x = F.conv2d(pixels, sd[f"{p}conv1.weight"], stride=PATCH).flatten(2).permute(0, 2, 1)
    src, dst = math.isqrt(POSITIONS), math.isqrt(x.shape[1])
    pos = F.interpolate(sd[f"{p}positional_embedding"].reshape(1, src, src, -1).permute(0, 3, 1, 2),
                        size=(dst, dst), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)
    x = ln(x + pos, f"{p}ln_pre").permute(1, 0, 2)  # (L, B, D)
    hd = WIDTH // HEADS
    for i in range(LAYERS):
        b = f"{p}transformer.resblocks.{i}."
        h = ln(x, f"{b}ln_1")
        sq, bs, _ = h.shape
        mixed = F.linear(h, sd[f"{b}attn.in_proj.weight"], sd[f"{b}attn.in_proj.bias"]).view(sq, bs, HEADS, 3 * hd)
        q, k, v = mixed.split(hd, dim=-1)
        q, k, v = (t.reshape(sq, bs * HEADS, hd).transpose(0, 1) for t in (q, k, v))
        probs = torch.bmm(q / math.sqrt(hd), k.transpose(1, 2)).softmax(-1)
        ctx = torch.bmm(probs, v).view(bs, HEADS, sq, hd).permute(2, 0, 1, 3).reshape(sq, bs, WIDTH)
        x = x + F.linear(ctx, sd[f"{b}attn.out_proj.weight"], sd[f"{b}attn.out_proj.bias"])
        m = F.gelu(F.linear(ln(x, f"{b}ln_2"), sd[f"{b}mlp.c_fc.weight"], sd[f"{b}mlp.c_fc.bias"]))
        x = x + F.linear(m, sd[f"{b}mlp.c_proj.weight"], sd[f"{b}mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)  # (B, L, D)

    a = f"{p}attn_pool."
    grid = math.isqrt(QUERIES)
    key_pos = F.interpolate(sd[f"{a}pos_embed"].reshape(1, grid, grid, -1).permute(0, 3, 1, 2),
                            size=(dst, dst), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(0, 2)
    kv = ln(F.linear(x, sd[f"{a}kv_proj.weight"]), f"{a}ln_kv").permute(1, 0, 2)
    q = ln(sd[f"{a}query"], f"{a}ln_q").unsqueeze(1).repeat(1, kv.shape[1], 1)
    attn = torch.nn.MultiheadAttention(OUT, OUT // 128)
    attn.load_state_dict({k[len(f"{a}attn."):]: v for k, v in sd.items() if k.startswith(f"{a}attn.")})
    out = attn(q + sd[f"{a}pos_embed"].unsqueeze(1), kv + key_pos.unsqueeze(1), kv)[0].permute(1, 0, 2)
    return ln(out, f"{p}ln_post") @ sd[f"{p}proj"]


@pytest.fixture(scope="module")
def qwen_like():
    torch.set_num_threads(1)
    cfg = ModelConfig.model_validate({
        "vision": {"encoder": "qwen_vl_vit", "feature_layer": -1,
                   "config": {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                              "intermediate_size": MLP, "patch_size": PATCH, "image_size": IMAGE,
                              "num_positions": POSITIONS}},
        "projector": {"type": "cross_attn", "num_queries": QUERIES},
    })
    model, _ = build_vlm(cfg, template="chatml", image_aspect="square", tokenizer_texts=["a b c"])
    return model.eval()


def test_split_routes_every_visual_key():
    sd = qwen_vl_state_dict()
    encoder, resampler = split_qwen_vl_visual_state_dict(sd)
    assert set(resampler) == {k.removeprefix("transformer.visual.") for k in sd
                              if k.startswith(("transformer.visual.attn_pool", "transformer.visual.ln_post"))} | {"proj"}
    assert len(encoder) + len(resampler) == len(sd) - 1  # the LLM key is left out
    with pytest.raises(ValueError, match="no Qwen-VL visual weights"):
        split_qwen_vl_visual_state_dict({"transformer.wte.weight": torch.zeros(1)})


def test_qwen_vl_weights_load_strictly_and_reproduce_the_reference(qwen_like):
    model = qwen_like
    sd = qwen_vl_state_dict()
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.get_image_features(pixels)
        encoder, resampler = split_qwen_vl_visual_state_dict(sd)
        model.vision_tower.model.load_state_dict(encoder, strict=True)
        model.projector.load_state_dict(resampler, strict=True)
        after = model.get_image_features(pixels)
        reference = reference_visual(sd, pixels)
    assert after.shape == (2, QUERIES, OUT)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, reference, atol=1e-4, rtol=1e-4)


def test_vit_hidden_states_and_auto_classes(qwen_like, tmp_path):
    from transformers import AutoConfig, AutoModel

    vit = qwen_like.vision_tower.model
    out = vit(pixel_values=torch.zeros(1, 3, IMAGE, IMAGE), output_hidden_states=True)
    assert len(out.hidden_states) == LAYERS + 1 and out.last_hidden_state.shape == (1, 16, WIDTH)
    assert qwen_like.vision_tower.num_patches == 16 and qwen_like.vision_tower.num_prefix_tokens == 0
    vit.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "qwen_vl_vit"
    reloaded = AutoModel.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.positional_embedding, vit.positional_embedding)
