"""Stage a dataset into object storage as checksummed tar shards (format: ``vlm_core.data.shards``).

The guarantees, and how they are kept:

- *parallel*: images are read and shards uploaded by thread pools; at most ``workers`` built
  shards wait for or are in upload while the next one is built, which bounds memory;
- *resumable*: shard bytes are a pure function of the source samples, so a re-run rebuilds the
  same shard, finds an object of that name and size in the destination, hashes it, and skips
  the upload when the sha256 matches (a mismatch is reported and the shard re-uploaded);
- *atomic*: a shard is written under ``_tmp/`` and moved to its final, content-addressed name
  only when complete; ``manifest.json`` is written last, so a reader either finds no manifest
  or a complete dataset. Two runs staging into the same destination at once are not supported;
- *faithful*: samples the data layer calls bad (malformed records, missing images) are skipped
  and counted by reason in the manifest and the log; everything else is copied byte for byte;
- *no secrets*: credentials come from the environment through ``vlm_core.storage`` only; the
  manifest records the source URL with any user info removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm.auto import tqdm

from vlm_core import storage
from vlm_core.config import DatasetSpec, RunConfig
from vlm_core.data.readers import detect_format, open_source
from vlm_core.data.shards import (
    TAR_TRAILER_MAX,
    LengthIndexInfo,
    Manifest,
    ManifestError,
    PackedSample,
    ShardInfo,
    SourceInfo,
    dataset_root,
    length_index_name,
    load_manifest,
    manifest_url,
    pack_length_index,
    pack_shard,
    sha256_hex,
    shard_name,
    text_token_proxy,
)
from vlm_core.data.types import BadSample, RawSample

log = logging.getLogger(__name__)

DEFAULT_SHARD_SAMPLES = 1000
DEFAULT_MAX_SHARD_BYTES = 256 * 2**20
TMP_DIR = "_tmp"
_HASH_CHUNK = 8 * 2**20

SKIPPED_IDS_KEPT = 20  # ids of skipped samples the manifest lists per reason

# Encodings stored as they are (Pillow's format name -> member extension): the web formats that
# the trainer (Pillow) and every common image library decode. MPO is a camera JPEG with extra
# frames. Anything else (BMP, TIFF, ...) is re-encoded as PNG, losslessly.
KEPT_ENCODINGS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


class StagingError(RuntimeError):
    """Staging finished but the destination failed verification."""


def staged_url(cfg: RunConfig, name: str) -> str:
    """Where the staging step puts dataset ``name`` of a run: ``<output>/data/<name>``."""
    return storage.join(cfg.output, "data", name)


def datasets_to_stage(cfg: RunConfig) -> list[str]:
    """Names of the datasets some training stage reads that are not staged shards yet."""
    used = {name for stage in cfg.stages.values() for name in stage.datasets}
    return sorted(name for name in used if _format(cfg.data.datasets[name]) != "shards")


def stage_config(
    cfg: RunConfig, *, workers: int = 8, verify: bool = False, progress: bool = True
) -> tuple[RunConfig, dict[str, Manifest]]:
    """The staging step of a run: every dataset a stage uses (other than staged shards) goes to
    ``<output>/data/<name>``; returns the config reading those copies, and their manifests.

    A dataset staged before from the same source files with the same options is adopted as it
    is: its source is not read and nothing is uploaded. The returned config names each staged
    copy as ``{url, format: shards, weight}``, so every later step reads the shards.
    """
    manifests: dict[str, Manifest] = {}
    overrides: dict[str, dict] = {}
    for name in datasets_to_stage(cfg):
        spec, dest = cfg.data.datasets[name], staged_url(cfg, name)
        manifest = up_to_date_manifest(spec, dest, max_text_tokens=cfg.data.max_length)
        if manifest is None:
            manifest = stage_dataset(spec, dest, max_text_tokens=cfg.data.max_length, workers=workers, verify=verify, progress=progress)
        else:
            log.info("%s: %s is up to date (%d samples); not staged again", name, redact_url(dest), manifest.total_samples)
        manifests[name] = manifest
        overrides[f"data.datasets.{name}"] = {"url": dest, "format": "shards", "weight": spec.weight}
    return cfg.with_overrides(overrides, source="staged config"), manifests


def staging_options(spec: DatasetSpec, *, shard_samples: int, max_shard_bytes: int, max_text_tokens: int | None) -> dict:
    """What, besides the source files, decides the staged bytes (recorded in the manifest)."""
    reader = spec.model_dump(mode="json", exclude={"url", "weight"})
    return {"reader": reader, "shard_samples": shard_samples, "max_shard_bytes": max_shard_bytes, "max_text_tokens": max_text_tokens}


def up_to_date_manifest(
    spec: DatasetSpec,
    dest_url: str,
    *,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_text_tokens: int | None = None,
) -> Manifest | None:
    """The manifest at ``dest_url`` when it was staged from ``spec``'s unchanged source files
    with the same options; ``None`` when the dataset must be staged (again)."""
    try:
        manifest = load_manifest(dest_url)
    except ManifestError:
        return None
    options = staging_options(spec, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes, max_text_tokens=max_text_tokens)
    if manifest.source.options != options or manifest.source.url != redact_url(spec.url):
        return None
    return manifest if manifest.source.fingerprint == source_fingerprint(spec.url) else None


def stage_dataset(
    spec: DatasetSpec,
    dest_url: str,
    *,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_text_tokens: int | None = None,
    workers: int = 8,
    verify: bool = False,
    progress: bool = True,
) -> Manifest:
    """Stage the dataset a run config's ``spec`` describes (any reader format of
    ``vlm_core.data.readers``) to ``dest_url``, as the staging step and ``vlm stage`` do."""
    fmt = _format(spec)
    if fmt == "shards":
        raise ValueError(f"{redact_url(spec.url)} is already a staged dataset; copy the folder instead of staging it again")
    source = open_source(spec.model_copy(update={"format": fmt}))
    info = SourceInfo(
        url=redact_url(spec.url),
        format=fmt,
        fingerprint=source_fingerprint(spec.url),
        options=staging_options(spec, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes, max_text_tokens=max_text_tokens),
    )
    return stage_source(
        source, dest_url, source_info=info, shard_samples=shard_samples, max_shard_bytes=max_shard_bytes,
        max_text_tokens=max_text_tokens, workers=workers, verify=verify, progress=progress,
    )


def _format(spec: DatasetSpec) -> str:
    return detect_format(spec.url) if spec.format == "auto" else spec.format


def stage_source(
    source: Any,
    dest_url: str,
    *,
    source_info: SourceInfo,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_text_tokens: int | None = None,
    workers: int = 8,
    verify: bool = False,
    progress: bool = True,
) -> Manifest:
    """Stage any source of samples (a reader's ``rows()``, or a sequence of RawSamples): what
    ``stage_dataset`` does after opening the source. ``max_text_tokens`` skips samples whose
    text-token proxy exceeds it (they could never fit the trainer's ``max_length``)."""
    if shard_samples < 1:
        raise ValueError(f"shard_samples must be at least 1, got {shard_samples}")
    if max_shard_bytes <= TAR_TRAILER_MAX:
        raise ValueError(f"max_shard_bytes must exceed {TAR_TRAILER_MAX} (the tar trailer), got {max_shard_bytes}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")

    dest_url = dataset_root(dest_url)
    dest = _Destination(dest_url)
    tally = _Tally()
    results = _publish_shards(source, dest, tally, shard_samples, max_shard_bytes, max_text_tokens, workers, progress)
    shards = [shard for shard, _ in results]
    uploaded = sum(1 for _, was_uploaded in results if was_uploaded)
    index_info, index_uploaded = dest.publish_length_index(pack_length_index(tally.lengths))
    manifest = Manifest(
        total_samples=sum(s.samples for s in shards),
        shards=shards,
        rows_total=getattr(source, "rows_total", len(source)),
        rows_selected=tally.rows,
        skipped_samples=dict(sorted(tally.skipped.items())),
        skipped_ids={reason: ids for reason, ids in sorted(tally.skipped_ids.items())},
        length_index=index_info,
        source=source_info,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    storage.write_text_atomic(manifest_url(dest_url), manifest.to_json())  # last: publishes the dataset
    dest.clean_temporaries()
    log.info(
        "staged %d samples in %d shards to %s (%d uploaded, %d already present)",
        manifest.total_samples, len(shards), redact_url(dest_url), uploaded + index_uploaded, len(shards) - uploaded,
    )
    if tally.skipped:
        log.warning("skipped %d bad samples: %s", sum(tally.skipped.values()), ", ".join(f"{r} {n}" for r, n in sorted(tally.skipped.items())))
    if verify:
        problems = verify_dataset(dest_url, workers=workers, progress=progress)
        if problems:
            raise StagingError(f"verification of {redact_url(dest_url)} failed:\n  " + "\n  ".join(problems))
    return manifest


def _publish_shards(
    source: Any, dest: _Destination, tally: _Tally, shard_samples: int, max_shard_bytes: int,
    max_text_tokens: int | None, workers: int, progress: bool,
) -> list[tuple[ShardInfo, bool]]:
    """Build the shards in order and put them in place in parallel: ``(info, uploaded)`` each.
    At most ``workers`` built shards wait for or are in upload, which bounds memory."""
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="stage-read") as reads,
        ThreadPoolExecutor(workers, thread_name_prefix="stage-put") as puts,
        tqdm(total=len(source), unit="sample", desc=f"staging to {redact_url(dest.url)}", disable=not progress) as bar,
    ):
        waiting = threading.BoundedSemaphore(workers)
        futures: list[Future[tuple[ShardInfo, bool]]] = []

        def published(future: Future[tuple[ShardInfo, bool]]) -> None:
            waiting.release()
            if not future.cancelled() and future.exception() is None:
                bar.update(future.result()[0].samples)

        try:
            packed = _packed_samples(source, reads, workers * 16, max_text_tokens)
            for index, (data, samples) in enumerate(_build_shards(packed, shard_samples, max_shard_bytes, tally)):
                waiting.acquire()
                _raise_first_failure(futures)
                future = puts.submit(dest.publish, index, data, samples)
                future.add_done_callback(published)
                futures.append(future)
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def verify_dataset(dest_url: str, *, workers: int = 8, progress: bool = False) -> list[str]:
    """Re-read every shard of a staged dataset; one line per problem (empty when all is well)."""
    dest_url = dataset_root(dest_url)
    try:
        manifest = load_manifest(dest_url)
    except ManifestError as err:
        return [str(err)]
    dest = _Destination(dest_url)
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        checks = pool.map(dest.check, manifest.shards)
        return [p for p in tqdm(checks, total=len(manifest.shards), desc="verifying", unit="shard", disable=not progress) if p]


# ----------------------------------------------------------------------------- building shards


@dataclass
class _Tally:
    """What staging saw, for the manifest: rows read, skips by reason (with the first ids), the
    ids written so far (duplicates are skipped: ids key caches and reports) and the length index."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    lengths: list[tuple[int, int]] = field(default_factory=list)

    def skip(self, bad: BadSample) -> None:
        self.skipped[bad.reason] += 1
        ids = self.skipped_ids.setdefault(bad.reason, [])
        if len(ids) < SKIPPED_IDS_KEPT:
            ids.append(str(bad.sample_id))
        log.debug("skipping %s", bad)


def _build_shards(
    packed: Iterator[tuple[PackedSample, tuple[int, int]] | BadSample], shard_samples: int, max_shard_bytes: int, tally: _Tally
) -> Iterator[tuple[bytes, int]]:
    """Shard bytes and sample counts, in order; bad samples are counted in ``tally``.

    A shard closes at ``shard_samples`` samples, or before the sample that would take it past
    ``max_shard_bytes`` (a single larger sample gets a shard of its own).
    """
    budget = max_shard_bytes - TAR_TRAILER_MAX
    current: list[PackedSample] = []
    size = 0
    for item in packed:
        tally.rows += 1
        if isinstance(item, BadSample):
            tally.skip(item)
            continue
        sample, lengths = item
        if sample.sample_id in tally.seen:
            tally.skip(BadSample("duplicate_id", "an earlier sample has this id", sample_id=sample.sample_id))
            continue
        tally.seen.add(sample.sample_id)
        if current and (len(current) == shard_samples or size + sample.tar_bytes > budget):
            yield pack_shard(current), len(current)
            current, size = [], 0
        current.append(sample)
        tally.lengths.append(lengths)
        size += sample.tar_bytes
    if current:
        yield pack_shard(current), len(current)


def _rows(source: Any) -> Iterator[RawSample | BadSample]:
    if hasattr(source, "rows"):
        yield from source.rows()
        return
    for index in range(len(source)):  # a plain sequence of samples
        try:
            yield source[index]
        except BadSample as bad:
            yield bad if bad.sample_id is not None else bad.located(f"#{index}", "source")


def _packed_samples(
    source: Any, reads: ThreadPoolExecutor, chunk: int, max_text_tokens: int | None
) -> Iterator[tuple[PackedSample, tuple[int, int]] | BadSample]:
    # Samples come from the source on this thread only (readers keep open files and need not
    # be thread-safe); their images are fetched and decoded in parallel.
    rows = _rows(source)
    start = 0
    while batch := list(itertools.islice(rows, chunk)):
        yield from reads.map(_pack, range(start, start + len(batch)), batch, itertools.repeat(max_text_tokens))
        start += len(batch)


def _pack(index: int, sample: RawSample | BadSample, max_text_tokens: int | None) -> tuple[PackedSample, tuple[int, int]] | BadSample:
    if isinstance(sample, BadSample):
        return sample
    answers = [t for t in sample.conversations if t.get("from") in ("gpt", "assistant")]
    if not answers:
        return BadSample("no_assistant_turn", "no gpt turn", sample_id=sample.id)
    if not any(str(t.get("value", "")).strip() for t in answers):
        return BadSample("no_answer", "every gpt turn is empty", sample_id=sample.id)
    words = text_token_proxy(sample.conversations)
    if max_text_tokens is not None and words > max_text_tokens:
        return BadSample("too_long", f"{words} words > {max_text_tokens}", sample_id=sample.id)
    try:
        images = [_load_image(ref) for ref in sample.images]
    except BadSample as bad:
        return bad.located(sample.id, "source")
    refs = [ref if isinstance(ref, str) else None for ref in sample.images]
    packed = PackedSample.build(index, sample, images, {**sample.meta, "image_refs": refs})
    return packed, (words, len(images))


def _load_image(ref: str | bytes) -> tuple[str, bytes]:
    """(extension, bytes) as the shard stores them. The bytes are decoded once here, so a sample
    the trainer could not read is skipped now, not found at train time; they are kept as they
    are when the trainer reads the encoding (named by what the bytes are, not by the source's
    file name: OCR-VQA has GIFs named .jpg) and re-encoded as PNG otherwise."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(ref, bytes):
        data = ref
    else:
        try:
            data = storage.read_bytes(ref)
        except (FileNotFoundError, IsADirectoryError) as err:
            raise BadSample("missing_image", f"{ref}: {type(err).__name__}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format or ""
            if fmt in KEPT_ENCODINGS:
                return KEPT_ENCODINGS[fmt], data
            buf = io.BytesIO()
            img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buf, "PNG")
            return "png", buf.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadSample("corrupt_image", f"{ref if isinstance(ref, str) else 'inline bytes'}: {err}") from None


def _raise_first_failure(futures: list[Future]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


# ----------------------------------------------------------------------------- destination


@dataclass
class _Destination:
    url: str

    def __post_init__(self) -> None:
        self.fs, self.path = storage.filesystem(self.url)
        self.path = self.path.rstrip("/")
        self.fs.invalidate_cache(self.path)  # another client may have changed it since we last looked
        try:
            listing = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            listing = {}
        # relative name -> size, from one listing rather than a HEAD per shard
        self.sizes = {p[len(self.path) + 1 :]: int(i["size"]) for p, i in listing.items()}

    def _path(self, name: str) -> str:
        return f"{self.path}/{name}"

    def publish(self, index: int, data: bytes, samples: int) -> tuple[ShardInfo, bool]:
        """Put one shard in place unless an identical one is there; returns (info, uploaded)."""
        digest = sha256_hex(data)
        info = ShardInfo(name=shard_name(index, digest), samples=samples, bytes=len(data), sha256=digest)
        if self.sizes.get(info.name) == info.bytes:
            found = self.sha256(info.name)
            if found == digest:
                log.debug("%s already present", info.name)
                return info, False
            log.warning("%s: checksum mismatch (expected %s, found %s); uploading it again", info.name, digest, found)
        self._put_atomically(info.name, data)
        log.debug("uploaded %s", info.name)
        return info, True

    def publish_length_index(self, data: bytes) -> tuple[LengthIndexInfo, bool]:
        digest = sha256_hex(data)
        info = LengthIndexInfo(name=length_index_name(digest), sha256=digest)
        if self.sizes.get(info.name) == len(data) and self.sha256(info.name) == digest:
            return info, False
        self._put_atomically(info.name, data)
        return info, True

    def _put_atomically(self, name: str, data: bytes) -> None:
        tmp, final = self._path(f"{TMP_DIR}/{uuid.uuid4().hex}-{name}"), self._path(name)
        if storage.is_local(self.url):
            self.fs.makedirs(self.fs._parent(tmp), exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)  # a rename
        else:
            # Object stores have no rename: a server-side copy, then the temporary goes. (Not
            # fs.mv, which lists the prefix first: needless requests that race with the deletes.)
            self.fs.pipe_file(tmp, data)
            self.fs.cp_file(tmp, final)
            self.fs.rm_file(tmp)

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._path(name), "rb", block_size=_HASH_CHUNK) as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def check(self, shard: ShardInfo) -> str | None:
        size = self.sizes.get(shard.name)
        if size is None:
            return f"{shard.name}: missing"
        if size != shard.bytes:
            return f"{shard.name}: size {size} bytes, manifest says {shard.bytes}"
        found = self.sha256(shard.name)
        if found != shard.sha256:
            return f"{shard.name}: sha256 {found}, manifest says {shard.sha256}"
        return None

    def clean_temporaries(self) -> None:
        """Drop what interrupted runs left under ``_tmp/`` (never read by anyone)."""
        tmp = self._path(TMP_DIR)
        if self.fs.exists(tmp):
            self.fs.rm(tmp, recursive=True)


# ----------------------------------------------------------------------------- source identity


def source_fingerprint(url: str) -> str:
    """sha256 over the names, sizes and versions (ETag or mtime) of the files under ``url``.

    Covers the annotation / parquet files, not the image folder (which may hold millions of
    objects): the shard checksums already pin every image byte that was staged.
    """
    fs, path = storage.filesystem(url)
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    digest = hashlib.sha256()
    for name, info in sorted(files.items()):
        version = next((str(info[k]) for k in ("ETag", "mtime", "LastModified", "created") if k in info), "")
        digest.update(f"{name[len(path):]}\0{info.get('size')}\0{version}\n".encode())
    return digest.hexdigest()


def redact_url(url: str) -> str:
    """``url`` without user info, so a ``scheme://key:secret@host`` never reaches a manifest or log."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
