"""The HF Trainer, taught what a VLM run needs: per-dataset loss, throughput, a modality/length
grouped sampler, and streams that record their position in each checkpoint. Everything else
(DeepSpeed, clipping, schedules, checkpoint rotation, resume) is the Trainer's own.
"""

from __future__ import annotations

import time

import torch
from transformers import Trainer, TrainerCallback

from vlm_core.models.loss import mean_loss, next_token_targets, target_losses
from vlm_core.train.sampler import ModalityLengthGroupedSampler


def target_samples(labels: torch.Tensor, position_ids: torch.Tensor | None, packed: bool) -> torch.Tensor:
    """Which sample each shifted target belongs to: its row, or in a packed row the sample whose
    positions restart at 0."""
    if packed:
        from vlm_core.data.packing import token_sample_index

        return token_sample_index(position_ids)[:, 1:]
    rows = torch.arange(labels.size(0), device=labels.device)
    return rows[:, None].expand(-1, labels.size(1) - 1)


class StreamStateCallback(TrainerCallback):
    """Write each rank's stream position into every checkpoint (``data_state/rank-<r>.json``),
    so ``--resume auto`` seeks the stream instead of re-reading what was consumed."""

    def on_save(self, args, state, control, train_dataloader=None, **kwargs):
        import os

        from vlm_core.train.streaming import StreamLoader, save_data_state

        if isinstance(train_dataloader, StreamLoader):
            save_data_state(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), train_dataloader.state_dict())


class VLMTrainer(Trainer):
    # compute_loss returns a per-micro-batch mean; the Trainer divides by accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dataset_names: list[str], lengths: list[int] | None, **kwargs) -> None:
        from vlm_core.train.streaming import StreamingMixture

        super().__init__(*args, **kwargs)
        if isinstance(self.train_dataset, StreamingMixture):
            # First, so the stream position is in the checkpoint before anything copies it away.
            self.callback_handler.callbacks.insert(0, StreamStateCallback())
        self.dataset_names = dataset_names
        self.lengths = lengths
        n = len(dataset_names)
        # Running sums since the last log: per-dataset (loss, tokens), plus throughput counters.
        self._dataset_loss = torch.zeros(n, dtype=torch.float64)
        self._dataset_tokens = torch.zeros(n, dtype=torch.float64)
        self._seen = torch.zeros(2, dtype=torch.float64)  # samples, non-padding tokens
        self._last_log_time = time.perf_counter()

    def _get_train_sampler(self, train_dataset=None):
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            self.lengths,
            batch_size=self.args.train_batch_size * self.args.gradient_accumulation_steps,
            world_size=self.args.world_size,
            seed=self.args.seed,
        )

    def get_train_dataloader(self):
        """A stream shards itself by rank and worker: give it a plain DataLoader, not accelerate's
        (which would make every rank read everything and keep every n-th batch)."""
        from vlm_core.train.streaming import StreamingMixture, StreamLoader

        if not isinstance(self.train_dataset, StreamingMixture):
            return super().get_train_dataloader()
        return StreamLoader(
            self.train_dataset,
            batch_size=self.args.train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def train(self, *args, **kwargs):
        self._last_log_time = time.perf_counter()
        return super().train(*args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the checkpoint of the planned last step (a replica restarted while the
        # final model was being saved): the Trainer's loop would train one step more before it
        # compares the step count with max_steps. Such a run trains nothing.
        if self.state.global_step >= self.state.max_steps:
            return None
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        dataset_index = inputs.pop("dataset_index", None)
        keep, targets = next_token_targets(labels)
        outputs = model(**inputs, logits_to_keep=keep)  # logits of the scored positions only
        losses = target_losses(outputs.logits, targets)
        loss = mean_loss(losses)
        with torch.no_grad():
            attention = inputs.get("attention_mask")
            packed = attention is None and inputs.get("position_ids") is not None
            samples = len(dataset_index) if dataset_index is not None else labels.size(0)
            if dataset_index is not None:
                owners = target_samples(labels, inputs.get("position_ids"), packed)
                token_dataset = dataset_index[owners][keep[:, :-1]]
                self._dataset_loss.index_add_(0, token_dataset.cpu(), losses.detach().cpu().double())
                self._dataset_tokens.index_add_(0, token_dataset.cpu(), torch.ones(len(token_dataset), dtype=torch.float64))
            tokens = attention.sum() if attention is not None else inputs["input_ids"].numel()
            self._seen += torch.tensor([samples, float(tokens)], dtype=torch.float64)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self.model.training:
            logs.update(self._interval_metrics())
        super().log(logs, *args, **kwargs)

    def _interval_metrics(self) -> dict[str, float]:
        """Per-dataset loss and throughput since the last log, summed over all ranks."""
        stats = torch.cat([self._dataset_loss, self._dataset_tokens, self._seen])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            device = self.args.device if torch.distributed.get_backend() == "nccl" else "cpu"
            reduced = stats.to(device)
            torch.distributed.all_reduce(reduced)
            stats = reduced.cpu()
        n = len(self.dataset_names)
        loss_sums, token_counts, (samples, tokens) = stats[:n], stats[n : 2 * n], stats[2 * n :].tolist()
        now = time.perf_counter()
        elapsed = max(now - self._last_log_time, 1e-9)
        metrics = {"samples_per_sec": round(samples / elapsed, 3), "tokens_per_sec": round(tokens / elapsed, 1)}
        for name, loss_sum, count in zip(self.dataset_names, loss_sums.tolist(), token_counts.tolist()):
            if count > 0:
                metrics[f"loss_{name}"] = round(loss_sum / count, 4)
        self._dataset_loss.zero_()
        self._dataset_tokens.zero_()
        self._seen.zero_()
        self._last_log_time = now
        return metrics
