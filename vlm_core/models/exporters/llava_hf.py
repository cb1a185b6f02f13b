"""`llava-hf`: a checkpoint as transformers' ``LlavaForConditionalGeneration`` folder (vLLM, SGLang and
``transformers.pipeline`` load it without this package).

Llava expresses: a transformers vision tower (CLIP, SigLIP), LLaVA's ``mlp2x_gelu`` projector and
any causal LM. The tower is written as built: without the layers after the feature layer
(`vision.drop_unused_layers`), so ``vision_feature_layer`` counts in the trimmed tower (-1 for
LLaVA's -2). ``vision_feature_select_strategy`` is ``default`` (drop CLS) or ``full`` (keep
every token). The processor is a ``LlavaProcessor``: a ``LlavaImageProcessor`` doing our
pad-to-square (``do_pad``, LLaVA's mean colour) and square resize, the tokenizer, and a chat
template derived from the run's template (`chat_template`), checked to give the run's token ids.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from vlm_core import storage
from vlm_core.models.exporters.chat_template import chat_template_for

# our encoder families Llava's vision towers cover
LLAVA_TOWERS = ("clip", "siglip")
LLAVA_PROJECTOR = "mlp2x_gelu"


class NotExpressible(ValueError):
    """A part of the model has no equivalent in the target format; the message names it."""


def _check_expressible(model: Any) -> None:
    config = model.config
    if config.vision_encoder not in LLAVA_TOWERS:
        raise NotExpressible(
            f"the vision encoder {config.vision_encoder!r} has no equivalent in transformers' Llava "
            f"(it takes {', '.join(LLAVA_TOWERS)} towers); export --format vlm instead"
        )
    if config.projector_type != LLAVA_PROJECTOR:
        raise NotExpressible(
            f"the projector {config.projector_type!r} has no equivalent in transformers' Llava "
            f"(its projector is {LLAVA_PROJECTOR}); export --format vlm instead"
        )
    llm = model.language_model
    if getattr(llm, llm.base_model_prefix, None) is None or llm.get_output_embeddings() is None:
        raise NotExpressible(f"the LLM {type(llm).__name__} is not a decoder with an LM head, as Llava's is")


def _select_strategy(model: Any) -> str:
    tower = model.vision_tower
    if tower.feature_select == "patch" and tower.num_prefix_tokens == 1:
        return "default"  # Llava drops exactly the first token
    if tower.feature_select == "cls_patch" or tower.num_prefix_tokens == 0:
        return "full"
    raise NotExpressible(f"a {tower.num_prefix_tokens}-token prefix (registers) has no Llava selection strategy")


def llava_config(model: Any):
    from transformers import LlavaConfig

    text_config = model.language_model.config
    return LlavaConfig(
        vision_config=model.vision_tower.model.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=model.config.image_token_id,
        vision_feature_layer=model.config.feature_layer,
        vision_feature_select_strategy=_select_strategy(model),
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_seq_length=model.config.num_image_tokens,
        tie_word_embeddings=text_config.tie_word_embeddings,
        pad_token_id=text_config.pad_token_id,
        dtype=model.language_model.dtype,
    )


def llava_model(model: Any):
    """A ``LlavaForConditionalGeneration`` holding ``model``'s own modules (no copy of the weights)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):  # every parameter is replaced by ours below
        llava = LlavaForConditionalGeneration(llava_config(model))
    llm = model.language_model
    llava.model.vision_tower = model.vision_tower.model
    llava.model.multi_modal_projector.linear_1 = model.projector[0]
    llava.model.multi_modal_projector.linear_2 = model.projector[2]
    llava.model.language_model = getattr(llm, llm.base_model_prefix)
    llava.lm_head = llm.get_output_embeddings()
    return llava


def image_processor(processor: Any):
    """Llava's image processor doing what `VLMProcessor.process_images` does: pad (or not), square resize."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import LlavaImageProcessor
    else:
        from transformers import LlavaImageProcessorPil as LlavaImageProcessor
    ours = processor.image_processor
    side = {"height": processor.image_size, "width": processor.image_size}
    return LlavaImageProcessor(
        do_pad=processor.image_aspect == "pad", size=side, crop_size=side, do_center_crop=False,
        resample=3,  # bicubic, as process_images resizes
        image_mean=list(ours.image_mean), image_std=list(ours.image_std), do_convert_rgb=True,
    )


def llava_processor(model: Any, processor: Any):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor(processor),
        tokenizer=processor.tokenizer,
        patch_size=model.vision_tower.model.config.patch_size,
        vision_feature_select_strategy=_select_strategy(model),
        chat_template=chat_template_for(processor),
        image_token=processor.image_token,
        num_additional_image_tokens=model.vision_tower.num_prefix_tokens,
    )


def check_prompt_ids(exported: Any, processor: Any) -> None:
    """The exported processor's chat rendering tokenizes to exactly the run's prompt (as `vlm chat` builds it)."""
    from PIL import Image

    from vlm_core.data.templates import get_template
    from vlm_core.eval.generate import prompt_ids

    question = "What is in the image?"
    image = Image.new("RGB", (processor.image_size, processor.image_size))
    rendered = exported.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True,
    )["input_ids"][0]
    conversation = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"}, {"from": "human", "value": question}]
    chat = exported.apply_chat_template(
        [{"role": "system" if t["from"] == "system" else "user" if t["from"] == "human" else "assistant",
          "content": t["value"]} for t in conversation],
        add_generation_prompt=True, tokenize=True, return_dict=True,
    )["input_ids"][0]
    run = get_template(processor.template).prompt_ids(
        conversation, processor.tokenizer, processor.image_token_id, processor.num_image_tokens)
    if list(rendered) != prompt_ids(processor, question, True) or list(chat) != run:
        raise NotExpressible(
            f"the chat template written for template {processor.template!r} does not tokenize to the run's prompt "
            "with this tokenizer"
        )


def generation_config(model: Any, processor: Any):
    """Greedy decoding that stops where `vlm chat` stops: the template's end-of-reply token."""
    from transformers import GenerationConfig

    from vlm_core.data.templates import get_template

    tokenizer = processor.tokenizer
    stop = get_template(processor.template).stop_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    return GenerationConfig(eos_token_id=stop, pad_token_id=pad, bos_token_id=None, do_sample=False)


def export_llava_hf(model: Any, processor: Any, out_url: str) -> None:
    _check_expressible(model)
    exported_processor = llava_processor(model, processor)
    check_prompt_ids(exported_processor, processor)
    llava = llava_model(model)
    llava.generation_config = generation_config(model, processor)
    if storage.is_local(out_url):
        _save(llava, exported_processor, storage.local_path(out_url))
        return
    with tempfile.TemporaryDirectory(prefix="vlm-export-") as tmp:
        _save(llava, exported_processor, tmp)
        storage.upload_dir(tmp, out_url)


def _save(llava: Any, processor: Any, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    llava.save_pretrained(folder)
    processor.save_pretrained(folder)
