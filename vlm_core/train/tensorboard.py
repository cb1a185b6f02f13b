"""TensorBoard scalars for a stage, on rank 0, under `<output>/tensorboard/<stage>`.

Event files are written to a local folder and mirrored to the run's URL after every log when
that URL is object storage, so TensorBoard (which reads s3:// itself) sees training as it goes.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from vlm_core import storage

# Trainer log keys -> TensorBoard tags
_TAGS = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm",
         "samples_per_sec": "train/samples_per_sec", "tokens_per_sec": "train/tokens_per_sec"}


class TensorBoardLogger(TrainerCallback):
    def __init__(self, url: str, local_dir: str) -> None:
        self.url = url
        self.local_dir = local_dir
        self._writer = None

    def _tag(self, key: str) -> str | None:
        if key in _TAGS:
            return _TAGS[key]
        if key.startswith("loss_"):
            return f"train/loss/{key.removeprefix('loss_')}"
        return None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.local_dir, exist_ok=True)
            self._writer = SummaryWriter(self.local_dir)
        for key, value in logs.items():
            tag = self._tag(key)
            if tag is not None and isinstance(value, (int, float)):
                self._writer.add_scalar(tag, value, state.global_step)
        self._writer.flush()
        self._mirror()

    def on_train_end(self, args, state, control, **kwargs):
        if self._writer is not None:
            self._writer.close()
            self._mirror()

    def _mirror(self) -> None:
        if not storage.is_local(self.url):
            storage.upload_dir(self.local_dir, self.url)
