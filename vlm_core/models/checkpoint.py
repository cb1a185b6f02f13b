"""One self-contained checkpoint folder per model, at any fsspec URL.

The folder holds the safetensors weights, ``config.json`` (model_type ``vlm``), the generation
config, the tokenizer, the image processor's ``preprocessor_config.json`` and
``vlm_processor.json``. After ``import vlm_core.models`` it also loads with
``AutoModelForImageTextToText.from_pretrained(folder)``, no remote code.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import torch

from vlm_core import storage
from vlm_core.models.modeling_vlm import VLMForConditionalGeneration
from vlm_core.models.processor import VLMProcessor


@contextlib.contextmanager
def _writable_dir(url: str) -> Iterator[str]:
    """A local folder whose contents end up at ``url`` (written in place when local)."""
    if storage.is_local(url):
        yield storage.local_path(url)
        return
    with tempfile.TemporaryDirectory(prefix="vlm-ckpt-") as tmp:
        yield tmp
        storage.upload_dir(tmp, url)


def save_checkpoint(model: VLMForConditionalGeneration, processor: VLMProcessor, url: str) -> None:
    with _writable_dir(url) as directory:
        model.save_pretrained(directory, safe_serialization=True)
        processor.save_pretrained(directory)


def load_checkpoint(
    url: str, torch_dtype: torch.dtype | None = None
) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    with storage.local_copy_dir(url) as directory:
        model = VLMForConditionalGeneration.from_pretrained(directory, dtype=torch_dtype)
        processor = VLMProcessor.from_pretrained(directory)
    return model, processor
