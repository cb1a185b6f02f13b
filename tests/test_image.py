"""The training image runs the shipped configs: what each one needs, the Dockerfile installs.

The image is not built here (no Docker daemon); its contents are read from the Dockerfile: the
runtime stage's ``pip install`` lines (torch, the DeepSpeed wheel, the package itself with its
pyproject dependencies) and what those require. A config's needs come from its settings, and the
attention table is proved against transformers: an implementation that needs a package which is
not installed fails at model load, as the first stage on a cluster would.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
import typing
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from transformers import AutoModelForCausalLM, LlamaConfig

from pipelines.chart_values import REPO_DIR, example_run
from vlm_core.config import LLMConfig, ModelConfig, RunConfig, load_config
from vlm_core.models import build_vlm
from vlm_core.models.tokenizer import train_bpe_tokenizer

DOCKERFILE = REPO_DIR / "Dockerfile"
SHIPPED = {p.name: load_config(p) for p in sorted((REPO_DIR / "configs").glob("*.yaml"))} | {"chart": example_run()}

# llm.attn_implementation -> the distribution transformers needs for it (sdpa and eager: torch).
ATTENTION_PACKAGES = {"flash_attention_2": "flash-attn"}
# Imported only by commands that run from a clone, never in the image.
CLONE_ONLY_MODULES = {
    "helm_python": "vlm pipeline manifests renders the chart",
    "kubernetes_validate": "vlm pipeline validate",
    "moto": "the local S3 server of tests and `--s3` runs",
}


# ----------------------------------------------------------------------------- the image


def _runtime_stage(text: str) -> list[str]:
    """The final stage's instructions, continuation lines joined."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return [line.strip() for line in lines[starts[-1] :] if line.strip() and not line.startswith("#")]


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.MULTILINE))


def _pip_targets(stage: list[str]) -> list[str]:
    """What the stage's ``pip install`` commands name (options and their values left out)."""
    targets = []
    for line in stage:
        if not line.startswith("RUN "):
            continue
        for command in line.removeprefix("RUN ").split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"]:
                continue
            skip = False
            for word in words[2:]:
                if skip:
                    skip = False
                elif word.startswith("-"):
                    skip = word in ("--index-url", "-i", "--extra-index-url", "-c", "-r")
                else:
                    targets.append(word)
    return targets


def _closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, as installed in this environment."""
    env = default_environment() | {"extra": ""}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return seen


def image_distributions() -> set[str]:
    text = DOCKERFILE.read_text()
    names = set()
    for target in _pip_targets(_runtime_stage(text)):
        if target == ".":
            project = _pyproject()["project"]
            names |= {project["name"], *(Requirement(r).name for r in project["dependencies"])}
        elif target.endswith(".whl"):
            names.add(Path(target).name.split("-")[0])
        else:
            names.add(Requirement(target.split("$")[0].rstrip("=")).name)
    return _closure(names)


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO_DIR / "pyproject.toml").read_text())


# ----------------------------------------------------------------------------- what a config needs


def _urls(cfg: RunConfig) -> list[str]:
    urls = [cfg.output, *(d.url for d in cfg.data.datasets.values())]
    urls += [v for spec in cfg.eval.data.values() for v in spec.model_dump().values() if isinstance(v, str)]
    return urls


def config_requirements(cfg: RunConfig) -> dict[str, str]:
    """Distribution -> the setting of ``cfg`` that needs it."""
    needs = {"vlm-platform": "every run", "torch": "every run"}
    attention = cfg.model.llm.attn_implementation
    if attention in ATTENTION_PACKAGES:
        needs[ATTENTION_PACKAGES[attention]] = f"model.llm.attn_implementation: {attention}"
    if cfg.distributed.deepspeed != "none":
        needs["deepspeed"] = f"distributed.deepspeed: {cfg.distributed.deepspeed}"
    if any(u.startswith(("s3://", "s3a://")) for u in _urls(cfg)):
        needs["s3fs"] = "s3:// locations"
    if any(d.format == "parquet" or d.url.endswith(".parquet") for d in cfg.data.datasets.values()):
        needs["pyarrow"] = "parquet datasets"
    return needs


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_image_installs_what_each_shipped_config_needs(name):
    installed = image_distributions()
    missing = {dist: why for dist, why in config_requirements(SHIPPED[name]).items() if canonicalize_name(dist) not in installed}
    assert not missing, f"{name} needs {missing}, which the Dockerfile does not install"


def test_gpu_configs_get_a_cuda_build_of_torch():
    text = DOCKERFILE.read_text()
    args = _args(text)
    gpu = [n for n, cfg in SHIPPED.items() if cfg.cluster.resources.gpus_per_node > 0]
    assert gpu, "the real configs ask for GPUs"
    assert re.search(r"/cu\d+$", args["TORCH_INDEX"]), args["TORCH_INDEX"]
    assert _runtime_stage(text)[0].startswith("FROM nvidia/cuda:")
    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0], "the image's torch is the one tested here"


def test_the_image_reads_what_the_dockerfile_says():
    """The parser sees the runtime stage's installs, not the build stage's tools."""
    assert _pip_targets(_runtime_stage(DOCKERFILE.read_text()))[:2] == ["torch==${TORCH_VERSION}", "/wheels/deepspeed-*.whl"]
    installed = image_distributions()
    assert {"torch", "deepspeed", "vlm-platform", "transformers", "kubernetes", "tensorboard"} <= installed
    assert "wheel" not in installed  # a tool of the DeepSpeed build stage only


def test_every_module_the_package_imports_is_in_the_image():
    installed = image_distributions()
    provided = metadata.packages_distributions()
    missing = {}
    for package in ("vlm_core", "operators", "pipelines"):
        for path in (REPO_DIR / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for module in {n.split(".")[0] for n in names}:
                    if module in sys.stdlib_module_names or module in ("vlm_core", "operators", "pipelines"):
                        continue
                    dists = {canonicalize_name(d) for d in provided.get(module, [module])}
                    if not dists & installed and module not in CLONE_ONLY_MODULES:
                        missing.setdefault(module, str(path.relative_to(REPO_DIR)))
    assert not missing, f"imported but not installed in the image: {missing}"


# ----------------------------------------------------------------------------- the attention table is real


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A Llama checkpoint and tokenizer written by transformers' own save_pretrained."""
    folder = tmp_path_factory.mktemp("llama")
    tokenizer = train_bpe_tokenizer(["what colour is the shape?", "red", "circle"], 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ATTENTIONS = typing.get_args(typing.get_args(LLMConfig.model_fields["attn_implementation"].annotation)[0])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_an_attention_loads_unless_its_package_is_missing(attention, tiny_llama):
    """Each allowed ``attn_implementation`` loads a pretrained LLM here, or fails for want of exactly
    the package the table names (so the table misses no implementation that needs one)."""
    cfg = ModelConfig.model_validate({
        "vision": {"encoder": "clip", "config": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                   "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}},
        "llm": {"name_or_path": str(tiny_llama), "attn_implementation": attention},
    })  # fmt: skip
    package = ATTENTION_PACKAGES.get(attention)
    if package is None or _is_installed(package):
        model, _ = build_vlm(cfg, template="vicuna_v1", image_aspect="pad")
        assert model.language_model.config._attn_implementation == attention
    else:
        with pytest.raises(ImportError, match="(?i)installed"):
            build_vlm(cfg, template="vicuna_v1", image_aspect="pad")


def _is_installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True
