"""`build_vlm`: a model config -> (model, processor), tiny and random or from pretrained parts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from vlm_core.config import ModelConfig
from vlm_core.models.foreign import check_loadable
from vlm_core.models.modeling_vlm import VLMConfig, VLMForConditionalGeneration
from vlm_core.models.processor import VLMProcessor
from vlm_core.models.tokenizer import IMAGE_TOKEN, PAD_TOKEN, train_bpe_tokenizer
from vlm_core.models.vision import (
    VisionTower,
    build_vision_tower,
    feature_layer,
    pretrained_image_processor,
    redraw_position_table,
    vision_model_config,
)

# The tiny LLM (docs/ARCHITECTURE.md): Llama-style, width 128, 2 layers, 4 heads.
TINY_LLM: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def build_tokenizer(
    model_cfg: ModelConfig, tokenizer_texts: Iterable[str], special_tokens: Sequence[str]
) -> PreTrainedTokenizerBase:
    """The named tokenizer (LLM's by default) with the tokens we need added, or a BPE trained here."""
    path = model_cfg.tokenizer.name_or_path or model_cfg.llm.name_or_path
    if path is None:
        return train_bpe_tokenizer(tokenizer_texts, model_cfg.tokenizer.train_vocab_size, special_tokens)
    check_loadable(path, "model.tokenizer.name_or_path" if model_cfg.tokenizer.name_or_path else "model.llm.name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(path)
    missing = [t for t in (IMAGE_TOKEN, *special_tokens) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def _text_config(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    overrides = dict(model_cfg.llm.config)
    preset = {} if "model_type" in overrides else TINY_LLM
    config = AutoConfig.for_model(
        **{
            **preset,
            **overrides,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    )
    if model_cfg.llm.attn_implementation:
        config._attn_implementation = model_cfg.llm.attn_implementation
    return config


def _pretrained_llm(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase):
    check_loadable(model_cfg.llm.name_or_path, "model.llm.name_or_path")
    kwargs: dict[str, Any] = dict(model_cfg.llm.config)
    if model_cfg.llm.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.llm.attn_implementation
    llm = AutoModelForCausalLM.from_pretrained(model_cfg.llm.name_or_path, **kwargs)
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    llm.config.pad_token_id = tokenizer.pad_token_id
    return llm


def _construct(config: VLMConfig, **parts: Any) -> VLMForConditionalGeneration:
    """The model with the same random weights under any ZeRO stage, for one seed.

    Under ZeRO-3 transformers builds with torch's init functions disabled, then initializes each
    part by its own ``_init_weights``. Without ZeRO-3 the layers' constructor-time init would draw
    first and shift every later draw, so the same is done here: build empty, then initialize.
    """
    from transformers import initialization
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return VLMForConditionalGeneration._from_config(config, **parts)
    with initialization.no_init_weights():
        model = VLMForConditionalGeneration._from_config(config, **parts)
    with torch.no_grad(), initialization.guard_torch_init_functions():
        _initialize(model, model._initialize_weights)
    model.tie_weights()
    return model


def _initialize(module: torch.nn.Module, init_fn: Any) -> None:
    # transformers' own dispatch as its ZeRO-3 path runs it (children first, each sub-model by its
    # own init). Its non-ZeRO path treats a model defined outside transformers as remote code and
    # skips container modules, so a random CLIP tower would miss CLIP's attention and MLP init.
    for child in module.children():
        _initialize(child, child._initialize_weights if isinstance(child, PreTrainedModel) else init_fn)
    init_fn(module, False)


def build_vlm(
    model_cfg: ModelConfig,
    *,
    template: str,
    image_aspect: str,
    tokenizer_texts: Iterable[str] = (),
    special_tokens: Sequence[str] = (),
) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """Build the model and its processor; deterministic given ``model_cfg.seed``.

    Random parts are built inside ``from_config`` (so ZeRO-3's ``HfDeepSpeedConfig`` partitions
    them at construction); pretrained parts come through ``from_pretrained`` and are passed in.
    """
    torch.manual_seed(model_cfg.seed)
    tokenizer = build_tokenizer(model_cfg, tokenizer_texts, special_tokens)
    vision = model_cfg.vision

    pretrained_tower: VisionTower | None = build_vision_tower(vision) if vision.name_or_path else None
    vision_config = pretrained_tower.model.config if pretrained_tower else vision_model_config(vision)
    layer = pretrained_tower.feature_layer if pretrained_tower else feature_layer(vision)
    language_model = _pretrained_llm(model_cfg, tokenizer) if model_cfg.llm.name_or_path else None
    text_config = language_model.config if language_model is not None else _text_config(model_cfg, tokenizer)

    config = VLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        vision_encoder=vision.encoder,
        feature_layer=layer,
        feature_select=vision.feature_select,
        projector_type=model_cfg.projector.type,
        projector_num_queries=model_cfg.projector.num_queries,
        projector_num_heads=model_cfg.projector.num_heads,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    # Reseeded so the random parts do not depend on what loading the pretrained ones drew (under
    # ZeRO-3, resizing the embeddings draws differently).
    torch.manual_seed(model_cfg.seed)
    # num_image_tokens is filled in by the model from its projector
    model = _construct(config, vision_tower=pretrained_tower, language_model=language_model)
    if vision.position_init_std is not None:
        redraw_position_table(model.vision_tower, vision.position_init_std, seed=model_cfg.seed)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    processor = VLMProcessor(
        tokenizer,
        pretrained_image_processor(vision, model.vision_tower),
        image_size=model.vision_tower.image_size,
        num_image_tokens=config.num_image_tokens,
        template=template,
        image_aspect=image_aspect,
    )
    return model, processor
