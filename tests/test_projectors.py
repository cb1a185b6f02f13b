"""Projectors: shapes, errors, and the Qwen-VL resampler's positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlm_core.config import ProjectorConfig
from vlm_core.models.grid import near_square_grid, resize_grid_table, sincos_2d
from vlm_core.models.projectors import CrossAttentionResampler, build_projector, projector_tokens


def _features(n_patches: int, width: int = 64, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, n_patches, width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["linear", "mlp1x_gelu", "mlp2x_gelu", "mlp3x_gelu"])
def test_per_patch_projectors_map_each_patch(kind):
    cfg = ProjectorConfig(type=kind)
    projector = build_projector(cfg, 64, 128, 16)
    assert projector(_features(16)).shape == (2, 16, 128)
    assert projector_tokens(cfg, 16) == 16


def test_mlp_depth_is_parsed_with_llava_layout():
    projector = build_projector(ProjectorConfig(type="mlp3x_gelu"), 64, 128, 16)
    assert [type(m) for m in projector] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert set(projector.state_dict()) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}


def test_identity_needs_equal_widths():
    x = _features(16)
    assert torch.equal(build_projector(ProjectorConfig(type="identity"), 64, 64, 16)(x), x)
    with pytest.raises(ValueError, match="'identity' needs equal widths.*64 wide.*128 wide"):
        build_projector(ProjectorConfig(type="identity"), 64, 128, 16)


@pytest.mark.parametrize("num_queries,num_patches", [(256, 16), (256, 1024), (16, 16), (9, 64), (6, 49)])
def test_cross_attn_emits_one_token_per_query(num_queries, num_patches):
    cfg = ProjectorConfig(type="cross_attn", num_queries=num_queries)
    projector = build_projector(cfg, 64, 128, num_patches)
    assert projector(_features(num_patches)).shape == (2, num_queries, 128)
    assert projector_tokens(cfg, num_patches) == num_queries


def test_cross_attn_parameters_use_qwen_vl_names_and_heads():
    projector = build_projector(ProjectorConfig(type="cross_attn", num_queries=16), 64, 256, 16)
    names = set(projector.state_dict())
    assert {"attn_pool.query", "attn_pool.pos_embed", "attn_pool.kv_proj.weight", "attn_pool.attn.in_proj_weight",
            "attn_pool.ln_q.weight", "attn_pool.ln_kv.bias", "ln_post.weight", "proj"} <= names
    assert projector.attn_pool.attn.num_heads == 2  # default: LLM width / 128
    # the fixed sin-cos table is state (checkpoints carry it) but never a trainable parameter
    assert "attn_pool.pos_embed" not in dict(projector.named_parameters())
    same_width = build_projector(ProjectorConfig(type="cross_attn", num_queries=16, num_heads=4), 128, 128, 16)
    assert isinstance(same_width.attn_pool.kv_proj, nn.Identity) and same_width.attn_pool.attn.num_heads == 4


def test_cross_attn_knows_where_patches_are():
    """Keys carry grid positions: shuffling the patches changes the output."""
    projector = CrossAttentionResampler(64, 128, num_queries=16, num_heads=2).eval()
    x = _features(64, batch=1)
    shuffled = x[:, torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        assert not torch.allclose(projector(x), projector(shuffled), atol=1e-4)


def test_cross_attn_rejects_a_non_square_patch_grid():
    projector = build_projector(ProjectorConfig(type="cross_attn", num_queries=16), 64, 128, 17)
    with pytest.raises(ValueError, match="square grid, got 17 tokens"):
        projector(_features(17))


def test_sincos_table_matches_the_mae_formula():
    table = sincos_2d(8, 2, 3)  # 2 rows, 3 cols
    assert table.shape == (6, 8)
    row, col = 1, 2
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(table[row * 3 + col], expected.float())


def test_grid_resizing():
    table = sincos_2d(16, 4, 4)
    assert resize_grid_table(table, (4, 4), (4, 4)) is table
    constant = torch.full((4, 16), 0.5)
    torch.testing.assert_close(resize_grid_table(constant, (2, 2), (5, 5)), torch.full((25, 16), 0.5))
    assert resize_grid_table(table, (4, 4), (8, 8)).shape == (64, 16)
    assert near_square_grid(256) == (16, 16) and near_square_grid(6) == (2, 3) and near_square_grid(7) == (1, 7)


def test_unknown_projector_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="unknown projector type 'mlp2x_relu'"):
        ProjectorConfig(type="mlp2x_relu")
