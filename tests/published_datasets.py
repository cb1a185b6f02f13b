"""Tiny datasets written in the published layouts, field names and nesting as published, with
the known breakages of each (used by the reader, staging and config tests).

Each writer returns the URL a DatasetSpec names and the counts a reader must report.
"""

from __future__ import annotations

import io
import json
import tarfile

from vlm_core import storage


def image(colour: tuple[int, int, int], size: tuple[int, int] = (12, 8), fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def _put(root: str, name: str, data: bytes | str) -> str:
    url = storage.join(root, name)
    if isinstance(data, str):
        storage.write_text_atomic(url, data)
    else:
        storage.write_bytes_atomic(url, data)
    return url


def llava_mix(root: str) -> str:
    """llava_v1_5_mix665k.json: per-source image folders, multi-turn rows, a ShareGPT text-only
    row (no "image" key, a "model" field), an OCR-VQA GIF saved as .jpg, a missing image, and a
    repeated id (the published mix repeats some)."""
    _put(root, "coco/train2017/000000033471.jpg", image((200, 10, 10)))
    _put(root, "gqa/images/2354786.jpg", image((10, 200, 10), (20, 10)))
    _put(root, "ocr_vqa/images/1405.jpg", image((10, 10, 200), fmt="GIF"))  # a GIF under a .jpg name
    _put(root, "textvqa/train_images/0054c91397f2fe05.jpg", image((90, 90, 90)))
    _put(root, "vg/VG_100K/2.jpg", image((250, 250, 0), (16, 12)))
    rows = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
        {"id": "2354786", "image": "gqa/images/2354786.jpg", "conversations": [
            {"from": "human", "value": "<image>\nIs the sky dark?\nAnswer the question using a single word or phrase."},
            {"from": "gpt", "value": "Yes"}]},
        {"id": "1405", "image": "ocr_vqa/images/1405.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWho wrote this book?"}, {"from": "gpt", "value": "Ünïcode Author"}]},
        {"id": "0054c91397f2fe05", "image": "textvqa/train_images/0054c91397f2fe05.jpg", "conversations": [
            {"from": "human", "value": "<image>\nwhat brand is this?\nReference OCR token: Nokia"}, {"from": "gpt", "value": "nokia"}]},
        {"id": "VG_100K/2", "image": "vg/VG_100K/2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nPlease provide a short description for this region: [0.25, 0.5, 0.62, 0.88]."},
            {"from": "gpt", "value": "A yellow wall."}]},
        {"id": "i6IyJda_0", "model": "", "conversations": [
            {"from": "human", "value": "How do I make a cup of tea?"}, {"from": "gpt", "value": "Boil water, steep the leaves, pour."}]},
        {"id": "000000099999", "image": "coco/train2017/000000099999.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]},
        {"id": "2354786", "image": "gqa/images/2354786.jpg", "conversations": [
            {"from": "human", "value": "<image>\nIs it day?"}, {"from": "gpt", "value": "No"}]},
    ]
    return _put(root, "llava_v1_5_mix665k.json", json.dumps(rows, indent=1, ensure_ascii=False))


LLAVA_MIX = {"rows": 8, "written": 6, "skipped": {"missing_image": ["000000099999"], "duplicate_id": ["2354786"]}}


def llava_pretrain(root: str) -> str:
    """blip_laion_cc_sbu_558k.json: one caption per image, image under a 5-digit folder."""
    rows = []
    for i, caption in enumerate(["select luxury furniture 3 - inch gel memory foam mattress topper", "a dog on a beach", ""]):
        key = f"00453{i:04d}"
        _put(root, f"images/00453/{key}.jpg", image((i * 60, 100, 100)))
        rows.append({"id": key, "image": f"00453/{key}.jpg", "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"}, {"from": "gpt", "value": caption}]})
    return _put(root, "blip_laion_cc_sbu_558k.json", json.dumps(rows))


LLAVA_PRETRAIN = {"rows": 3, "written": 2, "skipped": {"no_answer": ["004530002"]}}


