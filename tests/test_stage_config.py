"""The staging step of a run (`operators.staging.stage_config`): every dataset a stage reads goes to
``<output>/data/<name>``; a re-run with unchanged sources reads and uploads nothing."""

from __future__ import annotations

import json

import boto3
from click.testing import CliRunner

from operators.staging import stage_config, stage_dataset
from operators.staging_cli import stage_command
from vlm_core import storage
from vlm_core.config import DatasetSpec, parse_config
from vlm_core.data.readers import open_source


def _jsonl(root: str, n: int, tag: str) -> str:
    lines = []
    for i in range(n):
        name = f"images/{tag}{i}.png"
        storage.write_bytes_atomic(storage.join(root, name), _png(i))
        conv = [{"from": "human", "value": f"<image>\nwhat is {tag}{i}?"}, {"from": "gpt", "value": f"{tag} {i}"}]
        lines.append(json.dumps({"id": f"{tag}{i}", "image": name, "conversations": conv}))
    url = storage.join(root, f"{tag}.jsonl")
    storage.write_text_atomic(url, "\n".join(lines) + "\n")
    return url


def _png(i: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 20 % 256, 9, 90)).save(buf, "PNG")
    return buf.getvalue()


def _config(output: str, datasets: dict) -> object:
    return parse_config(
        {
            "output": output,
            "data": {"datasets": datasets},
            "stages": {
                "align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 1},
                "instruct": {"datasets": ["chat", "ready"], "trainable": ["llm"], "max_steps": 1},
            },
        }
    )


def _versions(bucket_url: str) -> list[tuple[str, str]]:
    client = boto3.client("s3")
    listing = client.list_object_versions(Bucket=bucket_url.removeprefix("s3://"))
    return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []))


def test_stage_config_stages_each_used_dataset_once_and_adopts_it_after(tmp_path, s3_bucket):
    boto3.client("s3").put_bucket_versioning(
        Bucket=s3_bucket.removeprefix("s3://"), VersioningConfiguration={"Status": "Enabled"}
    )
    raw = str(tmp_path / "raw")
    ready = stage_dataset(DatasetSpec(url=_jsonl(raw, 3, "r")), f"{s3_bucket}/ready", progress=False)
    cfg = _config(
        f"{s3_bucket}/run",
        {
            "caps": {"url": _jsonl(raw, 5, "c"), "weight": 2.0},
            "chat": {"url": _jsonl(raw, 4, "q")},
            "ready": {"url": f"{s3_bucket}/ready/manifest.json", "format": "shards", "weight": 0.5},
            "unused": {"url": str(tmp_path / "missing.jsonl")},  # no stage reads it: never opened
        },
    )

    staged, manifests = stage_config(cfg, workers=2, progress=False)
    assert sorted(manifests) == ["caps", "chat"]
    assert {n: m.total_samples for n, m in manifests.items()} == {"caps": 5, "chat": 4}
    for name in ("caps", "chat"):
        spec = staged.data.datasets[name]
        assert spec.url == f"{s3_bucket}/run/data/{name}" and spec.format == "shards"
        assert spec.weight == cfg.data.datasets[name].weight
        assert len(open_source(spec)) == manifests[name].total_samples
    assert staged.data.datasets["ready"] == cfg.data.datasets["ready"]
    assert staged.data.datasets["unused"] == cfg.data.datasets["unused"]
    assert len(open_source(staged.data.datasets["ready"])) == ready.total_samples
    # the returned config is a whole, valid config: staging it again stages nothing
    assert stage_config(staged, progress=False) == (staged, {})

    # A re-run from the original config: the images are gone, so reading the source again would
    # lose samples; nothing is read and no object gets a new version.
    before = _versions(s3_bucket)
    for image in (tmp_path / "raw" / "images").iterdir():
        image.unlink()
    again, manifests_again = stage_config(cfg, workers=2, progress=False)
    assert again == staged and manifests_again == manifests
    assert _versions(s3_bucket) == before

    # A changed source, or changed staging options, is staged again.
    _jsonl(raw, 6, "c")
    _, manifests_changed = stage_config(cfg, progress=False)
    assert manifests_changed["caps"].total_samples == 6
    assert manifests_changed["chat"] == manifests["chat"]
    moved = cfg.with_overrides({"data.datasets.chat.image_root": str(tmp_path / "elsewhere")})
    _, manifests_moved = stage_config(moved, progress=False)
    assert manifests_moved["chat"].total_samples == 0 and manifests_moved["chat"].skipped_samples == {"missing_image": 4}


def test_vlm_stage_config_stages_through_stage_config(tmp_path):
    raw = str(tmp_path / "raw")
    cfg = _config(
        str(tmp_path / "run"),
        {"caps": {"url": _jsonl(raw, 2, "c")}, "chat": {"url": _jsonl(raw, 3, "q")}, "ready": {"url": _jsonl(raw, 1, "r")}},
    )
    config = tmp_path / "run.yaml"
    config.write_text(cfg.to_yaml())
    result = CliRunner().invoke(stage_command, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    for name, n in (("caps", 2), ("chat", 3), ("ready", 1)):
        assert f"{name}: {n} samples" in result.output
        assert len(open_source(DatasetSpec(url=str(tmp_path / "run" / "data" / name)))) == n
