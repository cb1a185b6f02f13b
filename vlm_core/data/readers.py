"""Dataset readers: the ``READERS`` registry and the LLaVA JSON / JSONL and parquet sources.

Every read goes through fsspec URLs (``vlm_core.storage``), so a dataset on ``s3://`` reads the
same as one on local disk. Readers never load a large file whole: JSON and JSONL keep a
byte-offset index built in one streaming pass and seek to a record; parquet keeps a row-group
index and a small cache of decoded row groups.

The published formats of other corpora (synthdog, img2dataset webdataset, Visual Genome,
OCR-VQA) are one module each under ``vlm_core/data/sources/``; staged shards live in
``shards.py``. All register here. ``open_source`` applies a spec's downsampling (``limit`` /
``fraction``, seeded) to any of them.
"""

from __future__ import annotations

import bisect
import json
import os
from abc import ABC, abstractmethod
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.types import BadSample, ImageRef, RawSample
from vlm_core.registry import Registry


class Source(ABC):
    """A random-access dataset of raw samples."""

    url: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> RawSample: ...

    @abstractmethod
    def modality_lengths(self) -> list[int]:
        """LLaVA's length proxy per sample: word count, positive with images, negative without."""

    @property
    def rows_total(self) -> int:
        """Rows the published files hold, before any split filter or downsampling."""
        return len(self)

    def rows(self) -> Iterator[RawSample | BadSample]:
        """Every sample in order; one that cannot be read comes as its ``BadSample`` (with its id)."""
        for index in range(len(self)):
            try:
                yield self[index]
            except BadSample as bad:
                yield bad if bad.sample_id is not None else bad.located(f"#{index}", self.url)


class Subset(Source):
    """The samples of ``source`` at ``indices`` (sorted: the stored order is kept)."""

    def __init__(self, source: Source, indices: Sequence[int]) -> None:
        self.source, self.indices, self.url = source, list(indices), source.url

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> RawSample:
        return self.source[self.indices[index]]

    @property
    def rows_total(self) -> int:
        return self.source.rows_total

    def modality_lengths(self) -> list[int]:
        lengths = self.source.modality_lengths()
        return [lengths[i] for i in self.indices]


def downsampled(size: int, spec: DatasetSpec) -> list[int] | None:
    """Indices kept by the spec's ``limit`` / ``fraction`` (a seeded random subset, in stored
    order), or ``None`` when everything is kept."""
    import numpy as np

    keep = spec.limit if spec.limit is not None else (round(size * spec.fraction) if spec.fraction is not None else None)
    if keep is None or keep >= size:
        return None
    chosen = np.random.default_rng([spec.seed, size]).choice(size, size=keep, replace=False)
    return sorted(int(i) for i in chosen)


ReaderFn = Callable[[DatasetSpec], Any]
READERS: Registry[ReaderFn] = Registry("dataset format")


def register_reader(name: str, fn: ReaderFn, *, options: Iterable[str] = (), splits: Iterable[str] = ()) -> ReaderFn:
    """Register ``fn(spec) -> source`` as format ``name``; ``options`` names the format-specific
    DatasetSpec fields it reads and ``splits`` the values ``split`` may take (validation uses them)."""
    fn.options, fn.splits = frozenset(options), tuple(splits)  # type: ignore[attr-defined]
    return READERS.add(name, fn)


def reader_options(name: str) -> tuple[frozenset[str], tuple[str, ...]]:
    fn = READERS.get(name)
    return getattr(fn, "options", frozenset()), getattr(fn, "splits", ())


def open_source(spec: DatasetSpec) -> Any:
    """Open the dataset ``spec`` describes, downsampled as it says: a random-access ``Source``, or
    a streaming source (staged shards, webdataset tars) that applies the downsampling itself."""
    fmt = detect_format(spec.url) if spec.format == "auto" else spec.format
    source = READERS.get(fmt)(spec)
    if isinstance(source, Source) and not isinstance(source, Subset):
        kept = downsampled(len(source), spec)
        if kept is not None:
            return Subset(source, kept)
    return source


