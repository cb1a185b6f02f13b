"""Vision encoders: transformers vision models behind one small `VisionTower` interface.

A family (registry entry) knows three things: its model class, a tiny preset config (random
weights, used when ``name_or_path`` is null) and the image processor that matches it. The tower
adds what LLaVA-style models need on top: which hidden state to take (``feature_layer``) and
whether to keep the prefix tokens (``feature_select``: ``patch`` drops CLS and registers,
``cls_patch`` keeps them).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    ChineseCLIPVisionConfig,
    ChineseCLIPVisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import is_torchvision_available

if is_torchvision_available():
    from transformers import (
        BitImageProcessor,
        ChineseCLIPImageProcessor,
        CLIPImageProcessor,
        SiglipImageProcessor,
    )
else:  # the PIL implementations by name: transformers warns at every import of the fallback otherwise
    from transformers import BitImageProcessorPil as BitImageProcessor
    from transformers import ChineseCLIPImageProcessorPil as ChineseCLIPImageProcessor
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from vlm_core.config import VisionConfig
from vlm_core.models.qwen_vl_vit import QwenVLViTConfig, QwenVLViTModel
from vlm_core.registry import Registry

# The tiny preset shared by every family (docs/ARCHITECTURE.md): 32 px, patch 8, width 64, 2 layers.
_TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}

# What a PreTrainedModel's post_init gathers from its direct children; the tower forwards its
# model's so that the VLM sees them (device maps, fp32 modules, load-time ignores).
_GATHERED_ATTRS = (
    "_no_split_modules",
    "_keep_in_fp32_modules",
    "_keep_in_fp32_modules_strict",
    "_skip_keys_device_placement",
    "_keys_to_ignore_on_load_unexpected",
    "_keys_to_ignore_on_load_missing",
)

# Tokens before the patches in each model type's hidden states (CLS, registers).
_PREFIX_TOKENS: dict[str, Callable[[PretrainedConfig], int]] = {
    "clip_vision_model": lambda c: 1,
    "chinese_clip_vision_model": lambda c: 1,
    "siglip_vision_model": lambda c: 0,
    "dinov2": lambda c: 1,
    "dinov2_with_registers": lambda c: 1 + c.num_register_tokens,
    "vit": lambda c: 1,
    "qwen_vl_vit": lambda c: 0,
}


def _square(size: int) -> dict[str, int]:
    return {"height": size, "width": size}


@dataclass(frozen=True)
class EncoderFamily:
    model_class: Any  # a PreTrainedModel subclass, or AutoModel for `auto`
    config_class: type[PretrainedConfig] | None  # None: the config names its own model_type
    image_processor: Callable[[int], BaseImageProcessor]
    tiny: dict[str, Any] = field(default_factory=dict)
    # The hidden state that feeds the projector when the run config does not say: LLaVA takes the
    # second-to-last layer of CLIP-like towers; Qwen-VL feeds its ViT's last block (it has no final norm).
    feature_layer: int = -2
    # The position-embedding table's parameter name in the transformers model (what
    # `model.vision.position_init_std` redraws); None where the family's layout is unknown (auto).
    position_table: str | None = None


VISION_ENCODERS: Registry[EncoderFamily] = Registry("vision encoder")

VISION_ENCODERS.add(
    "clip",
    EncoderFamily(
        CLIPVisionModel,
        CLIPVisionConfig,
        lambda s: CLIPImageProcessor(size={"shortest_edge": s}, crop_size=_square(s)),
        {**_TINY, "intermediate_size": 128},
        position_table="embeddings.position_embedding.weight",
    ),
)
VISION_ENCODERS.add(
    "siglip",
    EncoderFamily(
        SiglipVisionModel,
        SiglipVisionConfig,
        lambda s: SiglipImageProcessor(size=_square(s)),
        {**_TINY, "intermediate_size": 128},
        position_table="embeddings.position_embedding.weight",
    ),
)
VISION_ENCODERS.add(
    "chinese_clip",
    EncoderFamily(
        ChineseCLIPVisionModel,
        ChineseCLIPVisionConfig,
        lambda s: ChineseCLIPImageProcessor(size={"shortest_edge": s}, crop_size=_square(s)),
        {**_TINY, "intermediate_size": 128},
        position_table="embeddings.position_embedding.weight",
    ),
)
VISION_ENCODERS.add(
    "dinov2",
    EncoderFamily(
        Dinov2Model,
        Dinov2Config,
        lambda s: BitImageProcessor(
            size={"shortest_edge": s},
            crop_size=_square(s),
            image_mean=IMAGENET_DEFAULT_MEAN,
            image_std=IMAGENET_DEFAULT_STD,
        ),
        {**_TINY, "mlp_ratio": 2},
        position_table="embeddings.position_embeddings",
    ),
)
VISION_ENCODERS.add(
    "qwen_vl_vit",
    EncoderFamily(
        QwenVLViTModel,
        QwenVLViTConfig,
        # Qwen-VL resizes straight to the square input (bicubic), no crop, OpenAI CLIP statistics.
        lambda s: CLIPImageProcessor(size=_square(s), do_center_crop=False, resample=PILImageResampling.BICUBIC),
        {**_TINY, "intermediate_size": 128, "num_positions": 16},
        feature_layer=-1,
        position_table="positional_embedding",
    ),
)
VISION_ENCODERS.add(
    "auto",
    EncoderFamily(
        AutoModel,
        None,
        lambda s: CLIPImageProcessor(size=_square(s), do_center_crop=False),
    ),
)


class VisionTower(nn.Module):
    """``forward(pixel_values (B,3,H,W)) -> (B, N, D)`` features after layer and token selection."""

    def __init__(self, model: PreTrainedModel, encoder: str, feature_layer: int, feature_select: str) -> None:
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.feature_layer = feature_layer
        self.feature_select = feature_select
        for attr in _GATHERED_ATTRS:
            setattr(self, attr, getattr(model, attr, None))
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        self.all_tied_weights_keys = {f"model.{k}": f"model.{v}" for k, v in tied.items()}
        config = model.config
        model_type = config.model_type
        if model_type not in _PREFIX_TOKENS:
            raise ValueError(
                f"vision model type {model_type!r} is not supported; known: {', '.join(sorted(_PREFIX_TOKENS))}"
            )
        self.num_prefix_tokens = _PREFIX_TOKENS[model_type](config)
        if feature_select == "cls_patch" and self.num_prefix_tokens == 0:
            raise ValueError(f"feature_select 'cls_patch' needs a CLS token, but {model_type} has none; use 'patch'")
        num_states = config.num_hidden_layers + 1  # embeddings + one per layer
        if not -num_states <= feature_layer < num_states:
            raise ValueError(
                f"feature_layer {feature_layer} is out of range for {num_states} hidden states "
                f"(allowed {-num_states}..{num_states - 1})"
            )

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def num_patches(self) -> int:
        grid = self.image_size // self.model.config.patch_size
        return grid * grid + (self.num_prefix_tokens if self.feature_select == "cls_patch" else 0)

    def image_processor(self) -> BaseImageProcessor:
        return VISION_ENCODERS.get(self.encoder).image_processor(self.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        if self.feature_select == "patch":
            features = features[:, self.num_prefix_tokens :]
        return features


def feature_layer(cfg: VisionConfig) -> int:
    """The configured feature layer, or the encoder family's default."""
    return VISION_ENCODERS.get(cfg.encoder).feature_layer if cfg.feature_layer is None else cfg.feature_layer


