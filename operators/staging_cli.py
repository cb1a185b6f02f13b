"""`vlm stage`: copy datasets into object storage as checksummed shards.

Two forms: ``vlm stage SRC DEST`` stages one dataset described by flags; ``vlm stage --config
FILE`` runs a run config's staging step (``operators.staging.stage_config``), as the orchestrator does.
"""

from __future__ import annotations

import logging
import sys

import click

from operators.staging import DEFAULT_MAX_SHARD_BYTES, DEFAULT_SHARD_SAMPLES


@click.command("stage")
@click.argument("src", required=False)
@click.argument("dest", required=False)
@click.option("--config", "config_url", default=None, help="Stage every dataset this run config's stages read, to <output>/data/<name>.")
@click.option("--image-root", default=None, help="URL that relative image paths resolve against (default: the folder of SRC).")
@click.option("--format", "fmt", default="auto", show_default=True, help="Reader format of SRC (see `vlm config schema`).")
@click.option("--shard-size", "shard_samples", type=click.IntRange(min=1), default=DEFAULT_SHARD_SAMPLES, show_default=True, help="Samples per shard at most.")
@click.option("--max-shard-bytes", type=click.IntRange(min=16 * 2**10), default=DEFAULT_MAX_SHARD_BYTES, show_default=True, help="Bytes per shard at most.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel image reads and shard uploads.")
@click.option("--verify", is_flag=True, help="Afterwards, download every shard again and check its sha256.")
@click.option("--report", is_flag=True, help="Print the per-source table: rows, selected, written, skipped by reason (with ids).")
@click.option("-v", "--verbose", is_flag=True, help="Log every shard uploaded or skipped.")
def stage_command(
    src: str | None, dest: str | None, config_url: str | None, image_root: str | None, fmt: str,
    shard_samples: int, max_shard_bytes: int, workers: int, verify: bool, report: bool, verbose: bool,
) -> None:
    """Stage the dataset SRC (any reader format; any fsspec URL) into DEST, or with --config
    every dataset a run config's stages read.

    DEST (e.g. s3://bucket/datasets/name) receives tar shards and, once all are in place, a
    manifest.json. Re-running skips the shards already there intact (with --config, datasets
    whose source and options are unchanged are not read at all). Credentials come from the
    standard AWS environment variables; the endpoint from AWS_ENDPOINT_URL.
    """
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
            spec = DatasetSpec(url=src, image_root=image_root, format=fmt)
            manifests = {redact_url(dest): stage_dataset(
                spec, dest, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes, workers=workers, verify=verify
            )}
    except (StagingError, ConfigError, FileNotFoundError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    for name, manifest in manifests.items():
        verified = " (verified)" if verify else ""
        click.echo(f"{name}: {manifest.total_samples} samples in {len(manifest.shards)} shards{verified}")
    if report and manifests:
        from vlm_core.data.report import staging_report

        click.echo(staging_report(manifests))
