"""Run one training stage: the same code path for `vlm train`, torchrun and a PyTorchJob replica.

    align     only the projector learns, on image–caption pairs (template `plain`)
    instruct  projector + LLM (vision optional) learn on conversations, from align's output
    full      one stage, everything configured as trainable

Checkpoints go to `<output>/<stage>/checkpoints/checkpoint-<step>` and the final, self-contained
model to `<output>/<stage>`. With object-storage outputs the Trainer works in a local folder
that is mirrored to the URL after each save, and `--resume auto` fetches the newest checkpoint
back when the local folder lacks it (a rescheduled pod starts empty).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlm_core import storage
from vlm_core.config import RunConfig, StageConfig
from vlm_core.train.streaming import StreamingMixture, first_samples, is_streaming

log = logging.getLogger("vlm.train")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TOKENIZER_CORPUS_LIMIT = 20_000  # samples: enough for the tiny BPE, cheap for big corpora


@dataclass(frozen=True)
class StagePaths:
    """Where a stage writes: URLs for users, local folders for the Trainer."""

    url: str
    local: str
    tensorboard_url: str
    tensorboard_local: str

    @property
    def checkpoints_local(self) -> str:
        return os.path.join(self.local, "checkpoints")

    @property
    def checkpoints_url(self) -> str:
        return storage.join(self.url, "checkpoints")

    @classmethod
    def for_stage(cls, cfg: RunConfig, stage: str) -> StagePaths:
        url, tb_url = cfg.stage_output(stage), cfg.tensorboard_dir(stage)
        if storage.is_local(url):
            return cls(url, storage.local_path(url), tb_url, storage.local_path(tb_url))
        cache = Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm")) / "runs" / cfg.name
        return cls(url, str(cache / stage), tb_url, str(cache / "tensorboard" / stage))


# ----------------------------------------------------------------------------- distributed set-up


def _ensure_process_group_env() -> None:
    """DeepSpeed always wants a process group; give a plain `vlm train` a world of one."""
    from vlm_core.ports import free_port

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def init_distributed(cfg: RunConfig):
    """Create accelerate's state first: on CPU the Trainer must reuse a gloo group (docs/ARCHITECTURE.md, "Training")."""
    import torch
    from accelerate import PartialState

    _ensure_process_group_env()
    if cfg.distributed.deepspeed != "none":
        # accelerate marks its state as DeepSpeed's only when told so before it is created.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    # Without DeepSpeed and CUDA, accelerate calls a torchrun world "not distributed" (no DDP, no
    # barriers) unless told it is a CPU world; with DeepSpeed that flag would hide DeepSpeed, and a
    # world of one needs no process group.
    cpu_ddp = (cfg.distributed.deepspeed == "none" and not torch.cuda.is_available()
               and int(os.environ["WORLD_SIZE"]) > 1)
    return PartialState(cpu=cpu_ddp, backend=backend)


# ----------------------------------------------------------------------------- data and model


def _template_name(cfg: RunConfig, stage: StageConfig) -> str:
    return stage.template or cfg.data.template


def _special_tokens(cfg: RunConfig) -> list[str]:
    """Every template this run uses: a tokenizer made in `align` must serve `instruct` too."""
    from vlm_core.data.templates import get_template

    names = {cfg.data.template} | {s.template for s in cfg.stages.values() if s.template}
    tokens: list[str] = []
    for name in sorted(names):
        tokens += [t for t in get_template(name).special_tokens if t not in tokens]
    return tokens


def _open_sources(cfg: RunConfig, names: list[str]):
    from vlm_core.data.readers import open_source

    return {name: (open_source(cfg.data.datasets[name]), cfg.data.datasets[name].weight) for name in names}


def _template_texts(cfg: RunConfig) -> list[str]:
    """The fixed text of every template in use (system prompts, role tags), so an on-the-fly
    tokenizer spends few tokens on boilerplate."""
    from vlm_core.data.templates import get_template

    names = {cfg.data.template} | {s.template for s in cfg.stages.values() if s.template}
    return [text for name in sorted(names - {"tokenizer"}) for text in get_template(name).fixed_texts()]


