"""Useful tokens/s: padding-free packing vs. padded batches on a long-tailed length mix.

Both sides train identical copies of one model on the same samples in the same batches (same
optimizer steps); only the layout differs. The baseline pads each batch to its longest sample, in
random order: LLaVA's `group_by_modality_length` sorts by length only inside a megabatch of
world_size x batch samples, which on one device is the batch itself and saves no padding.
Packed rows hold at most max_length tokens, as the trainer packs. Lengths are lognormal, clipped to max_length (LLaVA-665k-like: most short, a long tail).
Because packing is exact, both copies end with the same loss; the note reports the gap.
"""

from __future__ import annotations

import math

import torch

from benchmarks.harness import alternate, median, row
from vlm_core.data.collate import pad_right
from vlm_core.data.packing import IGNORE_INDEX, make_packing_collator

PAD = 0


def lognormal_lengths(n: int, median: int, sigma: float, max_length: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(math.log(median) + sigma * torch.randn(n, generator=g))
    return [int(min(max_length, max(8, x))) for x in raw.tolist()]


def _samples(lengths: list[int], vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=g)
        labels = ids.clone()
        labels[: n // 3] = IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels, "dataset_index": 0})
    return out


def _model(hidden: int, layers: int, vocab: int, max_length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=max_length,
        attn_implementation="sdpa", use_cache=False,
    )
    return LlamaForCausalLM(cfg).train()


class _Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.last_loss = float("nan")

    def step(self, batch: dict) -> None:
        inputs = {k: v for k, v in batch.items() if k != "dataset_index"}
        loss = self.model(**inputs).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()


def bench(quick: bool) -> list:
    import copy

    n_batches, batch_size, max_length = (4, 8, 1024) if quick else (12, 16, 2048)
    hidden, layers, vocab = (256, 2, 1000) if quick else (512, 4, 4000)
    lengths = lognormal_lengths(n_batches * batch_size + batch_size, median=160, sigma=0.9, max_length=max_length)
    samples = _samples(lengths, vocab)
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    warm, batches = batches[0], batches[1:]
    pack = make_packing_collator(PAD, max_tokens=max_length)  # as the trainer does (data.max_length)
    padded = [pad_right(b, PAD) for b in batches]
    packed = [pack(b) for b in batches]

    model = _model(hidden, layers, vocab, max_length)
    base, ours = _Trainer(model), _Trainer(copy.deepcopy(model))
    base.step(pad_right(warm, PAD))
    ours.step(pack(warm))
    # Per batch, the median of a few alternating steps (the same batch again: identical work),
    # summed over batches: the time of one pass over the samples, robust to a busy machine.
    base_s = ours_s = 0.0
    for p, q in zip(padded, packed):
        b, o = alternate(lambda: base.step(p), lambda: ours.step(q), reps=3, warmup=0)
        base_s, ours_s = base_s + median(b), ours_s + median(o)

    useful = sum(lengths[batch_size:])
    computed = sum(p["input_ids"].numel() for p in padded)
    note = (
        f"{len(batches)} steps x {batch_size} samples, lognormal lengths median 160 max {max(lengths)}, "
        f"padding {1 - useful / computed:.0%} of padded positions; final loss gap {abs(base.last_loss - ours.last_loss):.1e}"
    )
    return [row("packing: useful tokens/s (train step)", "tok/s", useful / base_s, useful / ours_s, target=">=1.5x", note=note)]
