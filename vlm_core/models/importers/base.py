"""What an importer is: a published checkpoint layout read into parts that `build_vlm` assembles.

An importer never builds the VLM itself. It writes the parts transformers can load (a vision
tower folder, a causal-LM folder with its tokenizer) into a work folder, or names the source's
own, and returns a `ModelConfig` naming them plus the projector's weights. The VLM then comes
from the same `build_vlm` path a training run uses, so an imported model is built, and stays
causal, exactly like a configured one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from vlm_core.config import ModelConfig
from vlm_core.registry import Registry


class UnsupportedCheckpoint(ValueError):
    """A checkpoint this project cannot carry over; the message names the setting and why."""


@dataclass(frozen=True)
class ImportOptions:
    vision_tower: str | None = None  # llava: path (or id) of the tower, instead of the config's mm_vision_tower
    llm: str | None = None  # llava: the LLM a stage-1 mm_projector.bin was trained on
    template: str | None = None  # conversation template of the imported model; default: the format's
    image_aspect: Literal["square", "pad"] | None = None  # default: the format's
    only: Literal["vision", "llm"] | None = None  # write one part alone (for a run config's name_or_path)

    def given(self) -> set[str]:
        return {name for name, value in vars(self).items() if value is not None}


@dataclass
class ImportedParts:
    model: ModelConfig  # vision may be absent (an LLM alone, e.g. Qwen-14B)
    projector_state: dict[str, torch.Tensor] = field(default_factory=dict)
    template: str = "vicuna_v1"
    image_aspect: str = "pad"
    has_vision: bool = True


@dataclass(frozen=True)
class Importer:
    read: Callable[[str, str, ImportOptions], ImportedParts]
    """(source folder or file, work folder, options) -> parts"""
    model_types: tuple[str, ...]
    """``config.json`` model types this importer converts (transformers cannot load them itself)"""
    options: frozenset[str]
    """ImportOptions fields the format uses"""


IMPORTERS: Registry[Importer] = Registry("checkpoint format")