def synthdog(root: str, language: str = "en") -> str:
    """The Hugging Face synthdog layout: data/{train,validation}-*.parquet, columns image
    (struct bytes/path) and ground_truth (a JSON string with gt_parse.text_sequence)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {"en": ["The quick brown fox", "jumps over the lazy dog"], "zh": ["敏捷的棕色狐狸", "跳过了懒狗"]}[language]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def table(rows):
        return pa.table({"image": pa.array([r[0] for r in rows], type=image_type), "ground_truth": [r[1] for r in rows]})

    gt = lambda text: json.dumps({"gt_parse": {"text_sequence": text}}, ensure_ascii=False)
    train = [
        ({"bytes": image((i * 80, 0, 0), (24, 16)), "path": f"image_{i}.jpg"}, gt(t)) for i, t in enumerate(texts)
    ] + [
        ({"bytes": b"\xff\xd8\xff\xe0 truncated", "path": "image_2.jpg"}, gt("unreadable")),  # undecodable bytes
        ({"bytes": image((0, 0, 90)), "path": "image_3.jpg"}, gt("")),  # no text
        ({"bytes": image((0, 90, 0)), "path": "image_4.jpg"}, "not json"),
    ]
    folder = storage.join(root, f"synthdog-{language}")
    storage.filesystem(folder)[0].makedirs(storage.filesystem(folder)[1] + "/data", exist_ok=True)
    with storage.open_url(storage.join(folder, "data/train-00000-of-00001-1a2b3c.parquet"), "wb") as f:
        pq.write_table(table(train), f, row_group_size=2)
    with storage.open_url(storage.join(folder, "data/validation-00000-of-00001-4d5e6f.parquet"), "wb") as f:
        pq.write_table(table([({"bytes": image((5, 5, 5)), "path": "v.jpg"}, gt("held out"))]), f)
    return folder


SYNTHDOG = {"rows": 6, "written": 3, "skipped": {"corrupt_image": ["2"], "no_answer": ["3"], "malformed": ["4"]}}
SYNTHDOG_TRAIN = {"rows": 5, "written": 2}


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def img2dataset(root: str, name: str = "cc3m") -> str:
    """img2dataset --output_format webdataset: 00000.tar holds key.jpg/.txt/.json of the rows that
    downloaded; 00000.parquet lists every row with its status (two dead links); 00001.tar came
    without its parquet and holds a row whose json says it failed, and an empty caption."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = storage.join(root, name)
    rows, members = [], []
    for i, (status, caption) in enumerate([("success", "a bus on a street"), ("failed_to_download", "gone"),
                                           ("success", "two cats asleep"), ("failed_to_download", "gone too"),
                                           ("success", "a red kite")]):
        key = f"0000{i:05d}"
        meta = {"url": f"http://example.invalid/{i}.jpg", "caption": caption, "key": key, "status": status,
                "error_message": None if status == "success" else "HTTP Error 404: Not Found",
                "width": 12 if status == "success" else None, "height": 8 if status == "success" else None}
        rows.append(meta)
        if status == "success":
            members += [(f"{key}.jpg", image((i * 40, 30, 30))), (f"{key}.txt", caption.encode()),
                        (f"{key}.json", json.dumps(meta, indent=4).encode())]
    _put(folder, "00000.tar", _tar(members))
    with storage.open_url(storage.join(folder, "00000.parquet"), "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    _put(folder, "00000_stats.json", json.dumps({"count": 5, "successes": 3, "failed_to_download": 2}))
    second = []
    for i, (status, caption) in enumerate([("success", "a mountain lake"), ("failed_to_resize", "broken"), ("success", "")]):
        key = f"0001{i:05d}"
        second += [(f"{key}.jpg", image((0, i * 50, 0))), (f"{key}.txt", caption.encode()),
                   (f"{key}.json", json.dumps({"key": key, "status": status}).encode())]
    _put(folder, "00001.tar", _tar(second))
    return folder


IMG2DATASET = {"rows": 8, "written": 4, "skipped": {"missing_image": ["000000001", "000000003", "000100001"], "no_answer": ["000100002"]}}


def visual_genome(root: str) -> dict[str, str]:
    """VG 1.2: image_data.json (sizes, urls), question_answers.json, region_descriptions.json,
    objects.json; images under VG_100K/ and VG_100K_2/. Image 3 is not in image_data.json and one
    answer is empty."""
    folder = storage.join(root, "vg")
    _put(folder, "VG_100K/1.jpg", image((1, 2, 3), (800, 600)))
    _put(folder, "VG_100K_2/2.jpg", image((3, 2, 1), (500, 1000)))
    images = [
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "width": 800, "height": 600, "coco_id": None, "flickr_id": None},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg", "width": 500, "height": 1000, "coco_id": 57, "flickr_id": None},
    ]
    _put(folder, "image_data.json", json.dumps(images))
    qas = [
        {"id": 1, "qas": [{"a_objects": [], "question": "What color is the clock?", "image_id": 1, "qa_id": 986768, "answer": "Green.", "q_objects": []},
                          {"a_objects": [], "question": "Where is the clock?", "image_id": 1, "qa_id": 986769, "answer": "", "q_objects": []}]},
        {"id": 2, "qas": [{"a_objects": [], "question": "Who is ríding?", "image_id": 2, "qa_id": 5, "answer": "A man.", "q_objects": []}]},
        {"id": 3, "qas": [{"a_objects": [], "question": "What is it?", "image_id": 3, "qa_id": 6, "answer": "A dog.", "q_objects": []}]},
    ]
    regions = [
        {"id": 1, "regions": [{"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour", "y": 57, "x": 421},
                              {"region_id": 1383, "width": 800, "height": 600, "image_id": 1, "phrase": "a whole street", "y": 0, "x": 0}]},
        {"id": 2, "regions": [{"region_id": 7, "width": 100, "height": 200, "image_id": 2, "phrase": "man riding a bike", "y": 300, "x": 50}]},
    ]
    objects = [
        {"image_id": 1, "objects": [{"synsets": ["clock.n.01"], "h": 339, "object_id": 1058498, "names": ["clock"], "w": 79, "y": 91, "x": 421},
                                    {"synsets": [], "h": 10, "object_id": 5046, "names": [], "w": 10, "y": 1, "x": 1}]},
    ]
    return {
        "vqa": _put(folder, "question_answers.json", json.dumps(qas, ensure_ascii=False)),
        "referring": _put(folder, "region_descriptions.json", json.dumps(regions)),
        "grounded_caption": _put(folder, "objects.json", json.dumps(objects)),
    }


