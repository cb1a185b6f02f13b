"""Next-token loss that computes logits only where a target is scored.

In LLaVA-style data most positions carry no target: the image tokens (576 per image for
LLaVA-1.5), the system prompt and every question. A causal LM still projects all of them onto
the vocabulary, and those (batch x length x vocab) floats, kept for backward, outgrow the
model's activations at real vocabularies (Qwen's is 152k). transformers' LLMs accept a boolean
``logits_to_keep`` mask, so the projection runs on the scored positions alone; the loss is
unchanged, because the skipped logits had no target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_core.data.templates import IGNORE_INDEX


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)``: which positions predict a scored token, and those tokens.

    ``keep`` is a ``(batch, length)`` bool mask (position ``t`` is kept when label ``t + 1`` is
    scored; the last position never is), ready to pass as ``logits_to_keep``; ``targets`` holds
    the predicted labels in the row-major order of ``hidden_states[keep]``.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = shifted != IGNORE_INDEX
    return keep, shifted[keep]


def target_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each kept position, ``(num_targets,)``, computed in fp32."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def mean_loss(losses: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """The loss transformers' causal LMs report: per-target losses summed and divided by their
    count (or by ``num_items_in_batch``, the Trainer's count across gradient-accumulation steps).
    A batch with no target gives 0, not NaN."""
    count = num_items_in_batch if num_items_in_batch is not None else max(losses.numel(), 1)
    return losses.sum() / count
