"""The one run config: a pydantic model that drives the CLI, the PyTorchJobs, the Helm chart and
the KFP pipeline. Its JSON Schema (``vlm config schema``) is generated from here, never rewritten.

Loading errors name the field, the bad value and what is allowed, e.g.::

    stages.align.learning_rate: Input should be greater than 0 (got -1)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlm_core.train.deepspeed_presets import DEEPSPEED_PRESETS

Stage = Literal["align", "instruct", "full"]
STAGE_NAMES: tuple[str, ...] = get_args(Stage)
TrainablePart = Literal["vision", "projector", "llm"]
# "none" is plain DDP; every other name is a registered preset (one list, never retyped).
DeepSpeedPreset = Literal[("none", *DEEPSPEED_PRESETS.names())]  # type: ignore[valid-type]


class _Section(BaseModel):
    # Unknown keys are typos far more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------------------- model


class VisionConfig(_Section):
    """A vision encoder: a registry name plus weights (hub id / path) or a random-init config."""

    encoder: str = Field(
        "clip",
        description="Registry name of the encoder family: clip, siglip, chinese_clip, dinov2, "
        "qwen_vl_vit, or auto (any transformers vision model by path).",
    )
    name_or_path: str | None = Field(
        None, description="Hub id or path of pretrained weights; null builds random weights from `config`."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the encoder's transformers config (random init or pretrained)."
    )
    feature_layer: int | None = Field(
        None,
        description="Hidden-state layer whose features feed the projector; default: the encoder family's "
        "(-2 as LLaVA for CLIP-like towers; -1 for qwen_vl_vit, which feeds its last block to the resampler).",
    )
    feature_select: Literal["patch", "cls_patch"] = "patch"
    image_size: int | None = Field(
        None, gt=0, description="Input resolution; default: the encoder's own config (qwen_vl_vit as released: 448)."
    )
    position_init_std: float | None = Field(
        None,
        gt=0,
        description="Random towers only: std of the position-embedding table at init; default: the family's own "
        "init (CLIP's 0.02 starts position at about 1/50 of a 16-px patch's embedding, so a tiny tower learns it last).",
    )

    @model_validator(mode="after")
    def _position_init_needs_random_tower(self) -> VisionConfig:
        if self.position_init_std is not None and self.name_or_path is not None:
            raise ValueError(
                "model.vision.position_init_std sets a random tower's initial position embeddings, but "
                f"name_or_path ({self.name_or_path}) loads trained ones: remove position_init_std"
            )
        return self


class ProjectorConfig(_Section):
    type: str = Field(
        "mlp2x_gelu", description="linear, identity, mlp{N}x_gelu (e.g. mlp2x_gelu), or cross_attn (Qwen-VL resampler)."
    )
    num_queries: int = Field(256, gt=0, description="cross_attn: learned queries = image tokens per image.")
    num_heads: int | None = Field(
        None, gt=0, description="cross_attn: attention heads; default: LLM width // 128, as Qwen-VL and CodeFuse-VLM."
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        import re

        if value in ("linear", "identity", "cross_attn") or re.fullmatch(r"mlp[1-9]\d*x_gelu", value):
            return value
        raise ValueError(f"unknown projector type {value!r}; allowed: linear, identity, mlp{{N}}x_gelu, cross_attn")


class LLMConfig(_Section):
    name_or_path: str | None = Field(
        None,
        description="Hub id or path of any AutoModelForCausalLM; null: random from `config`. Checkpoints "
        "transformers cannot load (Qwen v1, original LLaVA) are converted first with `vlm import`.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="transformers config overrides; must name model_type for random init."
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None


class TokenizerConfig(_Section):
    name_or_path: str | None = Field(None, description="Tokenizer id or path; default: the LLM's.")
    train_vocab_size: int = Field(
        512, gt=0, description="When no tokenizer is given: size of the byte-level BPE trained on the fly."
    )
    train_corpus: list[str] = Field(
        default_factory=list,
        description="Dataset names (from data.datasets) whose texts train the on-the-fly tokenizer; default: all.",
    )


class ModelConfig(_Section):
    vision: VisionConfig = VisionConfig()
    projector: ProjectorConfig = ProjectorConfig()
    llm: LLMConfig = LLMConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    seed: int = Field(0, description="Seed of random initialisation and of the on-the-fly tokenizer.")


# ----------------------------------------------------------------------------- data


def _reader_names_schema(schema: dict[str, Any]) -> None:
    # The allowed formats are the READERS registry's names, looked up when the schema is made
    # (importing the readers here would be circular), so the schema never retypes them.
    from vlm_core.data.readers import READERS

    schema["enum"] = ["auto", *READERS.names()]


class DatasetSpec(_Section):
    """One dataset of a run: where it is, which reader reads it, and how much of it to use."""

    url: str = Field(
        description="The dataset: a file (.json, .jsonl, .parquet, question_answers.json, dataset.json ...) or a "
        "folder (parquet files, img2dataset tar shards, a staged dataset's manifest.json)."
    )
    image_root: str | None = Field(None, description="URL that relative image paths resolve against; default: the url's folder.")
    format: str = Field(
        "auto",
        description="Reader (vlm_core.data.readers.READERS); auto tells .json/.jsonl/.parquet and staged folders apart.",
        json_schema_extra=_reader_names_schema,
    )
    weight: float = Field(1.0, gt=0, description="Relative sampling weight when several datasets are mixed.")
    limit: int | None = Field(None, gt=0, description="Keep a seeded random subset of at most this many samples.")
    fraction: float | None = Field(None, gt=0, le=1, description="Keep a seeded random subset of this fraction of the samples.")
    seed: int = Field(0, description="Seed of the downsampling and of prompts chosen from a list.")
    split: str | None = Field(None, description="Keep only this split (ocr_vqa: train/val/test; synthdog: train/validation).")
    box_format: Literal["llava", "qwen_vl"] = Field(
        "llava",
        description="visual_genome boxes: llava = LLaVA-1.5's [x1, y1, x2, y2] relative to the padded square image; "
        "qwen_vl = Qwen-VL's <ref>..</ref><box>(x1,y1),(x2,y2)</box> on 0-1000.",
    )
    turns_per_sample: int = Field(
        1, gt=0, description="visual_genome / ocr_vqa: question-answer pairs (or regions) of one image per sample."
    )
    language: Literal["en", "zh"] = Field("en", description="synthdog: language of the OCR prompts.")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from vlm_core.data.readers import READERS

        if value != "auto" and value not in READERS:
            raise ValueError(f"unknown dataset format {value!r}; allowed: auto, {', '.join(READERS.names())}")
        return value

    @model_validator(mode="after")
    def _options_fit_the_format(self) -> DatasetSpec:
        from vlm_core.data.readers import reader_options

        if self.limit is not None and self.fraction is not None:
            raise ValueError("give at most one of limit and fraction")
        if self.format == "auto":
            return self
        accepted, splits = reader_options(self.format)
        for name in sorted(FORMAT_OPTIONS - accepted):
            if getattr(self, name) != type(self).model_fields[name].default:
                takers = ", ".join(_formats_taking(name)) or "none"
                raise ValueError(f"{name} does not apply to format {self.format!r} (formats that take it: {takers})")
        if self.split is not None:
            if not splits:
                raise ValueError(f"format {self.format!r} has no splits; remove split")
            if self.split not in splits:
                raise ValueError(f"unknown split {self.split!r} for format {self.format!r}; allowed: {', '.join(splits)}")
        return self


# Fields of DatasetSpec that only some readers understand (each reader declares which).
FORMAT_OPTIONS = frozenset({"box_format", "turns_per_sample", "language"})


def _formats_taking(option: str) -> list[str]:
    from vlm_core.data.readers import READERS, reader_options

    return [name for name in READERS.names() if option in reader_options(name)[0]]


class DataConfig(_Section):
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict)
    template: str = Field("vicuna_v1", description="Conversation template (registry name).")
    image_aspect: Literal["square", "pad"] = Field("pad", description="square: resize; pad: LLaVA's pad-to-square with the mean colour.")
    max_length: int = Field(2048, gt=0, description="Longest token sequence; longer samples are skipped and counted.")
    strict: bool = Field(False, description="Make the first bad sample an error instead of skipping it.")
    num_workers: int = Field(0, ge=0)
    cache: Literal["none", "tokens", "full"] = Field(
        "none",
        description="Encode each sample once per run, before training (`vlm_core/data/cache.py`): "
        "tokens = ids and labels; full = also the pixels (3 x H x W float32 per distinct image, on local disk).",
    )
    packing: bool = Field(False, description="Padding-free packing of several samples per sequence.")
    synthesize: str | None = Field(
        None,
        description="A folder URL: the staging step first writes the synthetic dataset there (`vlm synth`) "
        "unless it holds one already, so a run needs no data prepared by hand (smoke runs, fresh clusters).",
    )


# ----------------------------------------------------------------------------- stages


class LoraConfig(_Section):
    r: int = Field(64, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class StageConfig(_Section):
    datasets: list[str] = Field(description="Names from data.datasets mixed in this stage (weights from there).")
    template: str | None = Field(None, description="Overrides data.template (alignment uses `plain`).")
    trainable: list[TrainablePart] = Field(description="Parts that learn in this stage.")
    init_from: str | None = Field(
        None, description="A stage name (its output under `output`) or a checkpoint URL to start from."
    )
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "warmup_stable_decay"] = "cosine"
    decay_steps: int | None = Field(
        None, gt=0,
        description="warmup_stable_decay only: the last steps, in which the learning rate anneals to 0 "
        "(cosine); it holds at learning_rate from the warmup's end until then. A run shorter than warmup + "
        "decay (e.g. a --max-steps smoke run) ends inside the decay, as transformers' WSD does.",
    )
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0)
    per_device_batch_size: int = Field(16, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    bf16: bool = False
    group_by_modality_length: bool = True
    lora: LoraConfig | None = None
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0, description="Checkpoints kept (oldest removed).")
    seed: int = 42

    @model_validator(mode="after")
    def _length_given(self) -> StageConfig:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of epochs or max_steps")
        if not self.trainable:
            raise ValueError("trainable must name at least one of vision, projector, llm")
        if (self.lr_scheduler == "warmup_stable_decay") != (self.decay_steps is not None):
            raise ValueError("decay_steps goes with lr_scheduler: warmup_stable_decay, and that scheduler needs it")
        return self


# ----------------------------------------------------------------------------- distributed, eval, cluster


class DistributedConfig(_Section):
    deepspeed: DeepSpeedPreset = Field("zero2", description="DeepSpeed preset; none runs plain DDP.")
    nodes: int = Field(1, gt=0)
    procs_per_node: int = Field(1, gt=0, description="torchrun --nproc-per-node (GPUs per node on a cluster).")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl with CUDA, gloo without.")


class BenchmarkSpec(_Section):
    """Where one benchmark's published files live (keys depend on the benchmark), and its prompt."""

    questions: str | None = None
    annotations: str | None = None
    images: str | None = None
    prompt: str | None = Field(
        None,
        description="Prompt registry id (vlm_core/eval/prompts.py); default: the benchmark's LLaVA-1.5 prompt. "
        "textvqa_val defaults to llava15_textvqa_ocr (with OCR reference tokens); llava15_short_answer asks without.",
    )


