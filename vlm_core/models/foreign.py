"""Checkpoints transformers cannot load by itself, caught before loading with the import that converts them.

Qwen v1 (``model_type: qwen``) and the original LLaVA layout (``llava_llama``) only load with
their authors' remote code, which this project never runs; ``vlm import`` converts them. Which
model types need which import is declared by the importers themselves (``Importer.model_types``).
"""

from __future__ import annotations

from vlm_core.config import ConfigError


def foreign_model_type(path: str) -> tuple[str, str] | None:
    """``(model_type, import format)`` when ``path`` holds a checkpoint an importer must convert."""
    from transformers import PretrainedConfig

    from vlm_core.models.importers import IMPORTERS

    try:
        config, _ = PretrainedConfig.get_config_dict(path)
    except (OSError, ValueError):
        return None  # no config to read: the loader that follows says what is wrong
    model_type = config.get("model_type")
    for name in IMPORTERS:
        if model_type in IMPORTERS.get(name).model_types:
            return model_type, name
    return None


def check_loadable(path: str, field: str) -> None:
    """Raise a one-line ``ConfigError`` naming the import to run when ``path`` needs converting."""
    found = foreign_model_type(path)
    if found is not None:
        model_type, fmt = found
        raise ConfigError(
            f"{field}: {path} is a {model_type!r} checkpoint, which transformers loads only with remote code; "
            f"convert it with `vlm import {fmt} {path} OUT`, then start from OUT (init_from: OUT for a whole "
            f"VLM; {field}: OUT for an LLM or vision tower alone)"
        )
