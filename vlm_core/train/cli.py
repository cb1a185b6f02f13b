"""`vlm train` and `vlm export`."""

from __future__ import annotations

import click

from vlm_core.config import STAGE_NAMES


@click.command("train")
@click.option("--config", "config_url", required=True, help="Run config YAML (any fsspec URL).")
@click.option("--stage", required=True, type=click.Choice(STAGE_NAMES))
@click.option("--resume", default=None, help="'auto' continues from the newest checkpoint; or a checkpoint path.")
@click.option("--max-steps", type=int, default=None, help="Override the stage's length (smoke runs).")
def train_command(config_url: str, stage: str, resume: str | None, max_steps: int | None) -> None:
    """Train one STAGE of a run config (run it under torchrun for several processes)."""
    import logging

    from vlm_core.config import ConfigError, load_config
    from vlm_core.train.run import train_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(config_url)
        cfg.stage(stage)
        if max_steps is not None:
            cfg = cfg.with_overrides({f"stages.{stage}.max_steps": max_steps}, source="--max-steps")
        # Building the model checks its parts too (e.g. a Qwen v1 LLM that must be imported first).
        url = train_stage(cfg, stage, resume=resume)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    click.echo(url)


@click.command("export")
@click.option("--checkpoint", required=True, help="A stage output (full model or LoRA adapter).")
@click.option("--out", "out_url", required=True, help="Where to write the exported, self-contained checkpoint.")
@click.option("--merge-lora/--no-merge-lora", default=True, help="Fold LoRA adapters into the weights.")
@click.option("--format", "fmt", default="vlm", show_default=True,
              help="vlm: this project's self-contained checkpoint; llava-hf: transformers' Llava (vLLM, SGLang, pipelines).")
def export_command(checkpoint: str, out_url: str, merge_lora: bool, fmt: str) -> None:
    """Export a checkpoint as one model folder (LoRA merged)."""
    from vlm_core.train.export import export_checkpoint

    try:
        click.echo(export_checkpoint(checkpoint, out_url, merge_lora=merge_lora, fmt=fmt))
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err).strip('"')) from None
