"""Data path: the instruct stage's training loop fed by its real data path vs the same loop fed
batches encoded beforehand.

Real path: staged shards of the synthetic data, streamed by the stage's dataset
(`train.run.build_dataset`, so `data.cache` from configs/quickstart.yaml applies), batched by a
DataLoader with the stage's collator, as the Trainer does. Baseline: the same loop over batches
already in memory, i.e. a data path that costs nothing. Both train the same model (the quickstart
model and shapes) with one thread, as each of the two training processes does. A second row
runs the live path (`data.cache: none`, every sample decoded and tokenized per step) for reference.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import types
from pathlib import Path

import torch

from benchmarks.harness import alternate, median, row

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
STAGE = "instruct"


def _setup(tmp: str, train_images: int):
    from operators.staging import stage_dataset
    from vlm_core.config import load_config
    from vlm_core.data.synth import generate

    generate(f"{tmp}/synth", seed=0, train=train_images, eval_images=2)
    cfg = load_config(str(CONFIG))
    overrides = {"output": f"{tmp}/runs", f"stages.{STAGE}.init_from": None}
    for name, spec in cfg.data.datasets.items():
        staged = f"{tmp}/staged/{name}"
        local = spec.model_copy(update={"url": f"{tmp}/synth/{os.path.basename(spec.url)}", "image_root": f"{tmp}/synth"})
        stage_dataset(local, staged, shard_samples=100, workers=1, progress=False)
        overrides[f"data.datasets.{name}"] = {"url": staged, "format": "shards"}
    return cfg.with_overrides(overrides)


def _loader(cfg, processor, sources, cache_root):
    from vlm_core.train import run
    from vlm_core.train.streaming import StreamLoader

    stage = cfg.stage(STAGE)
    one_process = types.SimpleNamespace(local_process_index=0, wait_for_everyone=lambda: None)
    dataset = run.build_dataset(cfg, stage, processor, sources, cache_root, one_process)
    loader = StreamLoader(
        dataset, batch_size=stage.per_device_batch_size, collate_fn=run.build_collator(cfg, processor),
        num_workers=cfg.data.num_workers,
    )
    return loader


def _endless(loader):
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


class _Step:
    """The Trainer's step without the Trainer: loss on scored positions, clipping, AdamW."""

    def __init__(self, model, stage):
        self.model = model.train()
        self.opt = torch.optim.AdamW(model.parameters(), lr=stage.learning_rate, betas=tuple(stage.adam_betas))
        self.max_grad_norm = stage.max_grad_norm

    def __call__(self, batch: dict) -> None:
        from vlm_core.models.loss import mean_loss, next_token_targets, target_losses

        inputs = dict(batch)
        labels = inputs.pop("labels")
        inputs.pop("dataset_index", None)
        keep, targets = next_token_targets(labels)
        loss = mean_loss(target_losses(self.model(**inputs, logits_to_keep=keep).logits, targets))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def bench(quick: bool) -> list:
    from vlm_core.train import run

    train_images, steps, reps = (150, 4, 3) if quick else (600, 10, 8)
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        cfg = _setup(tmp, train_images)
        stage = cfg.stage(STAGE)
        sources = run._open_sources(cfg, stage.datasets)
        model, processor = run.build_model_for_stage(cfg, STAGE, sources)
        step = _Step(model, stage)
        torch.set_num_threads(1)  # as each torchrun process runs
        try:
            build_start = time.perf_counter()
            real = _endless(_loader(cfg, processor, sources, f"{tmp}/cache"))
            build_s = time.perf_counter() - build_start
            live = _endless(_loader(cfg.with_overrides({"data.cache": "none"}), processor, sources, None))
            encoded = [next(real) for _ in range(steps)]

            def from_path(batches, clock):
                def run_steps():
                    for _ in range(steps):
                        start = time.perf_counter()
                        batch = next(batches)
                        clock[0] += time.perf_counter() - start
                        step(batch)
                return run_steps

            def pre_encoded():
                for batch in encoded:
                    step(batch)

            timed_steps = [(real, [0.0]), (live, [0.0])]
            results = []
            for batches, clock in timed_steps:
                fed = from_path(batches, clock)
                pre_encoded(), fed()  # warm-up: allocator, first shards
                clock[0] = 0.0
                base, ours = alternate(pre_encoded, fed, reps=reps, warmup=0)
                results.append((base, ours, clock[0] / sum(ours)))
        finally:
            torch.set_num_threads(threads)

    per_device = stage.per_device_batch_size
    pad = processor.tokenizer.pad_token_id
    tokens = sum((b["input_ids"] != pad).sum().item() for b in encoded) / (steps * per_device)
    (base, ours, share), (base_live, ours_live, share_live) = results
    rows.append(row(
        f"data path: {STAGE} loop on its real data path (data.cache: {cfg.data.cache}) vs pre-encoded batches",
        "steps/s", steps / median(base), steps / median(ours), target=">=0.9x",
        note=f"batch {per_device}, {tokens:.0f} tokens/sample, packing {cfg.data.packing}, 1 thread; data {share:.1%} of the step; "
        f"cache built once in {build_s:.1f} s",
    ))
    rows.append(row(
        "data path: the same with data.cache: none (decode + tokenize every step), for reference",
        "steps/s", steps / median(base_live), steps / median(ours_live), target="report",
        note=f"data {share_live:.1%} of the step",
    ))
    return rows
