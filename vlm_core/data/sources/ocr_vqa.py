"""OCR-VQA (book covers) as question-answer samples.

Published layout: ``dataset.json``, one JSON object keyed by the book's id::

    {"761183272": {"imageURL": "http://ecx.images-amazon.com/images/I/61Y5cOdHJbL.jpg",
                   "questions": ["Who wrote this book?", ...], "answers": ["Sandra Boynton", ...],
                   "title": ..., "authorName": ..., "genre": ..., "split": 1}, ...}

``split`` is 1 (train), 2 (val) or 3 (test). Its download script saves each cover as
``images/<id><extension of imageURL>``; LLaVA's copy names every one ``<id>.jpg`` although some
are GIFs. So images are found by id (one listing of the folder, whatever the extension) and
their bytes are sniffed when staged, never trusted by name. Every ``turns_per_sample`` pairs of
one book make one sample.
"""

from __future__ import annotations

from typing import Any

from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import register_reader
from vlm_core.data.sources.chunked import ChunkedRecordSource
from vlm_core.data.sources.jsonscan import iter_object
from vlm_core.data.types import BadSample, RawSample

SPLITS = {"train": 1, "val": 2, "test": 3}


class OcrVqaSource(ChunkedRecordSource):
    def __init__(self, spec: DatasetSpec) -> None:
        from tqdm import tqdm

        super().__init__(spec.url)
        self.url, self.turns = spec.url, spec.turns_per_sample
        self.image_root = spec.image_root if spec.image_root is not None else storage.join(storage.parent(spec.url), "images")
        wanted = SPLITS[spec.split] if spec.split is not None else None
        self.ids: list[str] = []
        with storage.open_url(spec.url, "rb") as f:
            for offset, book_id, book in tqdm(iter_object(f), desc=f"indexing {spec.url}", unit=" books", disable=None, leave=False):
                pairs = list(zip(book.get("questions") or [], book.get("answers") or [])) if isinstance(book, dict) else []
                self._rows += len(pairs)
                if wanted is not None and book.get("split") != wanted:
                    continue
                for start in range(0, len(pairs), self.turns):
                    chunk = pairs[start : start + self.turns]
                    self.ids.append(f"{book_id}-{start}")
                    self._add_sample(offset, start, sum(len(str(q).split()) + len(str(a).split()) for q, a in chunk))
        self._image_names: dict[str, str] | None = None

    def _image_name(self, book_id: str) -> str | None:
        if self._image_names is None:  # one listing, on first use (a worker lists for itself)
            fs, path = storage.filesystem(self.image_root)
            names = fs.ls(path, detail=False) if fs.isdir(path) else []
            self._image_names = {}
            for name in sorted(names):
                base = name.rstrip("/").rsplit("/", 1)[-1]
                self._image_names.setdefault(base.rsplit(".", 1)[0], base)
        return self._image_names.get(book_id)

    def __getitem__(self, index: int) -> RawSample:
        sample_id = self.ids[index]
        book_id = sample_id.rsplit("-", 1)[0]
        book, start = self._record(index)
        pairs = list(zip(book["questions"], book["answers"]))[start : start + self.turns]
        turns = []
        for question, answer in pairs:
            if str(question).strip() and str(answer).strip():
                turns += [{"from": "human", "value": str(question)}, {"from": "gpt", "value": str(answer)}]
        if not turns:
            raise BadSample("no_answer", "no question with a non-empty answer", sample_id=sample_id)
        name = self._image_name(book_id)
        if name is None:
            raise BadSample("missing_image", f"no image named {book_id}.* in {self.image_root}", sample_id=sample_id)
        meta: dict[str, Any] = {k: book.get(k) for k in ("title", "authorName", "genre", "split")}
        return RawSample(id=sample_id, images=[storage.join(self.image_root, name)], conversations=turns, meta=meta)


register_reader("ocr_vqa", OcrVqaSource, options={"turns_per_sample"}, splits=tuple(SPLITS))