def detect_format(url: str) -> str:
    """The format of ``url`` from its suffix, or from a folder's contents."""
    if url.rstrip("/").rsplit("/", 1)[-1] == "manifest.json":  # a staged dataset named by its manifest
        return "shards"
    for suffix, fmt in ((".jsonl", "llava_jsonl"), (".json", "llava_json"), (".parquet", "parquet")):
        if url.rstrip("/").lower().endswith(suffix):
            return fmt
    fs, path = storage.filesystem(url)
    if not fs.isdir(path):
        if not fs.exists(path):
            raise FileNotFoundError(f"dataset {url!r} does not exist")
        raise ValueError(
            f"cannot tell the format of {url!r} from its name; name it .json, .jsonl or .parquet, "
            f"or set format to one of {', '.join(READERS.names())}"
        )
    if fs.exists(f"{path.rstrip('/')}/manifest.json"):
        return "shards"
    if fs.glob(f"{path.rstrip('/')}/*.parquet"):
        return "parquet"
    raise ValueError(f"folder {url!r} holds neither a manifest.json (shards) nor *.parquet files")


def _image_root(spec: DatasetSpec) -> str:
    return spec.image_root if spec.image_root is not None else storage.parent(spec.url)


def _resolve(image_root: str, ref: Any) -> ImageRef:
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, dict):  # parquet's {"bytes": ..., "path": ...} struct
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if not isinstance(ref, str) or not ref:
        raise BadSample("malformed", f"image reference {ref!r} is neither a path nor bytes")
    return storage.join(image_root, ref)


def _word_count(conversations: list[dict[str, Any]]) -> int:
    return sum(len(str(turn.get("value", "")).split()) for turn in conversations)


def _modality_length(conversations: list[dict[str, Any]], has_image: bool) -> int:
    n = _word_count(conversations)
    return n if has_image else -n


# ----------------------------------------------------------------------------- LLaVA JSON / JSONL


def _record_images(record: dict[str, Any]) -> list[Any]:
    refs = record.get("images", record.get("image"))
    if refs is None:
        return []
    return list(refs) if isinstance(refs, list) else [refs]


def llava_record_to_sample(record: Any, index: int, image_root: str) -> RawSample:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise BadSample("malformed", f"record {index} has no 'conversations' list")
    return RawSample(
        id=str(record.get("id", index)),
        images=[_resolve(image_root, ref) for ref in _record_images(record)],
        conversations=record["conversations"],
        meta={k: v for k, v in record.items() if k not in ("id", "image", "images", "conversations")},
    )


class LlavaJsonSource(Source):
    """LLaVA's JSON (one array of records, e.g. the 665k mix): one streaming pass indexes each
    record's byte offset and modality length; item ``i`` is then one seek and one record parsed.
    The file is never held in memory whole (LLaVA itself ``json.load``s it)."""

    def __init__(self, url: str, image_root: str) -> None:
        from tqdm import tqdm

        from vlm_core.data.sources.jsonscan import iter_array

        self.url, self.image_root = url, image_root
        self.offsets = array("q")
        self._lengths = array("q")
        try:
            with storage.open_url(url, "rb") as f:
                for offset, record in tqdm(iter_array(f), desc=f"indexing {url}", unit=" records", disable=None, leave=False):
                    self.offsets.append(offset)
                    self._lengths.append(_record_length(record))
        except ValueError as err:
            raise ValueError(f"{url}: LLaVA JSON is one array of records: {err}") from None
        self._file = _PerProcessFile(url)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> RawSample:
        from vlm_core.data.sources.jsonscan import read_record

        return llava_record_to_sample(read_record(self._file.get(), self.offsets[index]), index, self.image_root)

    def modality_lengths(self) -> list[int]:
        return list(self._lengths)


def _record_length(record: Any) -> int:
    if not isinstance(record, dict):
        return 0
    return _modality_length(record.get("conversations") or [], bool(_record_images(record)))


