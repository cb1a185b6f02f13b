"""The composed vision-language model: vision tower -> projector -> any causal LLM.

The LLM is whatever ``AutoModelForCausalLM`` builds from ``text_config`` (Llama, Qwen2, ...):
we never copy an LLM's forward. Image features replace the embeddings of the image-token
positions (the template expands each ``<image>`` to ``num_image_tokens`` ids), then the LLM runs
on ``inputs_embeds`` with everything else (attention mask, position ids, cache) passed through
untouched, which is what makes padding-free packing and generation work unchanged.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    GenerationMixin,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlm_core.config import ProjectorConfig
from vlm_core.data.templates import IGNORE_INDEX
from vlm_core.models.grid import sincos_2d
from vlm_core.models.loss import mean_loss, next_token_targets, target_losses
from vlm_core.models.projectors import (
    AttentionPool,
    CrossAttentionResampler,
    build_projector,
    projector_tokens,
)
from vlm_core.models.vision import VisionTower, drop_unused_layers, vision_tower_from_config


def _owned_sub_config(value: PretrainedConfig | dict | None, default: type[PretrainedConfig]) -> PretrainedConfig:
    """A sub-config this config owns: never the config object of a live model.

    ``PretrainedConfig.__init__`` pushes its own attention implementation (None unless asked)
    into every sub-config. Given a loaded LLM's config itself, that would switch the live LLM to
    no implementation at all, and it then builds no causal mask (docs/ARCHITECTURE.md, Models).
    """
    if value is None:
        return default()
    if isinstance(value, dict):
        return AutoConfig.for_model(**value)
    return copy.deepcopy(value)


class VLMConfig(PretrainedConfig):
    model_type = "vlm"
    sub_configs: ClassVar[dict] = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        vision_encoder: str = "clip",
        feature_layer: int = -2,
        feature_select: str = "patch",
        projector_type: str = "mlp2x_gelu",
        projector_num_queries: int = 256,
        projector_num_heads: int | None = None,
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
        **kwargs,
    ) -> None:
        # Encoder layers after the feature layer are never built (see drop_unused_layers).
        vision_config = _owned_sub_config(vision_config, CLIPVisionConfig)
        self.vision_config, self.feature_layer = drop_unused_layers(vision_config, feature_layer)
        self.text_config = _owned_sub_config(text_config, LlamaConfig)
        self.vision_encoder = vision_encoder
        self.feature_select = feature_select
        self.projector_type = projector_type
        self.projector_num_queries = projector_num_queries
        self.projector_num_heads = projector_num_heads
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        # The LLM ties (or not) its own embeddings; the wrapper must not add a tie of its own.
        kwargs.setdefault("tie_word_embeddings", False)
        # Unless one implementation is asked for the whole model, each part keeps its own.
        kwargs.setdefault(
            "attn_implementation",
            {key: getattr(self, key)._attn_implementation for key in self.sub_configs},
        )
        super().__init__(**kwargs)

    @property
    def projector(self) -> ProjectorConfig:
        return ProjectorConfig(
            type=self.projector_type, num_queries=self.projector_num_queries, num_heads=self.projector_num_heads
        )


class VLMPreTrainedModel(PreTrainedModel):
    config_class = VLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = []  # the sub-models' own lists are collected by transformers
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        from transformers import initialization as init

        if isinstance(module, CrossAttentionResampler):
            init.trunc_normal_(module.attn_pool.query, std=0.02)
            init.normal_(module.proj, std=module.proj.shape[0] ** -0.5)
        elif isinstance(module, AttentionPool):
            init.copy_(module.pos_embed, sincos_2d(module.pos_embed.shape[1], *module.grid))


class VLMForConditionalGeneration(VLMPreTrainedModel, GenerationMixin):
    def __init__(
        self,
        config: VLMConfig,
        *,
        vision_tower: VisionTower | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        """Builds every part from ``config``; pass pretrained parts in to use them instead."""
        super().__init__(config)
        self.vision_tower = vision_tower or vision_tower_from_config(
            config.vision_encoder, config.vision_config, config.feature_layer, config.feature_select
        )
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        # One config per part: the VLM's sub-configs are the ones its parts actually run with.
        config.vision_config = self.vision_tower.model.config
        config.text_config = self.language_model.config
        llm_hidden = config.text_config.hidden_size
        num_patches = self.vision_tower.num_patches
        self.projector = build_projector(config.projector, self.vision_tower.hidden_size, llm_hidden, num_patches)
        tokens = projector_tokens(config.projector, num_patches)
        if config.num_image_tokens is None:
            config.num_image_tokens = tokens
        elif config.num_image_tokens != tokens:
            raise ValueError(
                f"config.num_image_tokens is {config.num_image_tokens} but projector {config.projector_type!r} "
                f"emits {tokens} tokens per image"
            )
        self.post_init()

    # -- embeddings live in the LLM

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- images

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` -> ``(n, num_image_tokens, llm_hidden)``."""
        return self.projector(self.vision_tower(pixel_values))

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Write each image's tokens over its image-token positions, in order of appearance."""
        is_image = input_ids == self.config.image_token_id
        found = int(is_image.sum())
        expected = pixel_values.shape[0] * self.config.num_image_tokens
        if found != expected:
            raise ValueError(
                f"the input holds {found} image tokens (id {self.config.image_token_id}) but "
                f"{pixel_values.shape[0]} image(s) x {self.config.num_image_tokens} tokens per image = {expected}"
            )
        features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]))

    def _touch_vision_parts(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Run the vision parts on a blank image and add 0 x their output.

        A text-only batch on one rank would otherwise skip parameters that other ranks use:
        ZeRO-3 would wait forever for their gather and DDP would miss their gradients.
        """
        size = self.vision_tower.image_size
        blank = inputs_embeds.new_zeros(1, 3, size, size)
        return inputs_embeds + 0.0 * self.get_image_features(blank).sum().to(inputs_embeds.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache=None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """transformers' causal-LM forward with ``pixel_values`` merged in.

        With ``labels``, logits are computed only for the positions that predict a scored token
        (see ``vlm_core.models.loss``): ``logits`` is then ``(num_targets, vocab)``, in the order
        of ``next_token_targets(labels)``, and ``loss`` their mean cross-entropy. Image tokens are
        never targets. Call without labels for every position's logits.
        """
        cache = cache if cache is not None else past_key_values
        if pixel_values is not None and pixel_values.shape[0] == 0:
            pixel_values = None  # a text-only batch from the collator
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, pixel_values)
            elif cache is None or cache.get_seq_length() == 0:  # decoding may emit the id: not an error
                found = int((input_ids == self.config.image_token_id).sum())
                if found:
                    raise ValueError(
                        f"the input holds {found} image tokens (id {self.config.image_token_id}) but no pixel_values"
                    )
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids to find the image tokens, not inputs_embeds")
        if pixel_values is None and self.training:
            inputs_embeds = self._touch_vision_parts(inputs_embeds)
        if use_cache is None and cache is None and (self.training or (attention_mask is None and position_ids is not None)):
            # A fresh cache is useless here, and its presence stops transformers' mask builder from
            # detecting packed sequences (position_ids restarting at 0) when attention_mask is None.
            use_cache = False
        targets = None
        if labels is not None:
            if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
                raise ValueError("with labels, the scored positions choose the logits: leave logits_to_keep unset")
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, IGNORE_INDEX)
            logits_to_keep, targets = next_token_targets(labels)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if targets is not None:
            outputs.loss = mean_loss(target_losses(outputs.logits, targets), num_items_in_batch)
        return outputs


def register_auto_classes() -> None:
    AutoConfig.register(VLMConfig.model_type, VLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VLMConfig, VLMForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(VLMConfig, VLMForConditionalGeneration, exist_ok=True)


register_auto_classes()
