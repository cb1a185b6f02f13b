"""DeepSpeed configs chosen by name in the run config (`distributed.deepspeed`).

Batch sizes, clipping, precision and optimizer hyper-parameters are "auto": the HF Trainer fills
them from the stage config, so the numbers live in one place.
"""

from __future__ import annotations

from typing import Any

from vlm_core.registry import Registry

DEEPSPEED_PRESETS: Registry[dict[str, Any]] = Registry("deepspeed preset")

_COMMON: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "steps_per_print": 10**9,  # the Trainer logs; DeepSpeed's own prints only add noise
    "wall_clock_breakdown": False,
}

# CPU offload needs DeepSpeed's own optimizer (its CPU Adam); the others take the Trainer's AdamW.
_DS_ADAMW = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}

_ZERO2 = {
    "stage": 2,
    "overlap_comm": True,
    "contiguous_gradients": True,
    "reduce_scatter": True,
    # Not "auto": the Trainer would size it hidden_size ** 2 (16k gradients for a width-128 model),
    # one collective per 16k gradients; on CPU with gloo that cost the quickstart 15 % of a step's
    # CPU time. 5e7 fits a small model in one bucket and is 3x "auto" at width 4096 (+100 MB).
    "reduce_bucket_size": 5e7,
    "allgather_bucket_size": 5e8,
}
_ZERO3 = {
    "stage": 3,
    "overlap_comm": True,
    "contiguous_gradients": True,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9,
    # Without this, save_model writes empty (partitioned) tensors.
    "stage3_gather_16bit_weights_on_model_save": True,
}
_OFFLOAD = {"device": "cpu", "pin_memory": True}

DEEPSPEED_PRESETS.add("zero2", {**_COMMON, "zero_optimization": _ZERO2})
DEEPSPEED_PRESETS.add(
    "zero2_offload", {**_COMMON, "optimizer": _DS_ADAMW, "zero_optimization": {**_ZERO2, "offload_optimizer": _OFFLOAD}}
)
DEEPSPEED_PRESETS.add("zero3", {**_COMMON, "zero_optimization": _ZERO3})
DEEPSPEED_PRESETS.add(
    "zero3_offload",
    {
        **_COMMON,
        "optimizer": _DS_ADAMW,
        "zero_optimization": {**_ZERO3, "offload_optimizer": _OFFLOAD, "offload_param": _OFFLOAD},
    },
)


def deepspeed_config(preset: str) -> dict[str, Any] | None:
    """A fresh copy of the preset's config; None for `none` (plain DDP)."""
    import copy

    if preset == "none":
        return None
    return copy.deepcopy(DEEPSPEED_PRESETS.get(preset))
