"""`llava`: the original LLaVA-1.5 layout (haotian-liu/LLaVA), whole models and stage-1 projectors.

A whole model is one folder: ``config.json`` of the LLM plus LLaVA's fields (``model_type``
``llava_llama``, ``mm_vision_tower``, ``mm_projector_type``, ``mm_vision_select_layer``,
``mm_vision_select_feature``, ``image_aspect_ratio``), the LLM's weights under their usual names
and the projector's under ``model.mm_projector.{0,2}.*``, and the tokenizer. The vision tower is
not taken from the folder: LLaVA loads it by ``mm_vision_tower`` (an id or a path; override it
with ``--vision-tower``), and so does this import.

Stage 1 (pre-training the projector) saves only ``mm_projector.bin`` (the same ``model.mm_projector``
keys), next to the ``config.json`` with LLaVA's fields: import the file or its folder with
``--llm``, the LLM it was trained with.
"""

from __future__ import annotations

import json
import logging
import os
import re

from vlm_core.config import LLMConfig, ModelConfig, ProjectorConfig, TokenizerConfig, VisionConfig
from vlm_core.models.importers.base import (
    IMPORTERS,
    ImportedParts,
    Importer,
    ImportOptions,
    UnsupportedCheckpoint,
)
from vlm_core.models.importers.weights import (
    check_complete,
    read_tensors,
    weight_files,
    weight_keys,
)

log = logging.getLogger("vlm.import")

PROJECTOR_FILE = "mm_projector.bin"
_PROJECTOR = re.compile(r"(?:^|\.)mm_projector\.")
# LLaVA's language-model classes and the transformers model type each one extends
LLM_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral"}
# LLaVA-1.5's training scripts take the second-to-last CLIP layer (LLaVA's own default is -1)
STAGE1_SELECT_LAYER = -2


def _llava_config(folder: str) -> dict | None:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _projector_state(path: str) -> dict:
    """``model.mm_projector.N.*`` -> ``N.*`` (our projector's names)."""
    state = {}
    for key, value in read_tensors(path, lambda k: _PROJECTOR.search(k) is not None).items():
        state[_PROJECTOR.split(key, maxsplit=1)[-1]] = value
    if not state:
        raise UnsupportedCheckpoint(f"{path} holds no model.mm_projector.* weights")
    return state


def _projector_type(config: dict | None, state: dict) -> str:
    if config and config.get("mm_projector_type"):
        return config["mm_projector_type"]
    linears = {key.split(".")[0] for key in state}
    return "linear" if linears == {"weight", "bias"} else f"mlp{len(linears)}x_gelu"


def _check_supported(config: dict) -> None:
    if config.get("mm_use_im_start_end"):
        raise UnsupportedCheckpoint("mm_use_im_start_end: image start/end tokens are not supported")
    merge = config.get("mm_patch_merge_type", "flat")
    if merge != "flat" or config.get("image_aspect_ratio") == "anyres":
        raise UnsupportedCheckpoint(f"LLaVA-NeXT any-resolution images (mm_patch_merge_type {merge!r}) are not supported")


def _vision(config: dict | None, options: ImportOptions) -> VisionConfig:
    tower = options.vision_tower or (config or {}).get("mm_vision_tower")
    if not tower:
        raise UnsupportedCheckpoint("the checkpoint names no vision tower (mm_vision_tower): give --vision-tower")
    layer = (config or {}).get("mm_vision_select_layer")
    if layer is None:
        log.info("no mm_vision_select_layer: using LLaVA-1.5's %d", STAGE1_SELECT_LAYER)
        layer = STAGE1_SELECT_LAYER
    # LLaVA's towers are CLIP (CLIPVisionTower); its image processor comes with the tower
    return VisionConfig(
        encoder="clip", name_or_path=tower, feature_layer=layer,
        feature_select=(config or {}).get("mm_vision_select_feature", "patch"),
    )


def _image_aspect(config: dict | None, options: ImportOptions) -> str:
    if options.image_aspect:
        return options.image_aspect
    if (config or {}).get("image_aspect_ratio") == "pad":
        return "pad"
    log.warning("image_aspect_ratio is not 'pad': LLaVA then centre-crops; the import stretches (image_aspect square)")
    return "square"


def _write_llm(src: str, config: dict, folder: str) -> None:
    """An LLM folder transformers loads: the config without LLaVA's fields, the source's weight files
    linked (their extra mm_projector keys are ignored when loading), the tokenizer with LLaVA's pad."""
    from transformers import AutoConfig, AutoTokenizer

    llava_type = config.get("model_type")
    if llava_type not in LLM_TYPES:
        raise UnsupportedCheckpoint(f"LLaVA language model {llava_type!r} is not supported (known: {', '.join(LLM_TYPES)})")
    fields = {k: v for k, v in config.items()
              if not k.startswith("mm_") and k not in ("model_type", "architectures", "_name_or_path", "auto_map")}
    os.makedirs(folder, exist_ok=True)
    llm_config = AutoConfig.for_model(LLM_TYPES[llava_type], **fields)
    check_complete(llm_config, weight_keys(src), src)
    llm_config.save_pretrained(folder)
    for file in weight_files(src):
        os.symlink(os.path.abspath(file), os.path.join(folder, os.path.basename(file)))
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.exists(os.path.join(src, name)):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(folder, name))
    _save_tokenizer(AutoTokenizer.from_pretrained(src), folder)


def _save_tokenizer(tokenizer, folder: str) -> None:
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for Vicuna: no new embedding row
    tokenizer.save_pretrained(folder)


def read_llava(src: str, work: str, options: ImportOptions) -> ImportedParts:
    folder = os.path.dirname(src) if os.path.isfile(src) else src
    config = _llava_config(folder)
    stage1 = os.path.isfile(src) or os.path.exists(os.path.join(src, PROJECTOR_FILE))
    if config is not None:
        _check_supported(config)
    projector_state = _projector_state(src if os.path.isfile(src) else os.path.join(src, PROJECTOR_FILE) if stage1 else src)
    template = options.template or "vicuna_v1"  # LLaVA-1.5's conv_vicuna_v1
    if stage1:
        if options.llm is None:
            raise UnsupportedCheckpoint(f"{PROJECTOR_FILE} holds only the projector: give --llm, the LLM it was trained with")
        from transformers import AutoTokenizer

        tokenizer_dir = os.path.join(work, "tokenizer")
        _save_tokenizer(AutoTokenizer.from_pretrained(options.llm), tokenizer_dir)
        llm = LLMConfig(name_or_path=options.llm)
    else:
        if config is None:
            raise FileNotFoundError(f"{src} holds no config.json: not a LLaVA checkpoint folder")
        tokenizer_dir = llm_dir = os.path.join(work, "llm")
        _write_llm(src, config, llm_dir)
        llm = LLMConfig(name_or_path=llm_dir)
    model = ModelConfig(
        vision=_vision(config, options),
        projector=ProjectorConfig(type=_projector_type(config, projector_state)),
        llm=llm,
        tokenizer=TokenizerConfig(name_or_path=tokenizer_dir),
    )
    return ImportedParts(model, projector_state, template=template, image_aspect=_image_aspect(config, options))


IMPORTERS.add(
    "llava",
    Importer(read_llava, model_types=tuple(LLM_TYPES), options=frozenset({"vision_tower", "llm", "template", "image_aspect"})),
)
