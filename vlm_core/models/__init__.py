"""Vision encoders, projectors and the composed VLM.

Importing this package registers ``vlm`` and ``qwen_vl_vit`` with the transformers Auto classes,
so saved checkpoints load with ``AutoModelForImageTextToText.from_pretrained(dir)``.
"""

from vlm_core.models.builder import build_vlm
from vlm_core.models.checkpoint import load_checkpoint, save_checkpoint
from vlm_core.models.modeling_vlm import VLMConfig, VLMForConditionalGeneration
from vlm_core.models.processor import VLMProcessor
from vlm_core.models.projectors import PROJECTORS, build_projector
from vlm_core.models.qwen_vl_vit import (
    QwenVLViTConfig,
    QwenVLViTModel,
    split_qwen_vl_visual_state_dict,
)
from vlm_core.models.tokenizer import IMAGE_TOKEN, train_bpe_tokenizer
from vlm_core.models.vision import VISION_ENCODERS, VisionTower, build_vision_tower

__all__ = [
    "IMAGE_TOKEN",
    "PROJECTORS",
    "VISION_ENCODERS",
    "QwenVLViTConfig",
    "QwenVLViTModel",
    "VLMConfig",
    "VLMForConditionalGeneration",
    "VLMProcessor",
    "VisionTower",
    "build_projector",
    "build_vision_tower",
    "build_vlm",
    "load_checkpoint",
    "save_checkpoint",
    "split_qwen_vl_visual_state_dict",
    "train_bpe_tokenizer",
]
