"""`vlm stage SRC DEST`: copy a dataset into object storage as checksummed shards."""

from __future__ import annotations

import logging
import sys

import click

from operators.staging import DEFAULT_MAX_SHARD_BYTES, DEFAULT_SHARD_SAMPLES


@click.command("stage")
@click.argument("src")
@click.argument("dest")
@click.option("--image-root", default=None, help="URL that relative image paths resolve against (default: the folder of SRC).")
@click.option(
    "--format", "fmt", default="auto", show_default=True,
    type=click.Choice(["auto", "llava_json", "llava_jsonl", "parquet"]), help="Reader format of SRC.",
)
@click.option("--shard-size", "shard_samples", type=click.IntRange(min=1), default=DEFAULT_SHARD_SAMPLES, show_default=True, help="Samples per shard at most.")
@click.option("--max-shard-bytes", type=click.IntRange(min=16 * 2**10), default=DEFAULT_MAX_SHARD_BYTES, show_default=True, help="Bytes per shard at most.")
@click.option("--workers", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel image reads and shard uploads.")
@click.option("--verify", is_flag=True, help="Afterwards, download every shard again and check its sha256.")
@click.option("-v", "--verbose", is_flag=True, help="Log every shard uploaded or skipped.")
def stage_command(src: str, dest: str, image_root: str | None, fmt: str, shard_samples: int, max_shard_bytes: int, workers: int, verify: bool, verbose: bool) -> None:
    """Stage the dataset SRC (LLaVA JSON/JSONL + images, or parquet; any fsspec URL) into DEST.

    DEST (e.g. s3://bucket/datasets/name) receives tar shards and, once all are in place, a
    manifest.json. Re-running skips the shards already there intact. Credentials come from the
    standard AWS environment variables; the endpoint from AWS_ENDPOINT_URL.
    """
    from operators.staging import StagingError, redact_url, stage_dataset
    from vlm_core.config import DatasetSpec

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("operators").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        spec = DatasetSpec(url=src, image_root=image_root, format=fmt)
        manifest = stage_dataset(
            spec, dest, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes, workers=workers, verify=verify
        )
    except (StagingError, FileNotFoundError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"{redact_url(dest)}: {manifest.total_samples} samples in {len(manifest.shards)} shards" + (" (verified)" if verify else ""))
