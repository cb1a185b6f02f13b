"""The Qwen-VL vision transformer, as a transformers model that saves and loads by itself.

Qwen-VL (and CodeFuse-VLM-14B, which reuses it) ships its ViT inside the LLM checkpoint under
``transformer.visual.*``: a CLIP-like ViT (conv patch embedding without bias, a learned absolute
position table bicubic-interpolated to the patch grid, ``ln_pre``, pre-norm residual blocks with
a fused ``in_proj``) followed by a cross-attention resampler (``attn_pool``, ``ln_post``,
``proj``). The ViT half lives here; the resampler half is our ``cross_attn`` projector
(`vlm_core.models.projectors.CrossAttentionResampler`), whose parameter names match, so
`split_qwen_vl_visual_state_dict` can route one checkpoint into both by name.

One layout detail matters for loading real weights: Qwen-VL's fused ``in_proj`` output is laid
out per head as ``[q_h | k_h | v_h]`` (it is viewed as ``(heads, 3 * head_dim)`` before the
split), not as ``[Q | K | V]`` like ``nn.MultiheadAttention``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from vlm_core.models.grid import resize_grid_table, square_side

QWEN_VL_VISUAL_PREFIX = "transformer.visual."
# What belongs to the resampler (our `cross_attn` projector); the rest of the prefix is the ViT.
_RESAMPLER_MODULES = ("attn_pool.", "ln_post.")
_RESAMPLER_PARAMS = ("proj",)


class QwenVLViTConfig(PretrainedConfig):
    """Defaults are Qwen-VL's released ViT (ViT-bigG/14 at 448 px, 256 learned positions)."""

    model_type = "qwen_vl_vit"

    def __init__(
        self,
        image_size: int = 448,
        patch_size: int = 14,
        hidden_size: int = 1664,
        num_hidden_layers: int = 48,
        num_attention_heads: int = 16,
        intermediate_size: int = 8192,
        num_positions: int = 256,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_positions = num_positions
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range


class QwenVLAttention(nn.Module):
    def __init__(self, config: QwenVLViTConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by num_attention_heads {config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.in_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        # per-head [q | k | v] layout (see the module docstring)
        qkv = self.in_proj(x).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class QwenVLResidualBlock(GradientCheckpointingLayer):
    def __init__(self, config: QwenVLViTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = QwenVLAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(config.hidden_size, config.intermediate_size))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(config.intermediate_size, config.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class QwenVLTransformer(nn.Module):
    def __init__(self, config: QwenVLViTConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(QwenVLResidualBlock(config) for _ in range(config.num_hidden_layers))


class QwenVLViTPreTrainedModel(PreTrainedModel):
    config_class = QwenVLViTConfig
    base_model_prefix = ""
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["QwenVLResidualBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, QwenVLViTModel):
            from transformers import initialization as init

            init.normal_(module.positional_embedding, std=module.config.hidden_size**-0.5)


class QwenVLViTModel(QwenVLViTPreTrainedModel):
    """``forward(pixel_values)`` -> hidden states: index 0 after ``ln_pre``, then one per block.

    There is no CLS token and no final norm: Qwen-VL feeds the last block's output to its resampler.
    """

    def __init__(self, config: QwenVLViTConfig) -> None:
        super().__init__(config)
        self.conv1 = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.empty(config.num_positions, config.hidden_size))
        self.ln_pre = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.transformer = QwenVLTransformer(config)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutput:
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, D)
        side = square_side(self.positional_embedding.shape[0], "positional_embedding")
        grid = square_side(x.shape[1], "the patch grid")
        x = x + resize_grid_table(self.positional_embedding, (side, side), (grid, grid))
        x = self.ln_pre(x)
        hidden_states = [x]
        for block in self.transformer.resblocks:
            x = block(x)
            hidden_states.append(x)
        return BaseModelOutput(
            last_hidden_state=x, hidden_states=tuple(hidden_states) if output_hidden_states else None
        )


def split_qwen_vl_visual_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split Qwen-VL's ``transformer.visual.*`` weights into (encoder, resampler) state dicts.

    Encoder keys load into `QwenVLViTModel`; resampler keys (``attn_pool.*``, ``ln_post.*``,
    ``proj``) load into the ``cross_attn`` projector. Keys outside the prefix (the LLM) are ignored.
    """
    encoder: dict[str, torch.Tensor] = {}
    resampler: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(QWEN_VL_VISUAL_PREFIX):
            continue
        name = key[len(QWEN_VL_VISUAL_PREFIX):]
        is_resampler = name in _RESAMPLER_PARAMS or name.startswith(_RESAMPLER_MODULES)
        (resampler if is_resampler else encoder)[name] = value
    if not encoder:
        raise ValueError(f"no Qwen-VL visual weights found (expected keys under {QWEN_VL_VISUAL_PREFIX!r})")
    return encoder, resampler


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(QwenVLViTConfig.model_type, QwenVLViTConfig, exist_ok=True)
    AutoModel.register(QwenVLViTConfig, QwenVLViTModel, exist_ok=True)


register_auto_classes()
