"""Readers of published corpora, one module per format; importing this package registers them
in ``vlm_core.data.readers.READERS``."""

from vlm_core.data.sources import ocr_vqa, synthdog, visual_genome, webdataset  # noqa: F401
