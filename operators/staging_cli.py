"""`vlm stage`: copy datasets into object storage as checksummed shards.

Two forms: ``vlm stage SRC DEST`` stages one dataset described by flags; ``vlm stage --config
FILE`` runs a run config's staging step (``operators.staging.stage_config``), as the orchestrator does.
"""

from __future__ import annotations

import logging
import sys

import click

from operators.staging import DEFAULT_MAX_SHARD_BYTES, DEFAULT_SHARD_SAMPLES
from vlm_core.data.readers import READERS


@click.command("stage")
@click.argument("src", required=False)
@click.argument("dest", required=False)
@click.option("--config", "config_url", default=None, help="Stage every dataset this run config's stages read, to <output>/data/<name>.")
@click.option("--image-root", default=None, help="URL that relative image paths resolve against (default: the folder of SRC).")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", *READERS.names()]), help="Reader format of SRC.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Keep a seeded random subset of at most this many samples.")
@click.option("--fraction", type=click.FloatRange(0, 1, min_open=True), default=None, help="Keep this fraction of the samples (seeded).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the downsampling and of prompts picked from a list.")
@click.option("--split", default=None, help="Keep one split (ocr_vqa: train/val/test; synthdog: train/validation).")
@click.option("--box-format", type=click.Choice(["llava", "qwen_vl"]), default=None, help="visual_genome boxes.")
@click.option("--turns-per-sample", type=click.IntRange(min=1), default=None, help="visual_genome / ocr_vqa: pairs per sample.")
@click.option("--language", type=click.Choice(["en", "zh"]), default=None, help="synthdog: language of the OCR prompts.")
@click.option("--max-text-tokens", type=click.IntRange(min=1), default=None, help="Skip samples with more words than this (over length).")
@click.option("--shard-size", "shard_samples", type=click.IntRange(min=1), default=DEFAULT_SHARD_SAMPLES, show_default=True, help="Samples per shard at most.")
@click.option("--max-shard-bytes", type=click.IntRange(min=16 * 2**10), default=DEFAULT_MAX_SHARD_BYTES, show_default=True, help="Bytes per shard at most.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel image reads and shard uploads.")
@click.option("--verify", is_flag=True, help="Afterwards, download every shard again and check its sha256.")
@click.option("--report", is_flag=True, help="Print the per-source table: rows, selected, written, skipped by reason (with ids).")
@click.option("-v", "--verbose", is_flag=True, help="Log every shard uploaded or skipped.")
def stage_command(
    src: str | None, dest: str | None, config_url: str | None, image_root: str | None, fmt: str, limit: int | None,
    fraction: float | None, seed: int, split: str | None, box_format: str | None, turns_per_sample: int | None,
    language: str | None, max_text_tokens: int | None, shard_samples: int, max_shard_bytes: int, workers: int,
    verify: bool, report: bool, verbose: bool,
) -> None:
    """Stage the dataset SRC (any reader format; any fsspec URL) into DEST, or with --config
    every dataset a run config's stages read.

    DEST (e.g. s3://bucket/datasets/name) receives tar shards and, once all are in place, a
    manifest.json. Re-running skips the shards already there intact (with --config, datasets
    whose source and options are unchanged are not read at all). Credentials come from the
    standard AWS environment variables; the endpoint from AWS_ENDPOINT_URL.
    """
    from pydantic import ValidationError

    from operators.staging import StagingError, redact_url, stage_config, stage_dataset
    from vlm_core.config import ConfigError, DatasetSpec, load_config

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("operators").setLevel(logging.DEBUG if verbose else logging.INFO)
    if (config_url is None) == (src is None or dest is None) or (config_url and (src or dest)):
        raise click.UsageError("give SRC and DEST, or --config FILE (not both)")
    try:
        if config_url:
            _, manifests = stage_config(load_config(config_url), workers=workers, verify=verify)
        else:
            options = {"box_format": box_format, "turns_per_sample": turns_per_sample, "language": language}
            spec = DatasetSpec(url=src, image_root=image_root, format=fmt, limit=limit, fraction=fraction, seed=seed, split=split,
                               **{k: v for k, v in options.items() if v is not None})
            manifests = {redact_url(dest): stage_dataset(
                spec, dest, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes, max_text_tokens=max_text_tokens,
                workers=workers, verify=verify,
            )}
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'dataset'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors())
        click.echo(f"error: {problems}", err=True)
        sys.exit(1)
    except (StagingError, ConfigError, FileNotFoundError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    for name, manifest in manifests.items():
        verified = " (verified)" if verify else ""
        click.echo(f"{name}: {manifest.total_samples} samples in {len(manifest.shards)} shards{verified}")
    if report and manifests:
        from vlm_core.data.report import staging_report

        click.echo(staging_report(manifests))
