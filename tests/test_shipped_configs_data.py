"""Every shipped config's datasets, in the layouts they name: a tiny dataset is written where each
`data.datasets` entry points (the config's URLs with the bucket moved to a temporary folder), the
config's staging step stages it, and it reads back through the staged config's entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from operators.staging import stage_config
from tests import published_datasets as layouts
from vlm_core import storage
from vlm_core.config import DatasetSpec, load_config
from vlm_core.data.readers import open_source

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def _quickstart_jsonl(url: str) -> str:
    """vlm synth's layout: a LLaVA JSONL whose images sit under the dataset folder."""
    root = storage.parent(url)
    lines = []
    for i in range(3):
        storage.write_bytes_atomic(storage.join(root, f"images/{i}.png"), layouts.image((i * 70, 0, 0), (32, 32), "PNG"))
        conv = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
        lines.append(json.dumps({"id": str(i), "image": f"images/{i}.png", "conversations": conv}))
    storage.write_text_atomic(url, "\n".join(lines) + "\n")
    return url


def _write(spec: DatasetSpec) -> str:
    """The published layout that ``spec`` names, written at ``spec.url``; returns the URL the writer made."""
    name, parent = spec.url.rstrip("/").rsplit("/", 1)[-1], storage.parent(spec.url)
    if spec.format == "synthdog":
        return layouts.synthdog(parent, spec.language)
    if spec.format == "webdataset":
        return layouts.img2dataset(parent, name)
    if spec.format == "visual_genome":
        return layouts.visual_genome(storage.parent(parent))[{"question_answers.json": "vqa", "region_descriptions.json": "referring",
                                                              "objects.json": "grounded_caption"}[name]]
    if spec.format == "ocr_vqa":
        return layouts.ocr_vqa(storage.parent(parent))
    if name == "blip_laion_cc_sbu_558k.json":
        return layouts.llava_pretrain(parent)
    if name == "llava_v1_5_mix665k.json":
        return layouts.llava_mix(parent)
    if name.endswith(".jsonl"):
        return _quickstart_jsonl(spec.url)
    raise AssertionError(f"no published-layout writer for {spec}")


def _moved(url: str | None, tmp: Path) -> str | None:
    if url is None:
        return None
    return str(tmp / url.split("://", 1)[-1]) if "://" in url else str(tmp / "local" / url)


@pytest.mark.parametrize("config", CONFIGS)
def test_each_shipped_config_stages_and_reads_back_its_datasets(tmp_path, config):
    cfg = load_config(REPO / "configs" / config)
    overrides = {"output": str(tmp_path / "run")}
    for name, spec in cfg.data.datasets.items():
        assert spec.format != "shards", f"{config}: {name} should name its published source; staging makes the shards"
        overrides[f"data.datasets.{name}.url"] = _moved(spec.url, tmp_path)
        overrides[f"data.datasets.{name}.image_root"] = _moved(spec.image_root, tmp_path)
    cfg = cfg.with_overrides(overrides, source=config)
    for spec in cfg.data.datasets.values():
        assert _write(spec) == spec.url, "the config names the published layout's own file or folder"
    used = {n for stage in cfg.stages.values() for n in stage.datasets}
    assert used == set(cfg.data.datasets), f"{config}: every dataset is read by some stage"

    staged, manifests = stage_config(cfg, workers=2, progress=False)
    for name, manifest in manifests.items():
        spec = staged.data.datasets[name]
        assert spec.format == "shards" and manifest.total_samples > 0, name
        samples = list(open_source(spec).iter_samples(shuffle=False))
        assert len(samples) == manifest.total_samples
        assert all(any(t["from"] == "gpt" and t["value"].strip() for t in s.conversations) for s in samples), name