class EvalConfig(_Section):
    """Evaluation after training: greedy decoding with the checkpoint's template, LLaVA-1.5's
    prompts, the official scorers (README, "Evaluation")."""

    benchmarks: list[str] = Field(default_factory=list, description="Benchmark registry names to run after instruct.")
    data: dict[str, BenchmarkSpec] = Field(default_factory=dict, description="Per-benchmark file locations.")
    checkpoint: str | None = Field(None, description="Default: the last trained stage's output.")
    limit: int | None = Field(None, gt=0, description="Score only the first N questions (smoke runs).")
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(128, gt=0, description="Greedy decoding stops at the template's end token or here (LLaVA-1.5: 128).")


class ResourceConfig(_Section):
    gpus_per_node: int = Field(0, ge=0)
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = Field("8Gi", description="Size of the memory-backed /dev/shm (dataloader workers, NCCL).")


class StorageConfig(_Section):
    s3_endpoint: str | None = Field(None, description="Endpoint URL of S3-compatible storage (not a secret).")
    s3_secret: str | None = Field(
        None, description="Name of the Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (read by secretKeyRef)."
    )
    pvc: str | None = Field(None, description="PersistentVolumeClaim mounted at `pvc_mount` for checkpoints and data.")
    pvc_mount: str = "/mnt/vlm"


