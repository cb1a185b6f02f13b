"""Training pieces that need no model: presets, sampler, per-sample loss."""

from __future__ import annotations

import itertools

import torch

from vlm_core.data.packing import make_packing_collator
from vlm_core.models.loss import mean_loss, next_token_targets, target_losses
from vlm_core.train.deepspeed_presets import DEEPSPEED_PRESETS, deepspeed_config
from vlm_core.train.sampler import ModalityLengthGroupedSampler
from vlm_core.train.trainer import target_samples


def test_presets_defer_numbers_to_the_trainer_and_gather_on_save():
    assert deepspeed_config("none") is None
    for name in DEEPSPEED_PRESETS:
        cfg = deepspeed_config(name)
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"
        assert cfg["zero_optimization"]["stage"] in (2, 3)
    assert deepspeed_config("zero3")["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_param" in deepspeed_config("zero3_offload")["zero_optimization"]
    # a copy each time: a Trainer filling "auto" must not change the preset
    deepspeed_config("zero2")["zero_optimization"]["stage"] = 99
    assert deepspeed_config("zero2")["zero_optimization"]["stage"] == 2


def test_grouped_sampler_is_a_deterministic_permutation_with_modality_pure_batches():
    lengths = [10, -5, 30, -7, 12, 8, -3, 40, 22, 5, -9, 17]
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))
    assert first == list(ModalityLengthGroupedSampler(lengths, 2, 2, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != first
    # every full mega-batch (4 indices) holds one modality only
    for start in range(0, 8, 4):
        signs = {lengths[i] > 0 for i in first[start : start + 4]}
        assert len(signs) == 1


def test_targets_are_the_next_scored_labels_in_row_major_order():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 5]])
    keep, targets = next_token_targets(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [3, 4, 1, 2, 6, 5]
    losses = target_losses(logits[keep], targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3], labels[0, 2:4], reduction="sum")
    assert torch.allclose(losses[:2].sum(), expected)
    # nothing scored: loss 0, not NaN
    keep, targets = next_token_targets(torch.full((1, 5), -100))
    assert not keep.any() and mean_loss(target_losses(logits[:1][keep], targets)).item() == 0.0


def _sample(n: int, dataset: int) -> dict:
    ids = torch.arange(1, n + 1)
    return {"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.zeros(0, 3, 4, 4), "dataset_index": dataset}


def test_per_dataset_targets_follow_samples_in_packed_rows():
    batch = make_packing_collator(pad_token_id=0, max_tokens=None)([_sample(3, 0), _sample(4, 1), _sample(2, 0)])
    owners = target_samples(batch["labels"], batch["position_ids"], packed=True)
    datasets = batch["dataset_index"][owners][batch["labels"][:, 1:] != -100]
    # each sample's first token is never a target: 2 + 3 + 1 scored targets
    assert sorted(datasets.tolist()) == [0, 0, 0, 1, 1, 1]
    padded = target_samples(torch.zeros(2, 5, dtype=torch.long), None, packed=False)
    assert padded.tolist() == [[0] * 4, [1] * 4]


def test_warmup_stable_decay_holds_the_rate_until_the_last_decay_steps(tmp_path, monkeypatch):
    """The stage config reaches the Trainer's own scheduler: linear warmup, flat, then a decay to 0
    over exactly `decay_steps` (the quickstart's letters come in the flat part)."""
    from accelerate import PartialState
    from transformers import Trainer

    from vlm_core.config import parse_config
    from vlm_core.train.run import StagePaths, init_distributed, training_arguments

    cfg = parse_config({
        "data": {"datasets": {"caps": {"url": "data/align.jsonl"}}},
        "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "learning_rate": 1e-3,
                             "max_steps": 100, "warmup_steps": 10, "lr_scheduler": "warmup_stable_decay",
                             "decay_steps": 30}},
        "distributed": {"deepspeed": "none"},
    })
    paths = StagePaths(str(tmp_path), str(tmp_path), str(tmp_path / "tb"), str(tmp_path / "tb"))
    from vlm_core.ports import free_port

    world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for name, value in world.items():
        monkeypatch.setenv(name, value)
    init_distributed(cfg)  # what train_stage does first: the arguments reuse accelerate's state
    try:
        args = training_arguments(cfg, cfg.stage("align"), paths, on_cuda=False)
        trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
    finally:
        PartialState._reset_state()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    rates = []
    for _ in range(100):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[0] < rates[9] < 1e-3
    assert all(abs(r - 1e-3) < 1e-12 for r in rates[10:70])
    assert all(a > b for a, b in itertools.pairwise(rates[70:]))
    assert rates[99] < 1e-5
