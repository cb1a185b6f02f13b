"""`vlm export --format F`: a loaded checkpoint written in a format other programs read.

``vlm`` is the project's own self-contained checkpoint (`save_checkpoint`); ``llava-hf`` is
transformers' Llava (`llava_hf`), for vLLM, SGLang and ``transformers.pipeline``. Each exporter
is ``(model, processor, out_url) -> None`` and raises a one-line ``ValueError`` for a model the
format cannot express.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlm_core.models.checkpoint import save_checkpoint
from vlm_core.models.exporters.llava_hf import NotExpressible, export_llava_hf
from vlm_core.registry import Registry

EXPORTERS: Registry[Callable[[Any, Any, str], None]] = Registry("export format")
EXPORTERS.add("vlm", save_checkpoint)
EXPORTERS.add("llava-hf", export_llava_hf)

__all__ = ["EXPORTERS", "NotExpressible"]
