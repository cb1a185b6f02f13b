"""synthdog (Donut's synthetic documents, e.g. naver-clova-ix/synthdog-en / -zh) as OCR samples.

Published layout (the Hugging Face dataset): parquet files ``data/train-*.parquet`` and
``data/validation-*.parquet`` with columns ``image`` (struct of ``bytes`` / ``path``) and
``ground_truth``, a JSON string ``{"gt_parse": {"text_sequence": "<the text>"}}``. Each row
becomes one exchange: an OCR prompt (from a short list, chosen per row, seeded) and the text.
"""

from __future__ import annotations

import json
from typing import Any

from vlm_core.config import DatasetSpec
from vlm_core.data.readers import ParquetSource, _image_root, parquet_files, register_reader
from vlm_core.data.sources.prompts import OCR_PROMPTS, human_gpt, pick
from vlm_core.data.types import BadSample

SPLITS = ("train", "validation", "test")


class SynthdogSource(ParquetSource):
    def __init__(self, spec: DatasetSpec) -> None:
        files = parquet_files(spec.url) or parquet_files(f"{spec.url.rstrip('/')}/data")
        if spec.split is not None:
            files = [f for f in files if f.rsplit("/", 1)[-1].startswith(f"{spec.split}-")]
        if not files:
            raise FileNotFoundError(f"{spec.url}: no synthdog parquet files" + (f" of split {spec.split!r}" if spec.split else ""))
        self.prompts, self.seed = OCR_PROMPTS[spec.language], spec.seed
        super().__init__(spec.url, _image_root(spec), files=files)

    def _columns(self, schema: Any) -> tuple[list[str], str | None]:
        missing = {"image", "ground_truth"} - set(schema.names)
        if missing:
            raise ValueError(f"{self.url}: synthdog parquet needs columns image and ground_truth; missing {sorted(missing)}")
        return ["ground_truth"], "image"

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        question = pick(self.prompts, self.seed, sample.id)
        sample.conversations = human_gpt(question, sample.conversations[0]["value"])
        return sample

    def _conversations(self, row: dict[str, Any]) -> list[dict[str, str]]:
        # The text alone; __getitem__ adds the prompt (lengths differ by the prompt's few words).
        try:
            text = json.loads(row["ground_truth"])["gt_parse"]["text_sequence"]
        except (TypeError, ValueError, KeyError) as err:
            raise BadSample("malformed", f"ground_truth is not {{'gt_parse': {{'text_sequence': ...}}}}: {err!r}") from None
        if not isinstance(text, str) or not text.strip():
            raise BadSample("no_answer", "empty text_sequence")
        return [{"from": "gpt", "value": text}]


register_reader("synthdog", SynthdogSource, options={"language"}, splits=SPLITS)
