"""Vision encoder families: tiny presets, feature layer / token selection, image processors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_core.config import VisionConfig
from vlm_core.models.vision import VISION_ENCODERS, build_vision_tower

FAMILIES = ["clip", "siglip", "chinese_clip", "dinov2", "qwen_vl_vit"]
HAS_CLS = {"clip": True, "siglip": False, "chinese_clip": True, "dinov2": True, "qwen_vl_vit": False}


def _pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_registry_names():
    assert VISION_ENCODERS.names() == sorted(FAMILIES + ["auto"])


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_features(family):
    torch.manual_seed(0)
    tower = build_vision_tower(VisionConfig(encoder=family, feature_layer=-1)).eval()
    assert (tower.image_size, tower.hidden_size, tower.model.config.num_hidden_layers) == (32, 64, 2)
    with torch.no_grad():
        patches = tower(_pixels())
        states = tower.model(pixel_values=_pixels(), output_hidden_states=True).hidden_states
    assert patches.shape == (2, 16, 64) and tower.num_patches == 16
    torch.testing.assert_close(patches, states[-1][:, -16:])  # the last layer, CLS dropped

    if HAS_CLS[family]:
        with_cls = build_vision_tower(VisionConfig(encoder=family, feature_layer=-2, feature_select="cls_patch"))
        loaded = with_cls.load_state_dict(tower.state_dict(), strict=False)
        # layer -2 of 2: the last layer is never used, so it is not built
        assert with_cls.model.config.num_hidden_layers == 1 and not loaded.missing_keys
        assert loaded.unexpected_keys and all(".1." in k for k in loaded.unexpected_keys)
        with torch.no_grad():
            features = with_cls.eval()(_pixels())
        assert features.shape == (2, 17, 64) and with_cls.num_patches == 17
        torch.testing.assert_close(features, states[-2])
    else:
        with pytest.raises(ValueError, match="'cls_patch' needs a CLS token"):
            build_vision_tower(VisionConfig(encoder=family, feature_select="cls_patch"))


@pytest.mark.parametrize("family", FAMILIES)
def test_image_processor_matches_the_tower(family):
    tower = build_vision_tower(VisionConfig(encoder=family, image_size=48, config={"patch_size": 16}))
    assert tower.num_patches == 9
    pixels = tower.image_processor()([Image.new("RGB", (60, 40), (10, 200, 30))], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 48, 48)
    assert tower(pixels).shape == (1, 9, 64)


def test_feature_layer_out_of_range():
    with pytest.raises(ValueError, match="feature_layer 3 is out of range for 3 hidden states"):
        build_vision_tower(VisionConfig(encoder="clip", feature_layer=3))


def test_config_overrides_and_auto():
    tower = build_vision_tower(VisionConfig(encoder="clip", config={"hidden_size": 32, "num_attention_heads": 2}))
    assert tower.hidden_size == 32
    auto = build_vision_tower(VisionConfig(
        encoder="auto", config={"model_type": "siglip_vision_model", "hidden_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
    ))
    assert auto(_pixels(1)).shape == (1, 16, 32)
    with pytest.raises(ValueError, match="needs config.model_type"):
        build_vision_tower(VisionConfig(encoder="auto"))
    with pytest.raises(KeyError, match="unknown vision encoder 'clipp'"):
        build_vision_tower(VisionConfig(encoder="clipp"))


@pytest.mark.parametrize("family,expected", [("clip", -2), ("siglip", -2), ("dinov2", -2), ("qwen_vl_vit", -1)])
def test_feature_layer_defaults_to_the_family_s(family, expected):
    """LLaVA takes CLIP-like towers' second-to-last layer; Qwen-VL feeds its ViT's last block (no final
    norm) to the resampler, so dropping it would also leave real weights unloadable."""
    from vlm_core.models.vision import feature_layer

    assert feature_layer(VisionConfig(encoder=family)) == expected
    assert feature_layer(VisionConfig(encoder=family, feature_layer=-3)) == -3
    tower = build_vision_tower(VisionConfig(encoder=family))
    assert tower.model.config.num_hidden_layers == (2 if expected == -1 else 1)  # the tiny preset has 2


def test_codefuse_config_builds_qwen_vl_s_architecture():
    """configs/codefuse-vlm-14b.yaml: every ViT block, 448 px as released, 40 resampler heads at 5120."""
    from pathlib import Path

    from vlm_core.config import load_config
    from vlm_core.models.projectors import build_projector
    from vlm_core.models.qwen_vl_vit import QwenVLViTConfig
    from vlm_core.models.vision import feature_layer

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "codefuse-vlm-14b.yaml").model
    assert feature_layer(cfg.vision) == -1 and cfg.vision.image_size is None and QwenVLViTConfig().image_size == 448
    with torch.device("meta"):
        projector = build_projector(cfg.projector, 1664, 5120, 32 * 32)
    assert projector.attn_pool.attn.num_heads == 40 and projector.attn_pool.query.shape == (256, 5120)