class SchedulingConfig(_Section):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class: str | None = None
    queue: str | None = Field(None, description="Gang-scheduling queue (Volcano / scheduler-plugins).")
    gang: bool = Field(False, description="Ask the operator for gang scheduling (schedulingPolicy).")


class ClusterConfig(_Section):
    """How the stages run on Kubernetes. Plain data: vlm_core never talks to a cluster."""

    image: str = "ghcr.io/vlm-platform/vlm-platform:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "vlm"
    service_account: str = "vlm-launcher"
    resources: ResourceConfig = ResourceConfig()
    storage: StorageConfig = StorageConfig()
    scheduling: SchedulingConfig = SchedulingConfig()
    restart_policy: Literal["OnFailure", "ExitCode", "Never", "Always"] = "OnFailure"
    backoff_limit: int = Field(3, ge=0)
    clean_pod_policy: Literal["None", "Running", "All"] = "None"
    ttl_seconds_after_finished: int | None = Field(86400, ge=0)
    active_deadline_seconds: int | None = Field(None, gt=0)
    elastic_min_nodes: int | None = Field(None, gt=0, description="Enable elasticPolicy with this many nodes at least.")


# ----------------------------------------------------------------------------- the run config


class RunConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)] = Field(
        "vlm-run", description="Run name (a DNS label: it names the PyTorchJobs)."
    )
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    stages: dict[Stage, StageConfig] = Field(default_factory=dict)
    distributed: DistributedConfig = DistributedConfig()
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig = ClusterConfig()
    output: str = Field("runs/vlm-run", description="URL under which checkpoints, TensorBoard logs and eval results go.")

    @model_validator(mode="after")
    def _references_resolve(self) -> RunConfig:
        for stage_name, stage in self.stages.items():
            for ds in stage.datasets:
                self._require_dataset(f"stages.{stage_name}.datasets", ds)
            if stage.init_from in STAGE_NAMES and stage.init_from not in self.stages:
                raise ValueError(f"stages.{stage_name}.init_from names stage {stage.init_from!r}, which is not configured")
        for ds in self.model.tokenizer.train_corpus:
            self._require_dataset("model.tokenizer.train_corpus", ds)
        return self

    def _require_dataset(self, where: str, name: str) -> None:
        if name not in self.data.datasets:
            known = ", ".join(sorted(self.data.datasets)) or "none defined"
            raise ValueError(f"{where} names {name!r}, which is not in data.datasets (known: {known})")

    # -- paths derived from `output`, in one place so every layer agrees

    def stage_output(self, stage: str) -> str:
        from vlm_core.storage import join

        return join(self.output, stage)

    def tensorboard_dir(self, stage: str) -> str:
        from vlm_core.storage import join

        return join(self.output, "tensorboard", stage)

    def eval_output(self) -> str:
        from vlm_core.storage import join

        return join(self.output, "eval")

    def stage(self, name: str) -> StageConfig:
        if name not in self.stages:
            raise ConfigError(f"stage {name!r} is not configured; configured: {', '.join(self.stages) or 'none'}")
        return self.stages[name]

    def resolve_init(self, stage: str) -> str | None:
        """The checkpoint URL a stage starts from (a stage name resolves to that stage's output)."""
        init = self.stage(stage).init_from
        if init in STAGE_NAMES:
            return self.stage_output(init)
        return init

    def last_stage(self) -> str:
        order = [s for s in ("full", "align", "instruct") if s in self.stages]
        if not order:
            raise ConfigError("no stages configured")
        return order[-1]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False), sort_keys=False)

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> RunConfig:
        """A new config with each ``{"dotted.key": value}`` applied, validated as a whole.

        The one way every layer (CLI flags, the in-cluster driver, the KFP pipeline) changes a
        config: a key that names nothing, or a value the field rejects, is a ``ConfigError``
        naming the key. ``{"stages.align.max_steps": 10}`` also clears ``epochs`` (a stage has
        exactly one length), so a smoke run can shorten any stage.
        """
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(data, key, value, source)
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "stages" and parts[2] in _STAGE_LENGTHS:
                other = next(f for f in _STAGE_LENGTHS if f != parts[2])
                if f"stages.{parts[1]}.{other}" not in overrides:
                    data["stages"][parts[1]][other] = None
        return parse_config(data, source=source)


