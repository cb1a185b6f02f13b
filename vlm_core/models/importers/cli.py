"""`vlm import FORMAT SRC OUT`."""

from __future__ import annotations

import click

DTYPES = ("auto", "float32", "bfloat16", "float16")


@click.command("import")
@click.argument("fmt", metavar="FORMAT")  # checked against IMPORTERS (importing it here would load torch for `vlm --help`)
@click.argument("src")
@click.argument("out")
@click.option("--vision-tower", default=None, help="llava: the vision tower (path or id) instead of the config's mm_vision_tower.")
@click.option("--llm", default=None, help="llava: the LLM a stage-1 mm_projector.bin was trained with.")
@click.option("--template", default=None, help="Conversation template of the imported model (default: the format's).")
@click.option("--image-aspect", type=click.Choice(["square", "pad"]), default=None, help="Default: the format's.")
@click.option("--only", type=click.Choice(["vision", "llm"]), default=None,
              help="qwen-vl: write one part alone, for a run config's model.vision / model.llm name_or_path.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
              help="Precision of the written weights; auto keeps the LLM's.")
def import_command(fmt, src, out, vision_tower, llm, template, image_aspect, only, dtype) -> None:
    """Convert a published checkpoint SRC of FORMAT into a checkpoint at OUT.

    FORMAT: llava (original LLaVA-1.5 folders, or a stage-1 mm_projector.bin with --llm), llava-hf
    (transformers' Llava folders), qwen-vl (Qwen-VL / CodeFuse-VLM folders; a Qwen v1 LLM alone
    becomes a transformers Qwen2 folder). OUT then works with `vlm chat`, `vlm eval run` and as a
    stage's init_from.
    """
    import logging

    import torch

    from vlm_core.config import ConfigError
    from vlm_core.models.importers import ImportOptions, import_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = ImportOptions(vision_tower=vision_tower, llm=llm, template=template, image_aspect=image_aspect, only=only)
    try:
        url = import_checkpoint(fmt, src, out, options, dtype=None if dtype == "auto" else getattr(torch, dtype))
    except (ValueError, KeyError, FileNotFoundError, ConfigError) as err:
        raise click.ClickException(str(err).strip('"')) from None
    click.echo(url)
