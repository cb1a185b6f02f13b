"""Qwen v1 (``model_type: qwen``, Qwen-7B/14B and Qwen-VL's LLM) in transformers' Qwen2 layout.

Qwen v1 is a pre-norm decoder with RMSNorm, rotary positions (rotate-half, base
``rotary_emb_base``), a fused ``c_attn`` projection with bias laid out ``[Q | K | V]``, an output
projection ``c_proj`` without bias and a SwiGLU MLP ``c_proj(w1(x) * silu(w2(x)))`` whose two
halves are each ``intermediate_size // 2`` wide: exactly Qwen2's architecture (q/k/v with bias, o
without, ``down(up(x) * silu(gate(x)))``) with every head its own key/value head. So the weights
map one to one:

    transformer.wte            -> model.embed_tokens
    transformer.h.N.ln_1       -> model.layers.N.input_layernorm
    transformer.h.N.attn.c_attn -> model.layers.N.self_attn.{q,k,v}_proj (split in three)
    transformer.h.N.attn.c_proj -> model.layers.N.self_attn.o_proj
    transformer.h.N.ln_2       -> model.layers.N.post_attention_layernorm
    transformer.h.N.mlp.w2 / w1 / c_proj -> model.layers.N.mlp.gate_proj / up_proj / down_proj
    transformer.ln_f           -> model.norm
    lm_head                    -> lm_head

Not carried: Qwen v1's inference-time extensions beyond its training length ``seq_length``
(dynamic-NTK RoPE scaling and logn attention scaling). Within ``seq_length`` tokens they are
inactive, so the converted model computes the same function there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import torch

from vlm_core.models.importers.base import UnsupportedCheckpoint
from vlm_core.models.importers.weights import (
    check_complete,
    iter_shards,
    weight_files,
    write_sharded,
)

log = logging.getLogger("vlm.import")

_LAYER = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_LAYER_KEYS = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",  # the half that goes through SiLU
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_TOP_KEYS = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# Buffers some Qwen v1 checkpoints carry; recomputed by Qwen2, never weights.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.attn\.masked_bias|\.attn\.bias)$")


def qwen2_config(qwen: dict[str, Any]):
    """The transformers ``Qwen2Config`` of a Qwen v1 ``config.json`` (raises for what Qwen2 cannot express)."""
    from transformers import Qwen2Config

    hidden, heads = qwen["hidden_size"], qwen["num_attention_heads"]
    checks = {
        "kv_channels": (qwen.get("kv_channels", hidden // heads), hidden // heads),
        "rotary_pct": (qwen.get("rotary_pct", 1.0), 1.0),
        "no_bias": (qwen.get("no_bias", True), True),
        "scale_attn_weights": (qwen.get("scale_attn_weights", True), True),
    }
    for name, (value, needed) in checks.items():
        if value != needed:
            raise UnsupportedCheckpoint(
                f"Qwen v1 config has {name}={value!r}; the Qwen2 layout expresses only {name}={needed!r}"
            )
    dtype = "bfloat16" if qwen.get("bf16") else "float16" if qwen.get("fp16") else qwen.get("torch_dtype")
    extensions = [name for name in ("use_dynamic_ntk", "use_logn_attn") if qwen.get(name)]
    if extensions:
        log.warning(
            "Qwen v1 %s not carried: beyond seq_length=%s tokens the converted model uses plain RoPE "
            "and unscaled attention (identical within seq_length)",
            " and ".join(extensions), qwen.get("seq_length"),
        )
    return Qwen2Config(
        vocab_size=qwen["vocab_size"],
        hidden_size=hidden,
        intermediate_size=qwen["intermediate_size"] // 2,
        num_hidden_layers=qwen["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=qwen.get("max_position_embeddings", qwen.get("seq_length", 2048)),
        rms_norm_eps=qwen.get("layer_norm_epsilon", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(qwen.get("rotary_emb_base", 10000))},
        tie_word_embeddings=qwen.get("tie_word_embeddings", False),
        attention_dropout=qwen.get("attn_dropout_prob", 0.0),
        use_sliding_window=False,
        eos_token_id=qwen.get("eos_token_id"),
        dtype=dtype,
        architectures=["Qwen2ForCausalLM"],
    )


def convert_tensors(tensors: dict[str, torch.Tensor], hidden_size: int) -> dict[str, torch.Tensor]:
    """One shard of Qwen v1 LLM weights in Qwen2 names (visual weights are not the LLM's: skipped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("transformer.visual.") or _IGNORED.search(key):
            continue
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            raise UnsupportedCheckpoint(f"unexpected Qwen v1 weight {key!r}")
        layer, name = match.groups()
        prefix = f"model.layers.{layer}."
        if name in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = name.rsplit(".", 1)[1]
            for proj, part in zip("qkv", value.split(hidden_size, dim=0)):
                out[f"{prefix}self_attn.{proj}_proj.{kind}"] = part.clone()
        elif name in _LAYER_KEYS:
            out[prefix + _LAYER_KEYS[name]] = value
        else:
            raise UnsupportedCheckpoint(f"unexpected Qwen v1 weight {key!r}")
    return out


def write_qwen2(src: str, qwen: dict[str, Any], folder: str) -> None:
    """Write ``src``'s LLM as a transformers Qwen2 folder (config + safetensors), shard by shard."""
    config = qwen2_config(qwen)
    config.save_pretrained(folder)
    written: set[str] = set()

    def shards() -> Iterator[dict[str, torch.Tensor]]:
        from tqdm import tqdm

        files = len(weight_files(src))
        source = iter_shards(src, keep=lambda key: not key.startswith("transformer.visual."))
        for shard in tqdm(source, total=files, desc="Qwen v1 -> Qwen2", unit="shard", disable=files < 2):
            converted = convert_tensors(shard, config.hidden_size)
            written.update(converted)
            yield converted

    write_sharded(shards(), folder)
    check_complete(config, written, src)

