"""Reading and writing weight files in the layouts checkpoints are published in.

A checkpoint folder holds ``model.safetensors`` or ``pytorch_model.bin``, or shards of either
named by an ``*.index.json`` (``weight_map``: key -> shard file). Tensors are read shard by shard
and only for the keys asked for, so converting a 14B model never holds it twice in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import torch

from vlm_core.models.importers.base import UnsupportedCheckpoint

# The files transformers looks for, in its order of preference.
_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(path: str) -> list[str]:
    """The weight files of a checkpoint folder (or the file itself, e.g. LLaVA's ``mm_projector.bin``)."""
    if os.path.isfile(path):
        return [path]
    for name in _INDEX:
        index = os.path.join(path, name)
        if os.path.exists(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(path, shard) for shard in shards]
    for name in _SINGLE:
        if os.path.exists(os.path.join(path, name)):
            return [os.path.join(path, name)]
    raise FileNotFoundError(
        f"{path} holds no weights (looked for {', '.join(_INDEX + _SINGLE)})"
    )


def _read_file(path: str, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys() if keep(key)}  # noqa: SIM118 (safe_open is not iterable)
    # weights_only: a pickle from the internet never runs code here
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {key: value for key, value in state.items() if keep(key)}


def weight_keys(path: str) -> set[str]:
    """Every tensor name of a checkpoint (safetensors headers only; pickles are memory-mapped)."""
    keys: set[str] = set()
    for file in weight_files(path):
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(file, framework="pt", device="cpu") as f:
                keys.update(f.keys())
        else:
            keys.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return keys


def iter_shards(path: str, keep: Callable[[str], bool] = lambda key: True) -> Iterator[dict[str, torch.Tensor]]:
    """One ``{key: tensor}`` per weight file, holding the kept keys."""
    for file in weight_files(path):
        yield _read_file(file, keep)


def read_tensors(path: str, keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
    """Every kept tensor of a checkpoint in one dict (for the small parts: projectors, vision towers)."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in iter_shards(path, keep):
        tensors.update(shard)
    return tensors


def write_sharded(shards: Iterator[dict[str, torch.Tensor]], folder: str) -> None:
    """Write converted shards, one at a time, in transformers' sharded safetensors layout (files + index)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    keys_per_file: list[list[str]] = []
    total = 0
    for shard in shards:
        if not shard:
            continue
        keys_per_file.append(sorted(shard))
        total += sum(value.numel() * value.element_size() for value in shard.values())
        save_file({k: v.contiguous() for k, v in shard.items()}, os.path.join(folder, f"part-{len(keys_per_file)}.tmp"),
                  metadata={"format": "pt"})
    count = len(keys_per_file)
    if count == 1:
        os.replace(os.path.join(folder, "part-1.tmp"), os.path.join(folder, _SINGLE[0]))
        return
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(keys_per_file, start=1):
        name = f"model-{i:05d}-of-{count:05d}.safetensors"
        os.replace(os.path.join(folder, f"part-{i}.tmp"), os.path.join(folder, name))
        weight_map.update(dict.fromkeys(keys, name))
    with open(os.path.join(folder, _INDEX[0]), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def check_complete(config, keys: set[str], src: str) -> None:
    """Every weight the transformers model expects is there (it would silently initialise a missing one)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(config).state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - keys)
    if missing:
        raise UnsupportedCheckpoint(f"{src} lacks the LLM weights {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
