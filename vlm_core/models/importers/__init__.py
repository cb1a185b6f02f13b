"""`vlm import FORMAT SRC OUT`: published checkpoints -> the project's self-contained checkpoint.

One module per format registers an `Importer` in `IMPORTERS` (`base.py` says what an importer
does). `import_checkpoint` runs it in a work folder, builds the VLM from the parts with
`build_vlm`, loads the projector's weights strictly and writes the checkpoint with
`save_checkpoint`, which `vlm chat`, `vlm eval run` and a stage's ``init_from`` read.
"""

from __future__ import annotations

import logging
import os
import tempfile

import torch

from vlm_core import storage
from vlm_core.models.importers import llava, llava_hf, qwen_vl  # noqa: F401  (each registers its format)
from vlm_core.models.importers.base import (
    IMPORTERS,
    ImportedParts,
    Importer,
    ImportOptions,
    UnsupportedCheckpoint,
)

log = logging.getLogger("vlm.import")

__all__ = ["IMPORTERS", "ImportOptions", "ImportedParts", "Importer", "UnsupportedCheckpoint", "import_checkpoint"]


def _check_options(fmt: str, importer: Importer, options: ImportOptions) -> None:
    unused = sorted(options.given() - importer.options)
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise UnsupportedCheckpoint(f"format {fmt!r} does not take {flags}")


def _write_part(parts: ImportedParts, options: ImportOptions, out: str) -> str:
    """Write one part's folder alone: asked for (``--only``), or the only part there is (an LLM alone)."""
    which = options.only or "llm"
    part = parts.model.vision if which == "vision" else parts.model.llm
    storage.upload_dir(part.name_or_path, out)
    field = f"model.{which}.name_or_path"
    if options.only is None:
        log.info("the checkpoint has no vision weights: wrote the LLM alone (for %s) to %s", field, out)
    else:
        log.info("wrote the %s alone (for %s) to %s", which, field, out)
    return out


def import_checkpoint(fmt: str, src: str, out: str, options: ImportOptions | None = None,
                      dtype: torch.dtype | None = None) -> str:
    """Convert ``src`` (a folder, or LLaVA's ``mm_projector.bin``) of format ``fmt`` into a checkpoint at ``out``.

    The weights keep the LLM's precision unless ``dtype`` is given. Returns ``out``.
    """
    from vlm_core.data.templates import get_template
    from vlm_core.models.builder import build_vlm
    from vlm_core.models.checkpoint import save_checkpoint

    options = options or ImportOptions()
    importer = IMPORTERS.get(fmt)
    _check_options(fmt, importer, options)
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such checkpoint folder or file")
    with tempfile.TemporaryDirectory(prefix="vlm-import-") as work:
        parts = importer.read(os.path.abspath(src), work, options)
        if options.only is not None or not parts.has_vision:
            return _write_part(parts, options, out)
        template = options.template or parts.template
        model, processor = build_vlm(
            parts.model, template=template, image_aspect=options.image_aspect or parts.image_aspect,
            special_tokens=get_template(template).special_tokens,
        )
        model.projector.load_state_dict(parts.projector_state, strict=True)
        model.to(dtype or model.language_model.dtype)
        save_checkpoint(model, processor, out)
    log.info("imported %s checkpoint %s -> %s (template %s, image_aspect %s)", fmt, src, out, template, processor.image_aspect)
    return out
