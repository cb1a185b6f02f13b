"""Tiny checkpoints in the layouts LLaVA, transformers' Llava and Qwen-VL publish, and reference forwards.

Written without our code: towers and LLMs by transformers' own classes (``save_pretrained``),
LLaVA's and Qwen-VL's folders key by key as their repositories save them:

- LLaVA-1.5 (haotian-liu/LLaVA): ``config.json`` = the Llama config + ``model_type: llava_llama`` and
  the ``mm_*`` fields; weights ``model.*`` / ``lm_head.weight`` plus ``model.mm_projector.{0,2}``
  in ``pytorch_model-0000N-of-0000M.bin`` shards with an index; the tokenizer (Vicuna's: no pad, no
  ``<image>``); the vision tower is not in the folder, ``mm_vision_tower`` names it. Stage 1 saves
  ``mm_projector.bin`` (``model.mm_projector.*`` only) next to ``config.json``.
- Qwen-VL (modeling_qwen.py / visual.py / tokenization_qwen.py): ``model_type: qwen`` with a
  ``visual`` section; ``transformer.wte``, ``transformer.h.N.{ln_1, attn.c_attn (fused qkv, bias),
  attn.c_proj, ln_2, mlp.w1, mlp.w2, mlp.c_proj}``, ``transformer.ln_f``, ``lm_head``,
  ``transformer.visual.*``; ``qwen.tiktoken`` (``base64 rank`` lines), safetensors shards + index.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

TEXTS = ["a chat between a user and an assistant", "USER: what colour is the shape? ASSISTANT: red",
         "circle square triangle", "where is it? top left", "red", "blue", "green"]
TOWER = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}


def vicuna_like_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama's specials only (<unk> <s> </s>): no pad, no <image>, as Vicuna's."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXTS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def write_clip_tower(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def llama_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def _save_bin_shards(state: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> None:
    keys = sorted(state)
    names, weight_map = [], {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i::shards]}
        torch.save(part, folder / name)
        names.append(name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def llava_projector_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.mm_projector.0.weight": torch.randn(64, TOWER["hidden_size"], generator=g) * 0.1,
        "model.mm_projector.0.bias": torch.randn(64, generator=g) * 0.1,
        "model.mm_projector.2.weight": torch.randn(64, 64, generator=g) * 0.1,
        "model.mm_projector.2.bias": torch.randn(64, generator=g) * 0.1,
    }


def _llava_fields(tower: Path) -> dict:
    return {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": str(tower), "mm_hidden_size": TOWER["hidden_size"], "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
        "use_mm_proj": True, "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 2048,
    }


def write_llava(root: Path) -> dict[str, Path]:
    """A LLaVA-1.5 folder, its stage-1 mm_projector.bin folder, the base LLM and the tower."""
    tower = write_clip_tower(root / "clip")
    tokenizer = vicuna_like_tokenizer()
    torch.manual_seed(2)
    base = LlamaForCausalLM(llama_config(len(tokenizer)))
    base.save_pretrained(root / "vicuna")
    tokenizer.save_pretrained(root / "vicuna")

    full = root / "llava-v1.5"
    full.mkdir()
    config = {**llama_config(len(tokenizer)).to_dict(), **_llava_fields(tower)}
    (full / "config.json").write_text(json.dumps(config))
    _save_bin_shards({**base.state_dict(), **llava_projector_state()}, full)
    tokenizer.save_pretrained(full)

    stage1 = root / "llava-v1.5-pretrain"
    stage1.mkdir()
    (stage1 / "config.json").write_text(json.dumps(config))
    torch.save(llava_projector_state(), stage1 / "mm_projector.bin")
    return {"full": full, "stage1": stage1, "llm": root / "vicuna", "tower": tower}


def llava_reference(paths: dict[str, Path], image_token_id: int):
    """transformers' LlavaForConditionalGeneration holding the LLaVA folder's weights (one more
    embedding row for the <image> token LLaVA never embeds), mapped as transformers' conversion does."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tower = CLIPVisionModel.from_pretrained(paths["tower"])
    llm = LlamaForCausalLM.from_pretrained(paths["llm"])
    llm.resize_token_embeddings(image_token_id + 1)
    config = LlavaConfig(vision_config=tower.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_index=image_token_id, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    reference = LlavaForConditionalGeneration(config)
    reference.model.vision_tower.load_state_dict(tower.state_dict())
    reference.model.language_model.load_state_dict(llm.model.state_dict())
    reference.lm_head.load_state_dict(llm.lm_head.state_dict())
    projector = {k.removeprefix("model.mm_projector."): v for k, v in llava_projector_state().items()}
    reference.model.multi_modal_projector.load_state_dict(
        {f"linear_{1 if k[0] == '0' else 2}.{k.split('.')[1]}": v for k, v in projector.items()})
    return reference.eval()


# ----------------------------------------------------------------------------- Qwen-VL


QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
QWEN_VL_SPECIALS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
QWEN = {"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 192, "seq_length": 64}


def qwen_ranks() -> dict[bytes, int]:
    """A tiny tiktoken vocabulary trained with Qwen's split pattern (tiktoken's reference trainer)."""
    from tiktoken._educational import bpe_train

    text = " ".join(TEXTS) + " 12 345 café naïve 你好 don't\n\n  tabs\tand spaces"
    return bpe_train(text * 10, 300, QWEN_PATTERN, visualise=None)


def qwen_encoding(ranks: dict[bytes, int], visual: bool):
    """Qwen's published tokenizer: tiktoken with its pattern and specials numbered after the ranks."""
    import tiktoken

    specials = QWEN_SPECIALS + (QWEN_VL_SPECIALS if visual else ())
    return tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                             special_tokens={t: len(ranks) + i for i, t in enumerate(specials)})


def qwen_llm_state(vocab: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, ff = QWEN["hidden_size"], QWEN["intermediate_size"] // 2

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.wte.weight": r(vocab, h, scale=0.5), "transformer.ln_f.weight": 1 + r(h), "lm_head.weight": r(vocab, h)}
    for i in range(QWEN["num_hidden_layers"]):
        b = f"transformer.h.{i}."
        sd |= {
            f"{b}ln_1.weight": 1 + r(h), f"{b}ln_2.weight": 1 + r(h),
            f"{b}attn.c_attn.weight": r(3 * h, h), f"{b}attn.c_attn.bias": r(3 * h),
            f"{b}attn.c_proj.weight": r(h, h),
            f"{b}mlp.w1.weight": r(ff, h), f"{b}mlp.w2.weight": r(ff, h), f"{b}mlp.c_proj.weight": r(h, ff),
        }
    return sd


def qwen_config(vocab: int, visual: dict | None) -> dict:
    config = {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "vocab_size": vocab, **QWEN, "kv_channels": QWEN["hidden_size"] // QWEN["num_attention_heads"],
        "layer_norm_epsilon": 1e-6, "max_position_embeddings": 256, "no_bias": True, "rotary_emb_base": 10000,
        "rotary_pct": 1.0, "scale_attn_weights": True, "use_dynamic_ntk": True, "use_logn_attn": True,
        "use_flash_attn": False, "bf16": False, "fp16": False, "fp32": True, "tie_word_embeddings": False,
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "tokenizer_type": "QWenTokenizer",
    }
    if visual is not None:
        config["visual"] = visual
    return config


def write_qwen(folder: Path, state: dict[str, torch.Tensor], config: dict, ranks: dict[bytes, int]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "qwen.tiktoken", "w") as f:
        f.writelines(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())
    keys = sorted(state)
    weight_map = {}
    for i in range(2):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::2]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def qwen_reference_logits(sd: dict[str, torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
    """Qwen v1's forward from its published description (one sequence, no cache, fp32)."""
    h, heads = QWEN["hidden_size"], QWEN["num_attention_heads"]
    hd = h // heads
    n = embeds.shape[0]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(n).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # (n, 1, hd)
    causal = torch.full((n, n), float("-inf")).triu(1)
    x = embeds
    for i in range(QWEN["num_hidden_layers"]):
        b = f"transformer.h.{i}."
        mixed = F.linear(_rms(x, sd[f"{b}ln_1.weight"]), sd[f"{b}attn.c_attn.weight"], sd[f"{b}attn.c_attn.bias"])
        q, k, v = (t.view(n, heads, hd) for t in mixed.split(h, dim=-1))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + causal
        ctx = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, h)
        x = x + F.linear(ctx, sd[f"{b}attn.c_proj.weight"])
        m = _rms(x, sd[f"{b}ln_2.weight"])
        x = x + F.linear(F.linear(m, sd[f"{b}mlp.w1.weight"]) * F.silu(F.linear(m, sd[f"{b}mlp.w2.weight"])),
                         sd[f"{b}mlp.c_proj.weight"])
    return F.linear(_rms(x, sd["transformer.ln_f.weight"]), sd["lm_head.weight"])
