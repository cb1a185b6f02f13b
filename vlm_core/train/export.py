"""Turn a stage output into a self-contained checkpoint, or another format (`vlm_core.models.exporters`).

A LoRA stage saves a peft adapter (LLM adapters + the full-rank projector) next to the processor;
its `base_model_name_or_path` names the checkpoint the stage started from. Adapters are merged
first: a self-contained checkpoint without merging is refused, other formats always merge.
"""

from __future__ import annotations

import json

from vlm_core import storage


def is_adapter(url: str) -> bool:
    return storage.exists(storage.join(url, "adapter_config.json"))


def load_merged(url: str):
    """(model, processor) from a full checkpoint or an adapter folder, adapters merged."""
    from vlm_core.models.checkpoint import load_checkpoint
    from vlm_core.models.processor import VLMProcessor

    if not is_adapter(url):
        return load_checkpoint(url)
    from peft import PeftModel

    adapter = json.loads(storage.read_text(storage.join(url, "adapter_config.json")))
    base, _ = load_checkpoint(adapter["base_model_name_or_path"])
    with storage.local_copy_dir(url) as local:
        model = PeftModel.from_pretrained(base, local).merge_and_unload()
        processor = VLMProcessor.from_pretrained(local)
    return model, processor


def export_checkpoint(checkpoint: str, out_url: str, merge_lora: bool = True, fmt: str = "vlm") -> str:
    from vlm_core.models.exporters import EXPORTERS

    exporter = EXPORTERS.get(fmt)
    if is_adapter(checkpoint) and not merge_lora:
        raise ValueError(f"{checkpoint} is a LoRA adapter; exporting it self-contained needs --merge-lora")
    model, processor = load_merged(checkpoint)
    exporter(model, processor, out_url)
    return out_url
