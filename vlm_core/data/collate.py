"""Batching with right padding (training); generation's left padding lives with eval."""

from __future__ import annotations

from typing import Any

from vlm_core.data.templates import IGNORE_INDEX


def pad_right(items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """``input_ids`` padded with ``pad_token_id``, ``labels`` with -100, and the ``attention_mask``."""
    import torch

    longest = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class VLMCollator:
    """Pads ``input_ids`` with ``pad_token_id``, ``labels`` with -100 (padding never reaches the
    loss) and builds ``attention_mask``; concatenates ``pixel_values`` in order of appearance and
    stacks ``dataset_index``. ``None`` items (bad samples) are dropped."""

    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: give the tokenizer a pad token")
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        import torch

        items = [item for item in items if item is not None]
        if not items:
            raise ValueError("every sample of this batch was bad; nothing to collate")
        return {
            **pad_right(items, self.pad_token_id),
            "pixel_values": torch.cat([item["pixel_values"] for item in items]),
            "dataset_index": torch.tensor([int(item["dataset_index"]) for item in items], dtype=torch.long),
        }