def _tokenizer_texts(cfg: RunConfig, sources) -> list[str]:
    wanted = cfg.model.tokenizer.train_corpus or list(sources)
    texts = _template_texts(cfg)
    for name in wanted:
        source = sources[name][0] if name in sources else _open_sources(cfg, [name])[name][0]
        for sample in first_samples(source, TOKENIZER_CORPUS_LIMIT):
            texts += [turn["value"] for turn in sample.conversations]
    return texts


def build_model_for_stage(cfg: RunConfig, stage_name: str, sources):
    """The stage's starting model and processor: from `init_from`, or built from the model config."""
    from vlm_core.models.builder import build_vlm
    from vlm_core.models.checkpoint import load_checkpoint

    stage = cfg.stage(stage_name)
    template = _template_name(cfg, stage)
    init = cfg.resolve_init(stage_name)
    if init:
        if not storage.exists(storage.join(init, "config.json")):
            raise FileNotFoundError(f"stage {stage_name!r} starts from {init}, which holds no checkpoint; run that stage first")
        model, processor = load_checkpoint(init)
    else:
        model, processor = build_vlm(
            cfg.model,
            template=template,
            image_aspect=cfg.data.image_aspect,
            tokenizer_texts=_tokenizer_texts(cfg, sources),
            special_tokens=_special_tokens(cfg),
        )
    processor.template = template
    processor.image_aspect = cfg.data.image_aspect
    return model, processor


def build_dataset(cfg: RunConfig, stage: StageConfig, processor, sources, cache_root: str | None = None, state=None):
    """A map-style mixture of random-access sources, or a stream when any source is staged shards.
    With ``data.cache`` the samples are encoded first, by the local ranks together, under ``cache_root``."""
    from vlm_core.data.encoding import SampleEncoder
    from vlm_core.data.mixture import MixtureDataset
    from vlm_core.data.templates import get_template

    encoder = SampleEncoder(
        processor,
        get_template(_template_name(cfg, stage)),
        max_length=cfg.data.max_length,
        image_aspect=cfg.data.image_aspect,
        strict=cfg.data.strict,
    )
    if cfg.data.cache != "none" and cache_root is not None:
        from vlm_core.data.cache import cached_encoder, dataset_fingerprint

        specs = {name: cfg.data.datasets[name] for name in sources}
        encoder = cached_encoder(
            encoder,
            {name: source for name, (source, _) in sources.items()},
            {name: dataset_fingerprint(spec.url, spec.image_root) for name, spec in specs.items()},
            cache_root,
            mode=cfg.data.cache,
            part=state.local_process_index,
            parts=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
            barrier=state.wait_for_everyone,
        )
    if any(is_streaming(source) for source, _ in sources.values()):
        # Streams group by length within each window of blocks, from the staged length index.
        indexed = all(not is_streaming(s) or hasattr(s, "lengths") for s, _ in sources.values())
        grouped = stage.group_by_modality_length and not cfg.data.packing and indexed
        return StreamingMixture(sources, encoder, seed=stage.seed, group_by_length=stage.per_device_batch_size if grouped else None)
    return MixtureDataset(sources, encoder, seed=stage.seed)


def build_collator(cfg: RunConfig, processor):
    pad_id = processor.tokenizer.pad_token_id
    if cfg.data.packing:
        from vlm_core.data.packing import make_packing_collator

        # flash-attention finds sample boundaries only in a single packed row
        single_row = cfg.model.llm.attn_implementation == "flash_attention_2"
        return make_packing_collator(pad_token_id=pad_id, max_tokens=None if single_row else cfg.data.max_length)
    from vlm_core.data.collate import VLMCollator

    return VLMCollator(pad_token_id=pad_id)


# ----------------------------------------------------------------------------- checkpoints


def newest_checkpoint(folder: str) -> str | None:
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return None
    steps = []
    for entry in fs.ls(path, detail=False):
        match = CHECKPOINT_RE.match(entry.rstrip("/").rsplit("/", 1)[-1])
        # A checkpoint is complete once the Trainer wrote its state file (it does so last).
        if match and fs.exists(f"{entry.rstrip('/')}/trainer_state.json"):
            steps.append((int(match.group(1)), entry.rstrip("/").rsplit("/", 1)[-1]))
    return storage.join(folder, max(steps)[1]) if steps else None


