"""The data path at scale: staging each published format, and resuming a stream.

Staging: for every source format, ``n`` synthetic samples in its published layout (100k by
default, tiny JPEGs), read directly from the source (the reader's rows and every image's bytes,
what training from the source costs per epoch) vs staged by ``stage_dataset`` (read, decode,
pack, checksum, write): the ratio says what staging costs over one direct read, paid once.
Resume: a stream over 100k staged samples resumed halfway through its epoch: re-reading and
dropping the consumed samples (what the Trainer does without a recorded position) vs seeking
to the position (``StreamingMixture.resume``), both timed to the first sample after it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
import tempfile

from benchmarks.harness import Row, alternate, median, row
from operators.staging import stage_dataset
from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import open_source
from vlm_core.data.shards import ShardSource
from vlm_core.data.types import RawSample


def _jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 7)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _images(root: str, n: int) -> None:
    """``VG_100K/<i>.jpg``: one image folder that every file-based layout below points at."""
    os.makedirs(f"{root}/VG_100K", exist_ok=True)
    for i in range(n):
        with open(f"{root}/VG_100K/{i}.jpg", "wb") as f:
            f.write(_jpeg(i))


def _llava(root: str, n: int) -> DatasetSpec:
    conv = lambda i: [{"from": "human", "value": f"<image>\nWhat is {i}?"}, {"from": "gpt", "value": f"thing {i}"}]
    with open(f"{root}/llava.json", "w") as f:
        json.dump([{"id": str(i), "image": f"VG_100K/{i}.jpg", "conversations": conv(i)} for i in range(n)], f)
    return DatasetSpec(url=f"{root}/llava.json")


def _visual_genome(root: str, n: int) -> DatasetSpec:
    os.makedirs(f"{root}/vg", exist_ok=True)
    with open(f"{root}/vg/image_data.json", "w") as f:
        json.dump([{"image_id": i, "url": f"https://x/VG_100K/{i}.jpg", "width": 8, "height": 8} for i in range(n)], f)
    with open(f"{root}/vg/question_answers.json", "w") as f:
        json.dump([{"id": i, "qas": [{"qa_id": i, "image_id": i, "question": "What colour?", "answer": f"c{i}"}]} for i in range(n)], f)
    return DatasetSpec(url=f"{root}/vg/question_answers.json", format="visual_genome", image_root=root)


def _ocr_vqa(root: str, n: int) -> DatasetSpec:
    books = {str(i): {"imageURL": f"http://x/{i}.jpg", "questions": ["Who wrote this book?"], "answers": [f"a{i}"], "split": 1}
             for i in range(n)}
    with open(f"{root}/dataset.json", "w") as f:
        json.dump(books, f)
    return DatasetSpec(url=f"{root}/dataset.json", format="ocr_vqa", image_root=f"{root}/VG_100K")


def _synthdog(root: str, n: int) -> DatasetSpec:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(f"{root}/synthdog/data", exist_ok=True)
    gt = [json.dumps({"gt_parse": {"text_sequence": f"text {i}"}}) for i in range(n)]
    images = [{"bytes": _jpeg(i), "path": f"{i}.jpg"} for i in range(n)]
    pq.write_table(pa.table({"image": images, "ground_truth": gt}), f"{root}/synthdog/data/train-00000-of-00001.parquet", row_group_size=1000)
    return DatasetSpec(url=f"{root}/synthdog", format="synthdog")


def _webdataset(root: str, n: int, per_tar: int = 10_000) -> DatasetSpec:
    os.makedirs(f"{root}/wds", exist_ok=True)
    for t in range(0, n, per_tar):
        with tarfile.open(f"{root}/wds/{t // per_tar:05d}.tar", "w") as tar:
            for i in range(t, min(t + per_tar, n)):
                key = f"{i:09d}"
                for ext, data in (("jpg", _jpeg(i)), ("txt", f"caption {i}".encode()), ("json", b'{"status": "success"}')):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return DatasetSpec(url=f"{root}/wds", format="webdataset")


FORMATS = {"llava_json": _llava, "visual_genome": _visual_genome, "ocr_vqa": _ocr_vqa, "synthdog": _synthdog, "webdataset": _webdataset}


def _read_directly(spec: DatasetSpec) -> int:
    """One pass over the source as training from it would make: every row, every image's bytes."""
    count = 0
    for sample in open_source(spec).rows():
        if isinstance(sample, RawSample):
            for ref in sample.images:
                if isinstance(ref, str):
                    storage.read_bytes(ref)
            count += 1
    return count


class _Ids:
    strict = False

    def encode(self, raw, dataset_name, dataset_index):
        return {"id": raw.id}


def bench(quick: bool) -> list[Row]:
    n = 2000 if quick else 100_000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as root:
        _images(root, n)
        for fmt, make in FORMATS.items():
            spec = make(root, n)
            direct_s, stage_s = alternate(
                lambda spec=spec: _read_directly(spec),
                lambda spec=spec, fmt=fmt: stage_dataset(spec, f"{root}/staged-{fmt}", workers=4, progress=False),
                reps=1, warmup=0,  # one repetition each: staging a second time into the same place would resume
            )
            rows.append(row(f"staging {fmt}, {n} samples: stage vs read the source once", "samples/s",
                            n / median(direct_s), n / median(stage_s), target="report",
                            note="ours decodes every image, packs, hashes and writes shards of 1000; paid once, then shards stream"))
        rows.append(_resume_row(f"{root}/staged-webdataset", n, quick))
    return rows


def _resume_row(url: str, n: int, quick: bool) -> Row:
    from vlm_core.train.streaming import StreamingMixture, StreamPosition

    source = ShardSource(url)
    half = n // 2

    def mixture(resume=None) -> StreamingMixture:
        m = StreamingMixture({"d": (source, 1.0)}, _Ids(), seed=0)
        m.rank, m.world_size, m.resume = 0, 1, resume
        return m

    def reread() -> None:
        next(itertools.islice(iter(mixture()), half, None))

    def seek() -> None:
        state = {"epoch": 0, "batches": 1, "consumers": {"0": vars(StreamPosition(entries=half, yielded=half))}}
        next(iter(mixture(state)))

    base, ours = alternate(reread, seek, reps=1 if quick else 3, warmup=0)
    return row(f"resume a stream of {n} staged samples halfway: seek vs re-read", "s to first sample",
               median(base), median(ours), target=">=10x", lower_is_better=True,
               note="re-read: the stream from its start, dropping consumed samples (no encoding); seek: O(blocks) to the window, one shard read")
