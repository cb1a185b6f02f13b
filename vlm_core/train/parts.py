"""What learns in a stage: freezing by part, and LoRA on the LLM with the projector kept trainable.

CodeFuse-VLM's LoRA path wraps the whole model and so silently freezes the projector; here the
projector (and the vision tower when asked) are full-rank `modules_to_save` of the peft model.
"""

from __future__ import annotations

from torch import nn

from vlm_core.config import LoraConfig, StageConfig

PART_ATTRIBUTES = {"vision": "vision_tower", "projector": "projector", "llm": "language_model"}


def set_trainable_parts(model: nn.Module, trainable: list[str]) -> None:
    for part, attribute in PART_ATTRIBUTES.items():
        getattr(model, attribute).requires_grad_(part in trainable)


def llm_linear_module_names(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Full names of the LLM's linear layers that LoRA adapts (never the LM head)."""
    names = []
    for name, module in model.language_model.named_modules():
        if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
            continue
        if lora.target_modules == "all-linear" or name.rsplit(".", 1)[-1] in lora.target_modules:
            names.append(f"language_model.{name}")
    if not names:
        raise ValueError(f"LoRA target_modules {lora.target_modules!r} match no linear layer of the LLM")
    return names


def prepare_parts(model: nn.Module, stage: StageConfig) -> nn.Module:
    """Freeze / unfreeze per stage; wrap the LLM with LoRA when configured. Returns the model to train."""
    if stage.lora is None:
        set_trainable_parts(model, stage.trainable)
        return model
    if "llm" not in stage.trainable:
        raise ValueError("stage.lora adapts the LLM: add 'llm' to trainable")
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    full_rank = [PART_ATTRIBUTES[p] for p in stage.trainable if p != "llm"]
    peft_config = PeftLoraConfig(
        r=stage.lora.r,
        lora_alpha=stage.lora.alpha,
        lora_dropout=stage.lora.dropout,
        target_modules=llm_linear_module_names(model, stage.lora),
        modules_to_save=full_rank or None,
        task_type=None,
    )
    return get_peft_model(model, peft_config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    # Under ZeRO-3 a parameter's real size is in ds_numel.
    size = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731
    return sum(size(p) for p in params if p.requires_grad), sum(size(p) for p in params)