def vision_model_config(cfg: VisionConfig) -> PretrainedConfig:
    """The encoder's transformers config: the tiny preset, or the pretrained one, plus overrides."""
    from vlm_core.models.foreign import check_loadable

    family = VISION_ENCODERS.get(cfg.encoder)
    overrides = dict(cfg.config)
    if cfg.image_size is not None:
        overrides["image_size"] = cfg.image_size
    if cfg.name_or_path is not None:
        check_loadable(cfg.name_or_path, "model.vision.name_or_path")
        config = AutoConfig.from_pretrained(cfg.name_or_path)
        config = getattr(config, "vision_config", config)  # a full CLIP / SigLIP checkpoint
        config.update(overrides)
        return config
    if family.config_class is None:
        if "model_type" not in overrides:
            raise ValueError(f"encoder {cfg.encoder!r} without name_or_path needs config.model_type")
        return AutoConfig.for_model(**overrides)
    return family.config_class(**{**family.tiny, **overrides})


def drop_unused_layers(config: PretrainedConfig, feature_layer: int) -> tuple[PretrainedConfig, int]:
    """Keep only the encoder layers up to the feature layer.

    LLaVA takes layer -2 and still computes (and back-propagates through the graph of) the last
    layer, only to throw it away; building the encoder without it gives the same features for
    1/L less vision compute. Returns the trimmed config and the same layer counted from the end.
    """
    layers = config.num_hidden_layers
    used = feature_layer if feature_layer >= 0 else layers + 1 + feature_layer
    if not 0 < used < layers:  # embeddings only, every layer, or out of range (the tower says so)
        return config, feature_layer
    trimmed = copy.deepcopy(config)
    trimmed.num_hidden_layers = used
    return trimmed, -1


def vision_tower_from_config(encoder: str, config: PretrainedConfig, feature_layer: int, feature_select: str) -> VisionTower:
    """A randomly initialised tower (weights may be loaded afterwards, e.g. from a VLM checkpoint)."""
    VISION_ENCODERS.get(encoder)  # fail early on a typo
    return VisionTower(AutoModel.from_config(config), encoder, feature_layer, feature_select)


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    """The tower a run config names: pretrained weights by path, else the tiny preset, random."""
    config, layer = drop_unused_layers(vision_model_config(cfg), feature_layer(cfg))
    if cfg.name_or_path is None:
        return vision_tower_from_config(cfg.encoder, config, layer, cfg.feature_select)
    model_class = VISION_ENCODERS.get(cfg.encoder).model_class
    model = model_class.from_pretrained(cfg.name_or_path, config=config)
    return VisionTower(model, cfg.encoder, layer, cfg.feature_select)


def redraw_position_table(tower: VisionTower, std: float, seed: int) -> None:
    """Draw a random tower's position embeddings anew, normal with ``std``, the same on every rank
    and under any ZeRO stage (its own generator; gathered under ZeRO-3).

    Why (docs/ARCHITECTURE.md, tiny presets): CLIP-style init draws the table and the patch
    projection with one std, so a patch's embedding (a sum over 3 x 16 x 16 pixels) starts about 50
    times larger than its position; a tiny tower then learns where things are last.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    name = VISION_ENCODERS.get(tower.encoder).position_table
    if name is None:
        raise ValueError(
            f"encoder {tower.encoder!r} has no known position-embedding table: remove model.vision.position_init_std"
        )
    table = tower.model.get_parameter(name)
    gathered = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([table], modifier_rank=0)
    generator = torch.Generator().manual_seed(seed)
    with gathered, torch.no_grad():
        table.copy_(torch.randn(tuple(table.shape), generator=generator) * std)


def pretrained_image_processor(cfg: VisionConfig, tower: VisionTower) -> BaseImageProcessor:
    """The checkpoint's own image processor when it ships one, else the family's at the tower's size."""
    if cfg.name_or_path is not None and cfg.image_size is None:
        try:
            return AutoImageProcessor.from_pretrained(cfg.name_or_path)
        except OSError:
            pass
    return tower.image_processor()
