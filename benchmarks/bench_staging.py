"""Staging and loading many small images through a real S3 API (moto's server on 127.0.0.1).

Upload: ``stage_dataset`` (tar shards, parallel uploads) vs. putting each image as its own
object with s3fs, one at a time — how image folders are usually copied to a bucket.
Load: one consumer streaming the staged shards (``ShardSource.iter_samples``) vs. one consumer
reading the same LLaVA JSONL from the bucket with the data layer's reader and GETting each
image object. Both loaders hand back encoded image bytes (decoding costs the same either way).
Every staging call writes to a fresh prefix, so ours never profits from resuming.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile

from benchmarks.harness import Row, alternate, median, row
from operators.embedded_s3 import local_s3_server
from operators.staging import stage_dataset
from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import open_source
from vlm_core.data.shards import ShardSource

BUCKET = "s3://bench-staging"


def bench(quick: bool) -> list[Row]:
    n = 2000 if quick else 10_000
    loaded = 1000  # images each loader reads per repetition: one whole shard for ours
    reps = 1 if quick else 3
    with local_s3_server(), tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp:
        jsonl = _image_folder(tmp, n)
        fs, _ = storage.filesystem(BUCKET)
        fs.mkdir(BUCKET)
        prefixes = itertools.count()
        last: dict[str, str] = {}  # side -> where its latest run wrote

        def put_one_by_one() -> None:
            dest = last["files"] = f"{BUCKET}/files-{next(prefixes)}"
            fs.put_file(jsonl, f"{dest}/data.jsonl")
            for name in sorted(os.listdir(f"{tmp}/images")):
                fs.put_file(f"{tmp}/images/{name}", f"{dest}/images/{name}")

        def stage() -> None:
            last["shards"] = f"{BUCKET}/staged-{next(prefixes)}"
            stage_dataset(DatasetSpec(url=jsonl), last["shards"], shard_samples=loaded, workers=8, progress=False)

        # One repetition of a 10k upload takes minutes with the baseline; it is long enough to
        # be stable, so staging is not repeated.
        put_s, stage_s = alternate(put_one_by_one, stage, reps=1, warmup=0)
        rows = [
            row(
                f"stage {n} small images to S3",
                "images/s",
                n / median(put_s),
                n / median(stage_s),
                target=">=5x",
                note=f"moto S3 on 127.0.0.1; baseline: s3fs put per image; ours: tar shards of {loaded}, 8 upload threads",
            )
        ]

        # The runs above left the same dataset in both layouts.
        files = open_source(DatasetSpec(url=f"{last['files']}/data.jsonl"))
        shards = ShardSource(last["shards"])
        assert len(files) == len(shards) == n, (len(files), len(shards))

        def per_file(limit: int = loaded) -> None:
            got = [storage.read_bytes(ref) for i in range(limit) for ref in files[i].images]
            assert len(got) == limit

        def streamed(limit: int = loaded) -> None:
            got = [img for sample in itertools.islice(shards.iter_samples(epoch=0), limit) for img in sample.images]
            assert len(got) == limit

        per_file(50), streamed(50)  # warm-up: connections, the reader's file handle
        file_s, shard_s = alternate(per_file, streamed, reps=reps, warmup=0)
        rows.append(
            row(
                f"load {loaded} small images from S3",
                "images/s",
                loaded / median(file_s),
                loaded / median(shard_s),
                target=">=5x",
                note=f"one consumer each; baseline: LLaVA JSONL reader + one GET per image; ours: one GET per shard; median of {reps}",
            )
        )
        return rows


def _image_folder(root: str, n: int) -> str:
    """``n`` distinct small JPEGs (32x32 noise, ~1-2 KB) and a LLaVA JSONL naming them."""
    import numpy as np
    from PIL import Image

    os.makedirs(f"{root}/images")
    rng = np.random.default_rng(0)
    with open(f"{root}/data.jsonl", "w") as f:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=70)
            name = f"images/{i:06d}.jpg"
            with open(f"{root}/{name}", "wb") as img:
                img.write(buf.getvalue())
            conv = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": f"noise {i}"}]
            f.write(json.dumps({"id": str(i), "image": name, "conversations": conv}) + "\n")
    return f"{root}/data.jsonl"