class _PerProcessFile:
    """An open file (optionally wrapped, e.g. in a ParquetFile) that is reopened after a fork or
    unpickling, so each DataLoader worker reads through its own handle."""

    def __init__(self, url: str, wrap: Callable[[Any], Any] | None = None) -> None:
        self.url, self.wrap = url, wrap
        self._pid: int | None = None
        self._file: Any = None

    def get(self) -> Any:
        if self._pid != os.getpid():
            # Small blocks: a random read fetches about one record, not s3fs' default 50 MiB.
            kwargs = {} if storage.is_local(self.url) else {"block_size": 1 << 18, "cache_type": "readahead"}
            f = storage.open_url(self.url, "rb", **kwargs)
            self._file, self._pid = (self.wrap(f) if self.wrap else f), os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "wrap": self.wrap, "_pid": None, "_file": None}


class LlavaJsonlSource(Source):
    """LLaVA records one per line; random access through a byte-offset index.

    One streaming pass records each line's offset and its modality length; afterwards item ``i``
    is one seek and one line read. A line that is not valid JSON becomes a bad sample when read.
    """

    def __init__(self, url: str, image_root: str) -> None:
        from tqdm import tqdm

        self.url, self.image_root = url, image_root
        self.offsets = array("q")
        self._lengths = array("q")
        with storage.open_url(url, "rb") as f:
            offset = 0
            for line in tqdm(f, desc=f"indexing {url}", unit=" lines", disable=None, leave=False):
                if line.strip():
                    self.offsets.append(offset)
                    self._lengths.append(self._length_of(line))
                offset += len(line)
        self._file = _PerProcessFile(url)

    @staticmethod
    def _length_of(line: bytes) -> int:
        try:
            return _record_length(json.loads(line))
        except ValueError:
            return 0

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> RawSample:
        f = self._file.get()
        f.seek(self.offsets[index])
        line = f.readline()
        try:
            record = json.loads(line)
        except ValueError as err:
            raise BadSample("malformed", f"line {index + 1} of {self.url} is not JSON: {err}") from None
        return llava_record_to_sample(record, index, self.image_root)

    def modality_lengths(self) -> list[int]:
        return list(self._lengths)


# ----------------------------------------------------------------------------- parquet


def parquet_files(url: str, pattern: str = "*.parquet") -> list[str]:
    """``url`` itself, or the files matching ``pattern`` in the folder ``url``, in name order."""
    fs, path = storage.filesystem(url)
    if not fs.isdir(path):
        return [url]
    protocol = storage.protocol(url)
    return [p if protocol == "file" else f"{protocol}://{p}" for p in sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))]


