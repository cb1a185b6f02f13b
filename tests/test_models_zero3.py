"""ZeRO-3: under HfDeepSpeedConfig, build_vlm partitions every parameter at construction (and the
position table redrawn after it keeps its new values)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed, torch
    deepspeed.init_distributed(dist_backend="gloo")
    from transformers.integrations import HfDeepSpeedConfig
    keep = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    from vlm_core.config import ModelConfig
    from vlm_core.models import build_vlm
    cfg = ModelConfig.model_validate({"projector": {"type": "cross_attn", "num_queries": 4}, "vision": {"position_init_std": 1.0}})
    model, processor = build_vlm(cfg, template="plain", image_aspect="pad", tokenizer_texts=["red"])
    params = list(model.parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params), "not partitioned"
    with deepspeed.zero.GatheredParameters(params):
        query = model.projector.attn_pool.query
        assert 0.01 < float(query.std()) < 0.03, float(query.std())
        assert float(model.language_model.lm_head.weight.std()) > 0
        table = model.vision_tower.model.embeddings.position_embedding.weight  # redrawn after construction
        assert 0.8 < float(table.std()) < 1.2, float(table.std())
    print("ZERO3-OK")
    """
)


@pytest.mark.e2e
def test_build_under_zero3_partitions_at_construction():
    result = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=600)
    assert "ZERO3-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
