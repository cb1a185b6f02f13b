"""`qwen-vl`: Qwen-VL / Qwen-VL-Chat folders (the layout CodeFuse-VLM-14B is published in), and
Qwen v1 LLMs alone (Qwen-7B, Qwen-14B).

Such a folder holds one ``QWenLMHeadModel`` (``config.json`` with ``model_type: qwen`` and, for
Qwen-VL, a ``visual`` section), its weights and ``qwen.tiktoken``:

- ``transformer.visual.*`` is the ViT (-> a ``qwen_vl_vit`` tower folder) followed by the
  resampler ``attn_pool`` / ``ln_post`` / ``proj`` (-> the ``cross_attn`` projector's weights);
- the rest is the Qwen v1 LLM (-> a transformers Qwen2 folder, `qwen_llm`), and ``qwen.tiktoken``
  becomes its fast tokenizer (`qwen_tokenizer`).

Without a ``visual`` section (a Qwen v1 LLM alone) the import writes the Qwen2 folder only, for a
run config's ``model.llm.name_or_path``.

Qwen-VL writes ``<img>`` and ``</img>`` around its 256 image positions; the imported model takes
the image tokens wherever the run's template puts ``<image>`` (the template decides the text
around it).
"""

from __future__ import annotations

import json
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
from vlm_core.models.importers.qwen_llm import write_qwen2
from vlm_core.models.importers.qwen_tokenizer import VOCAB_FILE, qwen_fast_tokenizer
from vlm_core.models.importers.weights import read_tensors
from vlm_core.models.qwen_vl_vit import (
    QWEN_VL_VISUAL_PREFIX,
    QwenVLViTConfig,
    QwenVLViTModel,
    split_qwen_vl_visual_state_dict,
)

log = logging.getLogger("vlm.import")


def _read_config(src: str) -> dict:
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{src} holds no config.json: not a Qwen-VL / Qwen checkpoint folder")
    with open(path) as f:
        config = json.load(f)
    if config.get("model_type") != "qwen":
        raise UnsupportedCheckpoint(f"{src} has model_type {config.get('model_type')!r}, not Qwen v1's 'qwen'")
    return config


def _write_vision_tower(src: str, visual: dict, folder: str) -> dict[str, torch.Tensor]:
    """Save the ViT as a `QwenVLViTModel` folder; return the resampler's weights."""
    from vlm_core.models.vision import VISION_ENCODERS

    encoder, resampler = split_qwen_vl_visual_state_dict(read_tensors(src, lambda k: k.startswith(QWEN_VL_VISUAL_PREFIX)))
    width = visual["width"]
    config = QwenVLViTConfig(
        image_size=visual["image_size"],
        patch_size=visual["patch_size"],
        hidden_size=width,
        num_hidden_layers=visual["layers"],
        num_attention_heads=visual["heads"],
        intermediate_size=int(width * visual["mlp_ratio"]),  # as Qwen-VL sizes its MLP
        num_positions=encoder["positional_embedding"].shape[0],
    )
    with torch.device("meta"):  # every weight comes from the checkpoint: no random init of a 1.9B ViT
        vit = QwenVLViTModel(config)
    vit.load_state_dict(encoder, strict=True, assign=True)
    vit.save_pretrained(folder)
    VISION_ENCODERS.get("qwen_vl_vit").image_processor(config.image_size).save_pretrained(folder)
    return resampler


def read_qwen_vl(src: str, work: str, options: ImportOptions) -> ImportedParts:
    qwen = _read_config(src)
    visual = qwen.get("visual")
    if options.only == "vision" and visual is None:
        raise UnsupportedCheckpoint(f"{src} is a Qwen v1 LLM without visual weights: there is no vision tower to write")
    llm_dir, vision_dir = os.path.join(work, "llm"), os.path.join(work, "vision")
    if options.only != "vision":
        vocab = os.path.join(src, VOCAB_FILE)
        if not os.path.exists(vocab):
            raise FileNotFoundError(f"{src} holds no {VOCAB_FILE}: the Qwen tokenizer's vocabulary is needed")
        write_qwen2(src, qwen, llm_dir)
        qwen_fast_tokenizer(vocab, visual=visual is not None).save_pretrained(llm_dir)
    model = ModelConfig(llm=LLMConfig(name_or_path=llm_dir))
    if visual is None or options.only == "llm":
        return ImportedParts(model, template="chatml", image_aspect="square", has_vision=False)

    resampler = _write_vision_tower(src, visual, vision_dir)
    width = resampler["proj"].shape[1]
    if width != qwen["hidden_size"]:
        raise UnsupportedCheckpoint(
            f"{src}: the resampler emits {width}-wide tokens but the LLM is {qwen['hidden_size']} wide"
        )
    model = ModelConfig(
        vision=VisionConfig(encoder="qwen_vl_vit", name_or_path=vision_dir),
        # Qwen-VL's resampler: one token per learned query, heads = width // 128 (the projector's default)
        projector=ProjectorConfig(type="cross_attn", num_queries=resampler["attn_pool.query"].shape[0]),
        llm=LLMConfig(name_or_path=llm_dir),
    )
    # Qwen-VL resizes straight to the square input: no padding
    return ImportedParts(model, resampler, template="chatml", image_aspect="square")


IMPORTERS.add(
    "qwen-vl",
    Importer(read_qwen_vl, model_types=("qwen",), options=frozenset({"template", "image_aspect", "only"})),
)