VG_QA = {"rows": 4, "written": 2, "skipped": {"no_answer": ["1-1"], "missing_image": ["3-0"]}}
VG_REGIONS = {"rows": 3, "written": 3}
VG_OBJECTS = {"rows": 2, "written": 1, "skipped": {"no_answer": ["1-1"]}}


def ocr_vqa(root: str) -> str:
    """OCR-VQA's dataset.json keyed by book id, split 1/2/3, images/<id>.<ext> by the download
    script: one GIF saved under .jpg (as in LLaVA's copy), one PNG, one cover missing, one book
    of the val split, one empty answer."""
    folder = storage.join(root, "ocr_vqa")
    _put(folder, "images/761183272.jpg", image((10, 20, 30), fmt="GIF"))
    _put(folder, "images/1405.png", image((30, 20, 10), fmt="PNG"))
    _put(folder, "images/222.jpg", image((9, 9, 9)))
    book = lambda url, qs, ans, split: {"imageURL": url, "questions": qs, "answers": ans, "title": "T",
                                        "authorName": "A", "genre": "Calendars", "split": split}
    data = {
        "761183272": book("http://ecx.images-amazon.com/images/I/61Y5cOdHJbL.jpg",
                          ["Who wrote this book?", "What is the title of this book?", "Is this a games related book?"],
                          ["Sandra Boynton", "Mom's Family Wall Calendar 2016", "No"], 1),
        "1405": book("http://ecx.images-amazon.com/images/I/51.png", ["What is the genre of this book?"], ["Calendars"], 1),
        "999": book("http://ecx.images-amazon.com/images/I/9.jpg", ["Who wrote this book?"], ["Nobody"], 1),
        "222": book("http://ecx.images-amazon.com/images/I/2.jpg", ["Is this a comic book?", "Who wrote it?"], ["Yes", ""], 2),
    }
    return _put(folder, "dataset.json", json.dumps(data, indent=2))


OCR_VQA = {"rows": 7, "written": 5, "skipped": {"missing_image": ["999-0"], "no_answer": ["222-1"]}}
