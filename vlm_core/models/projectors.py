"""Modality projectors: vision features ``(B, N, Dv)`` -> LLM-width image tokens ``(B, T, Dl)``.

``linear``, ``identity`` and ``mlp{N}x_gelu`` keep one token per patch (``T = N``), with
LLaVA's parameter layout (``nn.Sequential`` indices 0, 2, ...). ``cross_attn`` is Qwen-VL's
resampler: ``num_queries`` learned queries attend to the patches (``T = num_queries``); its
parameter names are Qwen-VL's (``attn_pool.*``, ``ln_post``, ``proj``) so released weights load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlm_core.config import ProjectorConfig
from vlm_core.models.grid import near_square_grid, resize_grid_table, sincos_2d, square_side
from vlm_core.registry import Registry

_MLP = re.compile(r"mlp([1-9]\d*)x_gelu")
_MLP_NAME = "mlp{N}x_gelu"


@dataclass(frozen=True)
class ProjectorKind:
    build: Callable[[ProjectorConfig, int, int, int], nn.Module]
    """(cfg, vision_hidden, llm_hidden, num_patches) -> module"""
    tokens: Callable[[ProjectorConfig, int], int]
    """(cfg, num_patches) -> image tokens per image"""


PROJECTORS: Registry[ProjectorKind] = Registry("projector")


def _per_patch(cfg: ProjectorConfig, num_patches: int) -> int:
    return num_patches


def _registry_name(projector_type: str) -> str:
    return _MLP_NAME if _MLP.fullmatch(projector_type) else projector_type


def build_projector(cfg: ProjectorConfig, vision_hidden: int, llm_hidden: int, num_patches: int) -> nn.Module:
    return PROJECTORS.get(_registry_name(cfg.type)).build(cfg, vision_hidden, llm_hidden, num_patches)


def projector_tokens(cfg: ProjectorConfig, num_patches: int) -> int:
    """Image tokens per image that the projector emits for ``num_patches`` vision features."""
    return PROJECTORS.get(_registry_name(cfg.type)).tokens(cfg, num_patches)


# ----------------------------------------------------------------------------- per-patch projectors


def _linear(cfg: ProjectorConfig, vision_hidden: int, llm_hidden: int, num_patches: int) -> nn.Module:
    return nn.Linear(vision_hidden, llm_hidden)


def _identity(cfg: ProjectorConfig, vision_hidden: int, llm_hidden: int, num_patches: int) -> nn.Module:
    if vision_hidden != llm_hidden:
        raise ValueError(
            f"projector 'identity' needs equal widths, but the vision features are {vision_hidden} wide and the "
            f"LLM is {llm_hidden} wide; use linear, mlp{{N}}x_gelu or cross_attn"
        )
    return nn.Identity()


def _mlp(cfg: ProjectorConfig, vision_hidden: int, llm_hidden: int, num_patches: int) -> nn.Module:
    depth = int(_MLP.fullmatch(cfg.type).group(1))
    layers: list[nn.Module] = [nn.Linear(vision_hidden, llm_hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(llm_hidden, llm_hidden)]
    return nn.Sequential(*layers)


PROJECTORS.add("linear", ProjectorKind(_linear, _per_patch))
PROJECTORS.add("identity", ProjectorKind(_identity, _per_patch))
PROJECTORS.add(_MLP_NAME, ProjectorKind(_mlp, _per_patch))


# ----------------------------------------------------------------------------- Qwen-VL resampler


class AttentionPool(nn.Module):
    """Qwen-VL's ``attn_pool``: learned queries cross-attend to the (projected) patch features.

    Fixed 2-D sin-cos positions are added to the queries (on their own grid) and to the keys
    (the query table bicubically resized to the patch grid), so the queries know where patches are.
    """

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.grid = near_square_grid(num_queries)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        # A persistent buffer (Qwen-VL checkpoints carry it), never trained.
        self.register_buffer("pos_embed", sincos_2d(embed_dim, *self.grid), persistent=True)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = square_side(x.shape[1], "cross_attn's input (use feature_select: patch)")
        key_pos = resize_grid_table(self.pos_embed, self.grid, (side, side))
        kv = self.ln_kv(self.kv_proj(x))
        q = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, kv + key_pos.to(kv.dtype), kv, need_weights=False)
        return out


class CrossAttentionResampler(nn.Module):
    def __init__(self, vision_hidden: int, llm_hidden: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        if llm_hidden % num_heads:
            raise ValueError(f"cross_attn: LLM width {llm_hidden} is not divisible by num_heads {num_heads}")
        self.attn_pool = AttentionPool(num_queries, llm_hidden, num_heads, kv_dim=vision_hidden)
        self.ln_post = nn.LayerNorm(llm_hidden, eps=1e-6)
        self.proj = nn.Parameter(torch.empty(llm_hidden, llm_hidden))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.attn_pool.query, std=0.02)
        nn.init.normal_(self.proj, std=self.proj.shape[0] ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(self.attn_pool(x)) @ self.proj


def _cross_attn(cfg: ProjectorConfig, vision_hidden: int, llm_hidden: int, num_patches: int) -> nn.Module:
    num_heads = cfg.num_heads or max(1, llm_hidden // 128)
    return CrossAttentionResampler(vision_hidden, llm_hidden, cfg.num_queries, num_heads)


PROJECTORS.add("cross_attn", ProjectorKind(_cross_attn, lambda cfg, num_patches: cfg.num_queries))
