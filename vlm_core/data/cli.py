"""`vlm data`: look at staged datasets."""

from __future__ import annotations

import click


@click.group("data")
def data_group() -> None:
    """Inspect staged datasets."""


@data_group.command("inspect")
@click.argument("url")
@click.option("--samples", type=click.IntRange(min=0), default=3, show_default=True, help="Samples to decode and print.")
def inspect_command(url: str, samples: int) -> None:
    """Show the staged dataset URL (its folder or manifest.json): counts, skips, a length
    histogram from the length index, and a few samples decoded."""
    from vlm_core.data.report import inspect_text
    from vlm_core.data.shards import ManifestError

    try:
        click.echo(inspect_text(url, samples))
    except (ManifestError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
