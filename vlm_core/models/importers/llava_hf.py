"""`llava-hf`: folders of transformers' ``LlavaForConditionalGeneration`` (e.g. llava-hf/llava-1.5-7b-hf).

transformers reads the folder itself (every key layout it has published), so this import only
splits the loaded model into the parts a run config names: the vision tower (a transformers
vision model, saved with the folder's image processor), the language model with ``lm_head`` (a
causal LM, saved with the folder's tokenizer, which already has ``<image>``) and the projector's
two linear layers. ``vision_feature_layer`` and ``vision_feature_select_strategy`` become the
tower's ``feature_layer`` / ``feature_select``.
"""

from __future__ import annotations

import logging
import os

import torch

from vlm_core.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlm_core.models.importers.base import (
    IMPORTERS,
    ImportedParts,
    Importer,
    ImportOptions,
    UnsupportedCheckpoint,
)

log = logging.getLogger("vlm.import")

# transformers vision model types -> our encoder families (their prefix-token counts are known)
ENCODERS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def _check_supported(config) -> str:
    vision_type = config.vision_config.model_type
    if vision_type not in ENCODERS:
        raise UnsupportedCheckpoint(f"vision tower {vision_type!r} is not supported (known: {', '.join(ENCODERS)})")
    if not isinstance(config.vision_feature_layer, int):
        raise UnsupportedCheckpoint(
            f"vision_feature_layer {config.vision_feature_layer!r}: features concatenated from several layers are not supported"
        )
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise UnsupportedCheckpoint("the projector is not LLaVA's mlp2x_gelu (GELU, with biases)")
    return ENCODERS[vision_type]


def _feature_select(strategy: str, encoder: str) -> str:
    has_cls = encoder == "clip"
    if strategy == "default":  # transformers drops the first token
        if not has_cls:
            raise UnsupportedCheckpoint(f"vision_feature_select_strategy 'default' drops a patch of a {encoder} tower (it has no CLS)")
        return "patch"
    return "cls_patch" if has_cls else "patch"


def _image_aspect(image_processor, options: ImportOptions) -> str:
    if options.image_aspect:
        return options.image_aspect
    do_pad = getattr(image_processor, "do_pad", None)
    if do_pad is None:
        log.info("the image processor does not say whether it pads: padding to square as LLaVA-1.5 was trained")
        return "pad"
    return "pad" if do_pad else "square"


def read_llava_hf(src: str, work: str, options: ImportOptions) -> ImportedParts:
    from transformers import (
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    config = LlavaConfig.from_pretrained(src)
    if config.model_type != "llava":
        raise UnsupportedCheckpoint(f"{src} has model_type {config.model_type!r}, not transformers' 'llava'")
    encoder = _check_supported(config)
    tokenizer = AutoTokenizer.from_pretrained(src)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_token_id != config.image_token_index:
        raise UnsupportedCheckpoint(f"the tokenizer's <image> is id {image_token_id}, the config's image_token_index {config.image_token_index}")

    llava = LlavaForConditionalGeneration.from_pretrained(src)
    vision_dir, llm_dir = os.path.join(work, "vision"), os.path.join(work, "llm")
    llava.model.vision_tower.save_pretrained(vision_dir)
    image_processor = AutoImageProcessor.from_pretrained(src)
    image_processor.save_pretrained(vision_dir)
    # The causal LM around Llava's own language model and head: built on meta, then given the loaded modules.
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config.text_config)
    llm.model, llm.lm_head = llava.model.language_model, llava.lm_head
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    projector = llava.model.multi_modal_projector
    projector_state = {
        "0.weight": projector.linear_1.weight, "0.bias": projector.linear_1.bias,
        "2.weight": projector.linear_2.weight, "2.bias": projector.linear_2.bias,
    }
    model = ModelConfig(
        vision=VisionConfig(
            encoder=encoder, name_or_path=vision_dir, feature_layer=config.vision_feature_layer,
            feature_select=_feature_select(config.vision_feature_select_strategy, encoder),
        ),
        projector=ProjectorConfig(type="mlp2x_gelu"),
        llm=LLMConfig(name_or_path=llm_dir),
    )
    return ImportedParts(
        model, {k: v.detach().clone() for k, v in projector_state.items()},
        template=options.template or "vicuna_v1", image_aspect=_image_aspect(image_processor, options),
    )


IMPORTERS.add(
    "llava-hf",
    Importer(read_llava_hf, model_types=(), options=frozenset({"template", "image_aspect"})),
)