class ParquetSource(Source):
    """Parquet rows with inline image bytes (CodeFuse-VLM's layout) or image paths.

    Columns: ``image`` (struct of ``bytes`` / ``path``, or a path / bytes) or ``images`` (a list
    of those); text as ``prompt`` + ``ground_truth`` (one exchange), ``prompts`` +
    ``ground_truths`` (lists: several exchanges) or LLaVA's ``conversations``; optional ``id``.
    A url may be one file or a folder of ``*.parquet`` files (read in name order).
    """

    CACHE_ROW_GROUPS = 2

    def __init__(self, url: str, image_root: str, files: list[str] | None = None) -> None:
        import pyarrow.parquet as pq

        self.url, self.image_root = url, image_root
        self.files = files if files is not None else parquet_files(url)
        if not self.files:
            raise FileNotFoundError(f"no *.parquet files under {url!r}")
        self._handles = [_PerProcessFile(f, pq.ParquetFile) for f in self.files]
        # (file, row group) of each global start row, for bisect.
        self._groups: list[tuple[int, int]] = []
        self._starts: list[int] = []
        total = 0
        for fi, handle in enumerate(self._handles):
            meta = handle.get().metadata
            if fi == 0:
                self.schema = handle.get().schema_arrow
            for rg in range(meta.num_row_groups):
                self._groups.append((fi, rg))
                self._starts.append(total)
                total += meta.row_group(rg).num_rows
        self._len = total
        self._text_columns, self._image_column = self._columns(self.schema)
        self._cache: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def _columns(self, schema: Any) -> tuple[list[str], str | None]:
        names = set(schema.names)
        for text in (["prompt", "ground_truth"], ["prompts", "ground_truths"], ["conversations"]):
            if set(text) <= names:
                break
        else:
            raise ValueError(
                f"{self.url}: parquet needs text columns prompt+ground_truth, prompts+ground_truths or "
                f"conversations; it has {sorted(names)}"
            )
        image = next((c for c in ("image", "images") if c in names), None)
        return text, image

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the index, not this process's decoded row groups.
        return {**self.__dict__, "_cache": OrderedDict()}

    def _file(self, fi: int) -> Any:
        return self._handles[fi].get()

    def _row_group(self, key: tuple[int, int]) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = self._file(key[0]).read_row_group(key[1])
        self._cache[key] = table
        if len(self._cache) > self.CACHE_ROW_GROUPS:
            self._cache.popitem(last=False)
        return table

    def __getitem__(self, index: int) -> RawSample:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} rows")
        g = bisect.bisect_right(self._starts, index) - 1
        row = self._row_group(self._groups[g]).slice(index - self._starts[g], 1).to_pylist()[0]
        sample_id = str(row.get("id", index))
        try:
            return RawSample(
                id=sample_id,
                images=[_resolve(self.image_root, ref) for ref in self._row_images(row)],
                conversations=self._conversations(row),
                meta={"source_row": index},
            )
        except BadSample as bad:
            raise bad.located(sample_id, self.url) from None

    def _row_images(self, row: dict[str, Any]) -> list[Any]:
        value = row.get(self._image_column) if self._image_column else None
        items = value if isinstance(value, list) else [value]
        # A null image, or a struct whose bytes and path are both null, means "no image".
        return [v for v in items if v is not None and not (isinstance(v, dict) and not any(v.values()))]

    def _conversations(self, row: dict[str, Any]) -> list[dict[str, str]]:
        if "conversations" in self._text_columns:
            conv = row["conversations"]
            return json.loads(conv) if isinstance(conv, str) else conv
        prompts, answers = (row[c] for c in self._text_columns)
        if not isinstance(prompts, list):
            prompts, answers = [prompts], [answers]
        if len(prompts) != len(answers):
            raise BadSample("malformed", f"{len(prompts)} prompts but {len(answers)} ground truths")
        conv = []
        for prompt, answer in zip(prompts, answers):
            conv += [{"from": "human", "value": prompt or ""}, {"from": "gpt", "value": answer or ""}]
        return conv

    def modality_lengths(self) -> list[int]:
        # Read the text columns and only the validity of the image column, not the image bytes.
        out: list[int] = []
        for fi, rg in self._groups:
            table = self._file(fi).read_row_group(rg, columns=self._text_columns)
            has_image = self._image_presence(fi, rg, table.num_rows)
            for row, image in zip(table.to_pylist(), has_image):
                try:
                    out.append(_modality_length(self._conversations(row), image))
                except BadSample:
                    out.append(0)  # reported when the row is read
        return out

    def _image_presence(self, fi: int, rg: int, num_rows: int) -> list[bool]:
        import pyarrow as pa

        if self._image_column is None:
            return [False] * num_rows
        column = self._image_column
        field_type = self.schema.field(column).type
        if pa.types.is_struct(field_type):
            # Reading one small child keeps the struct's own nulls without the image bytes.
            child = "path" if field_type.get_field_index("path") >= 0 else field_type.field(0).name
            values = self._file(fi).read_row_group(rg, columns=[f"{column}.{child}"]).column(0)
            return values.is_valid().to_pylist()
        values = self._file(fi).read_row_group(rg, columns=[column]).to_pylist()
        return [bool(self._row_images({column: v})) for v in values]


register_reader("llava_json", lambda spec: LlavaJsonSource(spec.url, _image_root(spec)))
register_reader("llava_jsonl", lambda spec: LlavaJsonlSource(spec.url, _image_root(spec)))
register_reader("parquet", lambda spec: ParquetSource(spec.url, _image_root(spec)))

# The other formats register themselves when their modules are imported.
import vlm_core.data.shards
import vlm_core.data.sources  # noqa: F401
