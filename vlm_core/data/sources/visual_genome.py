"""Visual Genome's annotation files as VQA, referring and grounded-caption samples.

Published layout (VG 1.2/1.4 downloads, field names as in the VG API docs)::

    image_data.json           [{"image_id" (1.0: "id"), "url": ".../VG_100K_2/1.jpg", "width", "height", "coco_id", "flickr_id"}]
    question_answers.json     [{"id": <image id>, "qas": [{"qa_id", "image_id", "question", "answer", ...}]}]
    region_descriptions.json  [{"id": <image id>, "regions": [{"region_id", "image_id", "phrase", "x", "y", "width", "height"}]}]
    objects.json              [{"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names": [...], "synsets"}]}]

``url`` names one of the last three (it says the task); ``image_data.json`` beside it gives each
image's size (boxes are normalized without opening images) and its path, the last two parts of
its ``url`` (``VG_100K_2/1.jpg``) under ``image_root`` (default: the annotation folder; LLaVA's
layout is ``.../vg``). Every ``turns_per_sample`` items of one image make one sample.

Boxes (``box_format``): ``llava`` is LLaVA-1.5's ``[x1, y1, x2, y2]`` in 0-1 relative to the
image padded to a square (centred, as its training pads it), two decimals as in the published
mix; ``qwen_vl`` is Qwen-VL's ``<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`` on 0-1000 of the
original image.
"""

from __future__ import annotations

from typing import Any

from vlm_core import storage
from vlm_core.config import DatasetSpec
from vlm_core.data.readers import _image_root, register_reader
from vlm_core.data.sources.chunked import ChunkedRecordSource
from vlm_core.data.sources.jsonscan import iter_array
from vlm_core.data.sources.prompts import pick
from vlm_core.data.types import BadSample, RawSample

# file name -> (task, key of the item list in a record)
TASKS = {
    "question_answers.json": ("vqa", "qas"),
    "region_descriptions.json": ("referring", "regions"),
    "objects.json": ("grounded_caption", "objects"),
}
DESCRIBE = "Please provide a short description for this region: {box}."
LOCATE = "Please provide the bounding box coordinate of the region this sentence describes: {phrase}"


def _image_id(record: dict[str, Any]) -> Any:
    return record.get("image_id", record.get("id"))


def _box(item: dict[str, Any]) -> tuple[float, float, float, float]:
    width = item.get("width", item.get("w"))
    height = item.get("height", item.get("h"))
    return float(item["x"]), float(item["y"]), float(item["x"]) + float(width), float(item["y"]) + float(height)


def llava_box(box: tuple[float, float, float, float], width: int, height: int) -> str:
    side = max(width, height)
    dx, dy = (side - width) / 2, (side - height) / 2
    x1, y1, x2, y2 = ((v + d) / side for v, d in zip(box, (dx, dy, dx, dy)))
    return repr([round(min(max(v, 0.0), 1.0), 2) for v in (x1, y1, x2, y2)])


def qwen_box(box: tuple[float, float, float, float], width: int, height: int) -> str:
    x1, y1, x2, y2 = (min(max(int(v / size * 1000), 0), 999) for v, size in zip(box, (width, height, width, height)))
    return f"<box>({x1},{y1}),({x2},{y2})</box>"


class VisualGenomeSource(ChunkedRecordSource):
    def __init__(self, spec: DatasetSpec) -> None:
        from tqdm import tqdm

        name = spec.url.rstrip("/").rsplit("/", 1)[-1]
        if name not in TASKS:
            raise ValueError(f"{spec.url}: a visual_genome url names one of {', '.join(TASKS)} (the file says the task)")
        self.url, self.task, self.items_key = spec.url, *TASKS[name]
        self.image_root, self.box_format, self.seed = _image_root(spec), spec.box_format, spec.seed
        self.turns = spec.turns_per_sample
        self.images = self._image_data(storage.join(storage.parent(spec.url), "image_data.json"))
        super().__init__(spec.url)
        with storage.open_url(spec.url, "rb") as f:
            for offset, record in tqdm(iter_array(f), desc=f"indexing {spec.url}", unit=" images", disable=None, leave=False):
                items = record.get(self.items_key) or [] if isinstance(record, dict) else []
                self._rows += len(items)
                for start in range(0, len(items), self.turns):
                    chunk = items[start : start + self.turns]
                    words = sum(len(str(i.get("question", "")).split()) + len(str(i.get("answer", i.get("phrase", ""))).split()) for i in chunk)
                    self._add_sample(offset, start, words + 12 * len(chunk))  # + the fixed prompt and the box

    @staticmethod
    def _image_data(url: str) -> dict[int, tuple[str, int, int]]:
        """image id -> (path under the image root, width, height)."""
        if not storage.exists(url):
            raise FileNotFoundError(f"{url} is missing: visual_genome needs image_data.json beside its annotations")
        images = {}
        with storage.open_url(url, "rb") as f:
            for _, image in iter_array(f):
                path = "/".join(str(image["url"]).rstrip("/").rsplit("/", 2)[-2:])
                images[int(_image_id(image))] = (path, int(image["width"]), int(image["height"]))
        return images

    def __getitem__(self, index: int) -> RawSample:
        record, start = self._record(index)
        image_id = int(_image_id(record))
        sample_id = f"{image_id}-{start}"
        if image_id not in self.images:
            raise BadSample("missing_image", f"image {image_id} is not in image_data.json", sample_id=sample_id)
        path, width, height = self.images[image_id]
        items = record[self.items_key][start : start + self.turns]
        turns = [turn for n, item in enumerate(items) for turn in self._turns(item, width, height, f"{sample_id}-{n}")]
        if not turns:
            raise BadSample("no_answer", f"no usable {self.items_key} (empty answers or names)", sample_id=sample_id)
        return RawSample(id=sample_id, images=[storage.join(self.image_root, path)], conversations=turns,
                         meta={"image_id": image_id, "task": self.task})

    def _turns(self, item: dict[str, Any], width: int, height: int, key: str) -> list[dict[str, str]]:
        if self.task == "vqa":
            question, answer = str(item.get("question", "")).strip(), str(item.get("answer", "")).strip()
            return _exchange(question, answer) if question and answer else []
        phrase = str(item.get("phrase", "")).strip() if self.task == "referring" else next(iter(item.get("names") or []), "")
        phrase = phrase.strip()
        if not phrase:
            return []
        box = _box(item)
        if self.box_format == "qwen_vl":
            ref = f"<ref>{phrase}</ref>"
            region = qwen_box(box, width, height)
            locate, describe = _exchange(LOCATE.format(phrase=ref), ref + region), _exchange(DESCRIBE.format(box=region), phrase)
        else:
            region = llava_box(box, width, height)
            locate, describe = _exchange(LOCATE.format(phrase=phrase), region), _exchange(DESCRIBE.format(box=region), phrase)
        if self.task == "grounded_caption":
            return describe
        return pick((locate, describe), self.seed, key)  # referring: both directions, as LLaVA-1.5 mixes them


def _exchange(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


register_reader("visual_genome", VisualGenomeSource, options={"box_format", "turns_per_sample"})