def find_resume_checkpoint(paths: StagePaths, state) -> str | None:
    """Newest complete local checkpoint, fetched from object storage first when it is newer there."""
    local = newest_checkpoint(paths.checkpoints_local)
    if storage.is_local(paths.url):
        return local
    remote = newest_checkpoint(paths.checkpoints_url)
    step = lambda p: int(CHECKPOINT_RE.match(p.rstrip("/").rsplit("/", 1)[-1]).group(1)) if p else -1
    if remote and step(remote) > step(local):
        target = os.path.join(paths.checkpoints_local, remote.rstrip("/").rsplit("/", 1)[-1])
        if state.is_local_main_process:
            fs, path = storage.filesystem(remote)
            fs.get(path.rstrip("/") + "/", target + "/", recursive=True)
        state.wait_for_everyone()
        return target
    return local


def _mirror_callback(paths: StagePaths):
    from transformers import TrainerCallback

    class MirrorCheckpoints(TrainerCallback):
        """Copy each saved checkpoint to object storage (every node: ZeRO shards are per rank)."""

        def on_save(self, args, state, control, **kwargs):
            name = f"checkpoint-{state.global_step}"
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                storage.upload_dir(os.path.join(paths.checkpoints_local, name), storage.join(paths.checkpoints_url, name))

    return MirrorCheckpoints()


# ----------------------------------------------------------------------------- the stage


def training_arguments(cfg: RunConfig, stage: StageConfig, paths: StagePaths, on_cuda: bool):
    from transformers import TrainingArguments

    from vlm_core.train.deepspeed_presets import deepspeed_config

    length = {"max_steps": stage.max_steps} if stage.max_steps else {"num_train_epochs": stage.epochs}
    return TrainingArguments(
        output_dir=paths.checkpoints_local,
        per_device_train_batch_size=stage.per_device_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay,
        adam_beta1=stage.adam_betas[0],
        adam_beta2=stage.adam_betas[1],
        lr_scheduler_type=stage.lr_scheduler,
        lr_scheduler_kwargs={"num_decay_steps": stage.decay_steps} if stage.decay_steps else {},
        warmup_steps=stage.warmup_steps or stage.warmup_ratio,
        max_grad_norm=stage.max_grad_norm,
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        bf16=stage.bf16,
        gradient_checkpointing=stage.gradient_checkpointing,
        deepspeed=deepspeed_config(cfg.distributed.deepspeed),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=cfg.data.num_workers,
        dataloader_pin_memory=on_cuda,
        seed=stage.seed,
        average_tokens_across_devices=False,
        accelerator_config={"use_configured_state": True},
        # Without DeepSpeed, DDP must skip what never reaches the loss (e.g. CLIP's pooler norm).
        ddp_find_unused_parameters=cfg.distributed.deepspeed == "none",
        **length,
    )


def train_stage(cfg: RunConfig, stage_name: str, resume: str | None = None) -> str:
    """Train one stage; returns the URL of its final checkpoint."""
    import torch

    from vlm_core.train.parts import count_parameters, prepare_parts
    from vlm_core.train.tensorboard import TensorBoardLogger
    from vlm_core.train.trainer import VLMTrainer

    stage = cfg.stage(stage_name)
    done = _completed_output(cfg, stage_name)
    if done is not None:
        return done
    state = init_distributed(cfg)
    paths = StagePaths.for_stage(cfg, stage_name)
    # Arguments before the model: with ZeRO-3 they install the HfDeepSpeedConfig that makes
    # from_config / from_pretrained build partitioned parameters.
    args = training_arguments(cfg, stage, paths, on_cuda=torch.cuda.is_available())

    sources = _open_sources(cfg, stage.datasets)
    model, processor = build_model_for_stage(cfg, stage_name, sources)
    model = prepare_parts(model, stage)
    trainable, total = count_parameters(model)
    if state.is_main_process:
        log.info("stage %s: %s trainable of %s parameters (%s)", stage_name, f"{trainable:,}", f"{total:,}", ", ".join(stage.trainable))

    # The encoded-sample cache sits next to the stages' local folders: reused by a restart.
    dataset = build_dataset(cfg, stage, processor, sources, os.path.join(os.path.dirname(paths.local), "cache"), state)
    callbacks = [TensorBoardLogger(paths.tensorboard_url, paths.tensorboard_local)]
    if not storage.is_local(paths.url):
        callbacks.append(_mirror_callback(paths))
    trainer = VLMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=build_collator(cfg, processor),
        callbacks=callbacks,
        dataset_names=list(dataset.dataset_names),
        lengths=dataset.lengths if _groups_by_length(stage, cfg, dataset) else None,
    )
    checkpoint = None
    if resume == "auto":
        checkpoint = find_resume_checkpoint(paths, state)
        if state.is_main_process:
            log.info("resuming from %s", checkpoint or "scratch (no checkpoint yet)")
    elif resume:
        checkpoint = resume
    if checkpoint and isinstance(dataset, StreamingMixture):
        _seek_stream(trainer, dataset, checkpoint, cfg.data.num_workers)
    trainer.train(resume_from_checkpoint=checkpoint)
    _report_bad_samples(dataset, state)

    _save_final_model(cfg, stage_name, trainer, processor, paths, state)
    return paths.url


