"""Acceptance: `vlm stage --config` of a directory holding every published format, to a real S3
API (moto), reports exact per-source counts and reasons; a re-run uploads nothing new."""

from __future__ import annotations

import boto3
import yaml
from click.testing import CliRunner

from operators.staging_cli import stage_command
from tests import published_datasets as layouts
from vlm_core.data.report import REASON_LABELS


def _mixed_config(root: str, output: str) -> tuple[dict, dict[str, dict]]:
    vg = layouts.visual_genome(root)
    datasets = {
        "llava_mix": ({"url": layouts.llava_mix(f"{root}/llava")}, layouts.LLAVA_MIX, "llava_json"),
        "llava_pretrain": ({"url": layouts.llava_pretrain(f"{root}/pretrain"), "image_root": f"{root}/pretrain/images"}, layouts.LLAVA_PRETRAIN, "llava_json"),
        "synthdog_zh": ({"url": layouts.synthdog(root, "zh"), "format": "synthdog", "language": "zh"}, layouts.SYNTHDOG, "synthdog"),
        "cc3m": ({"url": layouts.img2dataset(root), "format": "webdataset"}, layouts.IMG2DATASET, "webdataset"),
        "vg_vqa": ({"url": vg["vqa"], "format": "visual_genome"}, layouts.VG_QA, "visual_genome"),
        "vg_regions": ({"url": vg["referring"], "format": "visual_genome"}, layouts.VG_REGIONS, "visual_genome"),
        "vg_objects": ({"url": vg["grounded_caption"], "format": "visual_genome", "box_format": "qwen_vl"}, layouts.VG_OBJECTS, "visual_genome"),
        "ocr_vqa": ({"url": layouts.ocr_vqa(root), "format": "ocr_vqa"}, layouts.OCR_VQA, "ocr_vqa"),
    }
    names = list(datasets)
    cfg = {
        "output": output,
        "data": {"datasets": {name: spec for name, (spec, _, _) in datasets.items()}},
        "stages": {
            "align": {"datasets": names[:4], "trainable": ["projector"], "max_steps": 1},
            "instruct": {"datasets": names[4:], "trainable": ["llm"], "max_steps": 1},
        },
    }
    return cfg, {name: {**want, "format": fmt} for name, (_, want, fmt) in datasets.items()}


def _versions(bucket: str) -> list[tuple[str, str]]:
    listing = boto3.client("s3").list_object_versions(Bucket=bucket)
    return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []))


def test_stage_a_mixed_directory_to_s3_reports_exact_counts_and_uploads_nothing_twice(tmp_path, s3_bucket):
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    cfg, expected = _mixed_config(str(tmp_path / "raw"), f"{s3_bucket}/run")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))

    first = CliRunner().invoke(stage_command, ["--config", str(config), "--report", "--workers", "2"])
    assert first.exit_code == 0, first.output
    reasons = sorted({r for want in expected.values() for r in want.get("skipped", {})})
    lines = first.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("dataset "))
    assert lines[header].split() == ["dataset", "format", "rows", "selected", "written",
                                     *" ".join(REASON_LABELS[r] for r in reasons).split()]
    table = {line.split()[0]: line.split() for line in lines[header + 2 : header + 2 + len(expected)]}
    for name, want in expected.items():
        skipped = want.get("skipped", {})
        selected = want["written"] + sum(len(ids) for ids in skipped.values())
        assert table[name] == [name, want["format"], str(want["rows"]), str(selected), str(want["written"]),
                               *(str(len(skipped.get(r, []))) for r in reasons)], name
        for reason, ids in skipped.items():
            assert f"{name}: {REASON_LABELS[reason]}: {', '.join(ids)}" in lines
    objects = _versions(bucket)
    assert {key.split("/")[2] for key, _ in objects} == set(expected)

    again = CliRunner().invoke(stage_command, ["--config", str(config), "--report"])
    assert again.exit_code == 0, again.output
    rerun = [line for line in again.output.splitlines() if line]
    report = [line for line in lines[header:] if line]
    assert rerun[next(i for i, line in enumerate(rerun) if line.startswith("dataset ")) :] == report  # the same report
    assert _versions(bucket) == objects  # not one object written again