class ConfigError(ValueError):
    """A run config that cannot be used; the message says which field and why."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML with 1.2's floats: PyYAML (YAML 1.1) reads ``1e-05`` (no dot, as Helm and Go write
    small numbers) as a string, which free-form sections like ``model.llm.config`` pass on as is."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """Parse run-config YAML (any document that may hold a run config: files, parameters, --set)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no arbitrary objects


_STAGE_LENGTHS = ("max_steps", "epochs")


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key`` "a.b.c"; every part but the last must exist."""
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth]) or "the config"
        if part not in node:
            raise ConfigError(f"{source}: {key}: {where} has no {part!r} (it has: {', '.join(sorted(node)) or 'nothing'})")
        if not isinstance(node[part], dict):
            raise ConfigError(f"{source}: {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = node[part]
    node[parts[-1]] = value  # an unknown leaf is reported by validation, with the key


def parse_override(text: str) -> tuple[str, Any]:
    """``"stages.align.max_steps=10"`` -> ``("stages.align.max_steps", 10)``; the value is read as
    YAML (``3`` an int, ``true`` a bool, ``[a, b]`` a list, ``null`` None), like ``helm --set``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. stages.align.max_steps=10)")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {err}") from None
    return key.strip(), value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid run config"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(url: str | Path) -> RunConfig:
    """Load a run config from a YAML file at any fsspec URL."""
    from vlm_core import storage

    url = str(url)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        raise ConfigError(f"{url}: no such config file") from None
    try:
        data = read_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{url}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{url}: a run config is a mapping, got {type(data).__name__}")
    return parse_config(data, source=url)


def json_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