def _completed_output(cfg: RunConfig, stage_name: str) -> str | None:
    """The stage's output URL when it already carries this config's completion marker: a replica
    restarted after the stage finished (e.g. killed at the last barrier) has nothing to do."""
    from vlm_core.completion import read_marker, stage_fingerprint

    url = cfg.stage_output(stage_name)
    marker = read_marker(url)
    if marker is None or marker.get("fingerprint") != stage_fingerprint(cfg, stage_name):
        return None
    log.info("stage %s is complete (%s at step %s): nothing to train", stage_name, url, marker.get("global_step"))
    return url


def _save_final_model(cfg: RunConfig, stage_name: str, trainer, processor, paths: StagePaths, state) -> None:
    """Write the final model, then (last, atomically) the completion marker the orchestrator
    waits for: a stage whose final save was interrupted has no marker and is resumed."""
    from vlm_core.completion import stage_fingerprint, write_marker

    # save_model must run on every rank: under ZeRO-3 it gathers the partitioned weights.
    trainer.save_model(paths.local)
    if state.is_main_process:
        processor.save_pretrained(paths.local)
        if cfg.stage(stage_name).lora is not None:
            _point_adapter_at_base(paths.local, cfg.resolve_init(stage_name))
        if not storage.is_local(paths.url):
            storage.upload_dir(paths.local, paths.url)
        step = trainer.state.global_step
        write_marker(paths.url, stage_name, stage_fingerprint(cfg, stage_name), global_step=step, checkpoint=paths.url)
        log.info("stage %s finished at step %d: %s", stage_name, step, paths.url)
    state.wait_for_everyone()


def _point_adapter_at_base(folder: str, base_url: str | None) -> None:
    """A LoRA stage's output names the checkpoint it adapts by URL (peft wrote a local path)."""
    import json

    if base_url is None:
        log.warning("LoRA on a randomly initialised model: export needs the base, which was never saved")
        return
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        adapter = json.load(f)
    adapter["base_model_name_or_path"] = base_url
    with open(path, "w") as f:
        json.dump(adapter, f, indent=2)


def _seek_stream(trainer, dataset: StreamingMixture, checkpoint: str, workers: int) -> None:
    """Continue the stream where the checkpoint left it (no sample consumed before is read
    again), instead of the Trainer re-reading and dropping the batches of the resumed epoch."""
    from vlm_core.train.streaming import load_data_state

    state = load_data_state(checkpoint, dataset, workers)
    if state is None:
        log.info("no stream position in %s for this rank and world size: the consumed batches are re-read", checkpoint)
        return
    dataset.resume = state
    trainer.args.ignore_data_skip = True
    log.info("stream seeks to epoch %d, batch %d (no sample before it is read)", state["epoch"], state["batches"])


def _groups_by_length(stage: StageConfig, cfg: RunConfig, dataset) -> bool:
    return stage.group_by_modality_length and not cfg.data.packing and not isinstance(dataset, StreamingMixture)


def _report_bad_samples(dataset, state) -> None:
    """Skipped samples of every rank, summed, in one line per dataset on rank 0."""
    import torch.distributed as dist

    from vlm_core.data.types import BadSampleStats

    stats = dataset.bad_stats
    if dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, stats.to_dict())
        stats = BadSampleStats()
        for counts in gathered:
            stats.merge(BadSampleStats.from_dict(counts))
    if state.is_main_process and stats.total:
        log.warning("%s", stats.summary())
