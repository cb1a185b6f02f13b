"""Padding-free packing: several encoded samples share one sequence, none of them sees another.

A padded batch of lengths (900, 120, 80, 60) computes 4 x 900 token positions for 1160 useful
ones; packed, it computes 1160. What keeps the samples apart is transformers' own masking:

- ``position_ids`` restart at 0 for every sample and ``attention_mask`` is left out (``None``);
  transformers' masking utils then read the sample boundaries off the position ids and build a
  block-diagonal causal mask (sdpa / eager, exact), and flash-attention-2 runs its varlen kernel
  (one row per batch only: transformers detects packing there only when the batch dim is 1).
- The boundaries are only read when no KV cache exists, so the batch carries ``use_cache=False``:
  with the config default (``True``) a training forward creates an empty cache and the samples
  silently attend to each other.
- Under the causal LM shift, logits at position ``t`` predict ``labels[t + 1]``; the last token of
  one sample would predict the first token of the next. Each sample's first label is therefore
  ``-100``, which drops exactly the prediction a padded batch never makes (it has no position
  before a row's first token), so the packed loss equals the padded one token for token.

Rows: without ``max_tokens`` all samples go to one row (what flash attention needs). With it,
samples are placed first-fit-decreasing into rows of at most ``max_tokens`` tokens (fewer
quadratic attention blocks for sdpa/eager on long packs); shorter rows are right-padded with
pad tokens whose positions continue the row's last sample (unlabelled, and causal attention never
lets a real token see a later pad). So a position 0 starts every sample and nothing else:
``token_sample_index`` maps tokens to samples from that alone. ``pixel_values`` and
``dataset_index`` follow the packed order, row by row, which is the order in which the model meets
the image tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlm_core.data.templates import IGNORE_INDEX


def plan_rows(lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Sample indices per row: one row without a budget, else first-fit-decreasing bins."""
    if max_tokens is None:
        return [list(range(len(lengths)))]
    too_long = [n for n in lengths if n > max_tokens]
    if too_long:
        raise ValueError(
            f"samples of {too_long} tokens exceed the packing budget max_tokens={max_tokens}; "
            "raise max_tokens to at least data.max_length"
        )
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(max_tokens)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def _as_long(values: Any) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long).reshape(-1)


@dataclass(frozen=True)
class PackingCollator:
    """Collate encoded samples (``SampleEncoder.encode`` dicts) into packed rows.

    Returns ``input_ids``, ``labels``, ``position_ids`` (rows, L), ``dataset_index`` (samples,),
    ``pixel_values`` (images, 3, H, W) when any sample has images, and ``use_cache=False``;
    no ``attention_mask``. ``None`` items (skipped bad samples) are dropped.
    """

    pad_token_id: int
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive or None, got {self.max_tokens}")

    def __call__(self, features: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        samples = [f for f in features if f is not None]
        if not samples:
            raise ValueError("nothing to pack: every sample of the batch was skipped")
        ids = [_as_long(s["input_ids"]) for s in samples]
        labels = [_as_long(s["labels"]) for s in samples]
        for i, (x, y) in enumerate(zip(ids, labels)):
            if x.numel() != y.numel() or x.numel() == 0:
                raise ValueError(f"sample {i}: input_ids ({x.numel()}) and labels ({y.numel()}) must be equally long and non-empty")

        rows = plan_rows([x.numel() for x in ids], self.max_tokens)
        width = max(sum(ids[i].numel() for i in row) for row in rows)
        out_ids, out_labels, out_pos = [], [], []
        for row in rows:
            seg_ids, seg_labels, seg_pos = [], [], []
            for i in row:
                seg_ids.append(ids[i])
                first_masked = labels[i].clone()
                first_masked[0] = IGNORE_INDEX  # not predictable from the previous sample
                seg_labels.append(first_masked)
                seg_pos.append(torch.arange(ids[i].numel()))
            pad = width - sum(x.numel() for x in seg_ids)
            if pad:
                last = seg_pos[-1].numel()
                seg_ids.append(torch.full((pad,), self.pad_token_id, dtype=torch.long))
                seg_labels.append(torch.full((pad,), IGNORE_INDEX, dtype=torch.long))
                seg_pos.append(torch.arange(last, last + pad))
            out_ids.append(torch.cat(seg_ids))
            out_labels.append(torch.cat(seg_labels))
            out_pos.append(torch.cat(seg_pos))

        order = [i for row in rows for i in row]
        batch: dict[str, Any] = {
            "input_ids": torch.stack(out_ids),
            "labels": torch.stack(out_labels),
            "position_ids": torch.stack(out_pos),
            "dataset_index": torch.tensor([int(samples[i].get("dataset_index", 0)) for i in order], dtype=torch.long),
            "use_cache": False,
        }
        images = [samples[i]["pixel_values"] for i in order if _has_images(samples[i])]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


def _has_images(sample: Mapping[str, Any]) -> bool:
    pixels = sample.get("pixel_values")
    return pixels is not None and pixels.shape[0] > 0


def token_sample_index(position_ids: torch.Tensor) -> torch.Tensor:
    """For each token of a packed batch, the index of its sample in packed order (``dataset_index``'s).

    Per-sample statistics (e.g. per-dataset loss) gather with it; it is exact because only a
    sample's first token has position 0 (padding continues the last sample of its row).
    """
    starts = (position_ids == 0).flatten().long()
    return (starts.cumsum(0) - 1).view_as(position_ids)


def make_packing_collator(pad_token_id: int, max_tokens: int | None = None) -> PackingCollator:
    """The collator the trainer uses when ``data.packing`` is true."""
    return PackingCollator(pad_token_id=pad_token_id, max_tokens=max_tokens)
