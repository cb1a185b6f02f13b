"""`vlm synth OUT`: a synthetic visual task a tiny model learns on a laptop CPU.

Each image holds one large coloured shape in one quadrant. The training data are LLaVA JSONL
files (``align.jsonl``: captions; ``instruct.jsonl``: short-answer and multiple-choice
questions), and a held-out split (different images) is written in the published benchmark
formats (VQAv2 questions/annotations, an MMBench TSV), so the real eval code scores it.

Shapes are drawn large (0.7-0.95 of their quadrant) because small ones stall shape accuracy.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import click

from vlm_core import storage
from vlm_core.eval.prompts import LETTER_INSTRUCTION, SHORT_ANSWER

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS)}

# Phrased as the synthetic benchmarks ask (LLaVA-1.5's VQA and MMBench suffixes).
MULTIPLE_CHOICE = LETTER_INSTRUCTION["en"]
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption of the image.",
    "What does the image show?",
    "Summarize the picture in a few words.",
)
QUESTIONS = {
    "colour": ("What colour is the shape?", "What is the colour of the shape?"),
    "shape": ("What shape is in the image?", "Which shape is shown?"),
    "position": ("Where is the shape?", "In which part of the image is the shape?"),
}
MC_QUESTIONS = {
    "colour": "What colour is the shape in the image?",
    "shape": "Which shape does the image show?",
    "position": "Where in the image is the shape?",
}
CHOICES = {"colour": tuple(COLOURS), "shape": SHAPES, "position": POSITIONS}
LETTERS = "ABCD"
MC_CONVERSATIONS = 2  # per image, next to one short-answer conversation
SUPERSAMPLE = 4  # draw larger, then area-average down: smooth edges, no ringing outside the shape


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str
    scale: float  # shape size as a fraction of its quadrant
    dx: float  # offset of the shape inside its quadrant's free margin, 0..1
    dy: float

    def answer(self, attribute: str) -> str:
        return getattr(self, attribute)

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} at the {self.position}"


def random_scene(rng: Any) -> Scene:
    return Scene(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        position=str(rng.choice(POSITIONS)),
        scale=float(rng.uniform(0.7, 0.95)),
        dx=float(rng.uniform()),
        dy=float(rng.uniform()),
    )


def render(scene: Scene, size: int) -> bytes:
    """PNG bytes of ``scene`` on a white ``size`` x ``size`` canvas."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    quadrant = big / 2
    side = scene.scale * quadrant
    row, col = scene.position.split()
    x0 = (quadrant if col == "right" else 0) + scene.dx * (quadrant - side)
    y0 = (quadrant if row == "bottom" else 0) + scene.dy * (quadrant - side)
    box = (x0, y0, x0 + side, y0 + side)
    image = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    buf = io.BytesIO()
    image.resize((size, size), Image.BOX).save(buf, format="PNG")
    return buf.getvalue()


def _human(text: str, image: bool = True) -> dict[str, str]:
    return {"from": "human", "value": ("<image>\n" if image else "") + text}


def multiple_choice(scene: Scene, attribute: str, rng: Any) -> tuple[str, dict[str, str], str]:
    """(question, {letter: option}, answer letter) with the options in a random order."""
    options = list(CHOICES[attribute])
    rng.shuffle(options)
    lettered = dict(zip(LETTERS, options))
    answer = next(letter for letter, option in lettered.items() if option == scene.answer(attribute))
    return MC_QUESTIONS[attribute], lettered, answer


def mc_prompt(question: str, options: dict[str, str]) -> str:
    """LLaVA-1.5's MMBench prompt: question, one lettered option per line, the letter suffix."""
    return "\n".join([question, *(f"{letter}. {option}" for letter, option in options.items()), MULTIPLE_CHOICE])


def instruct_records(image: str, scene: Scene, index: int, rng: Any) -> list[dict[str, Any]]:
    """One conversation of short answers (LLaVA-1.5's VQA prompt, either phrasing) and
    ``MC_CONVERSATIONS`` of multiple choice (its MMBench prompt, the options in a fresh random
    order each time) per image, each asking about every attribute once, in a random order, with
    the image in the first turn (LLaVA-1.5's multi-turn form). Multiple choice gets most of the
    turns because its letters are learnt long after the short answers (docs/ARCHITECTURE.md,
    synthetic data)."""

    def turns(ask) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for k in rng.permutation(len(CHOICES)):
            prompt, answer = ask(list(CHOICES)[k])
            out += [_human(prompt, image=not out), {"from": "gpt", "value": answer}]
        return out

    def short_answer(attribute: str) -> tuple[str, str]:
        phrasing = QUESTIONS[attribute][int(rng.integers(len(QUESTIONS[attribute])))]
        return f"{phrasing}\n{SHORT_ANSWER}", scene.answer(attribute)

    def lettered(attribute: str) -> tuple[str, str]:
        question, options, answer = multiple_choice(scene, attribute, rng)
        return mc_prompt(question, options), answer

    records = [{"id": f"instruct-{index:05d}-vqa", "image": image, "conversations": turns(short_answer)}]
    for k in range(MC_CONVERSATIONS):
        records.append({"id": f"instruct-{index:05d}-mc{k}", "image": image, "conversations": turns(lettered)})
    return records


def _unique_scenes(n: int, size: int, rng: Any, taken: set[str]) -> list[tuple[Scene, bytes]]:
    """``n`` scenes whose rendered pixels differ from each other and from ``taken`` (hashes)."""
    out = []
    while len(out) < n:
        scene = random_scene(rng)
        png = render(scene, size)
        digest = hashlib.sha256(png).hexdigest()
        if digest not in taken:
            taken.add(digest)
            out.append((scene, png))
    return out


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def generate(out: str, seed: int = 0, train: int = 3000, eval_images: int = 300, image_size: int = 32) -> dict[str, Any]:
    """Write the synthetic dataset under ``out`` (any URL); returns what ``synth.json`` holds."""
    import tempfile

    import numpy as np
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    hashes: set[str] = set()
    train_scenes = _unique_scenes(train, image_size, rng, hashes)
    eval_scenes = _unique_scenes(eval_images, image_size, rng, hashes)

    with tempfile.TemporaryDirectory(prefix="vlm-synth-") as tmp:
        root = storage.local_path(out) if storage.is_local(out) else tmp
        files: dict[str, bytes | str] = {}
        align, instruct = [], []
        for i, (scene, png) in enumerate(tqdm(train_scenes, desc="train images", disable=None)):
            image = f"images/train_{i:05d}.png"
            files[image] = png
            prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
            align.append(
                {"id": f"align-{i:05d}", "image": image,
                 "conversations": [_human(prompt), {"from": "gpt", "value": scene.caption()}]}
            )
            instruct += instruct_records(image, scene, i, rng)
        rng.shuffle(instruct)  # mix question kinds so any prefix of the file is balanced
        files["align.jsonl"] = _jsonl(align)
        files["instruct.jsonl"] = _jsonl(instruct)
        vqa = _vqa_files(eval_scenes, files)
        files["eval/mmbench_dev.tsv"] = _mmbench_tsv(eval_scenes, rng)

        summary = {
            "task": "one coloured shape in one quadrant of the image",
            "seed": seed,
            "image_size": image_size,
            "train_images": train,
            "eval_images": eval_images,
            "align_samples": len(align),
            "instruct_samples": len(instruct),
            "vqa_questions": vqa,
            "mmbench_questions": eval_images,
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "positions": list(POSITIONS),
            "chance": CHANCE,
            "files": {
                "align": "align.jsonl",
                "instruct": "instruct.jsonl",
                "images": "images/",
                "vqa_questions": "eval/vqa/questions.json",
                "vqa_annotations": "eval/vqa/annotations.json",
                "vqa_images": "eval/vqa/images/",
                "mmbench": "eval/mmbench_dev.tsv",
            },
        }
        files["synth.json"] = json.dumps(summary, indent=2) + "\n"
        for rel, data in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        if not storage.is_local(out):
            storage.upload_dir(root, out)
    return summary


def _vqa_files(scenes: list[tuple[Scene, bytes]], files: dict[str, bytes | str]) -> int:
    """VQAv2-format questions + annotations (every one of the 10 answers agrees); returns the count."""
    questions, annotations = [], []
    for i, (scene, png) in enumerate(scenes):
        image_id = i + 1
        files[f"eval/vqa/images/{image_id}.png"] = png
        for k, attribute in enumerate(QUESTIONS):
            question_id = image_id * 10 + k
            answer = scene.answer(attribute)
            questions.append({"image_id": image_id, "question": QUESTIONS[attribute][0], "question_id": question_id})
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": attribute,
                    "answer_type": "other",
                    "multiple_choice_answer": answer,
                    "answers": [
                        {"answer": answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)
                    ],
                }
            )
    files["eval/vqa/questions.json"] = json.dumps({"questions": questions})
    files["eval/vqa/annotations.json"] = json.dumps({"annotations": annotations})
    return len(questions)


def _mmbench_tsv(scenes: list[tuple[Scene, bytes]], rng: Any) -> str:
    """One MMBench-format row per eval image (cycling colour/shape/position); image as base64 PNG."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"])
    attributes = list(CHOICES)
    for i, (scene, png) in enumerate(scenes):
        attribute = attributes[i % len(attributes)]
        question, options, answer = multiple_choice(scene, attribute, rng)
        row_options = [options.get(letter, "") for letter in LETTERS]
        writer.writerow(
            [i, question, "", *row_options, answer, attribute, "attribute_perception", "dev",
             base64.b64encode(png).decode("ascii")]
        )
    return buf.getvalue()


@click.command("synth")
@click.argument("out")
@click.option("--seed", default=0, show_default=True, help="Everything written follows from this seed.")
@click.option(
    "--train", "train", default=3000, show_default=True,
    help=f"Training images ({1 + MC_CONVERSATIONS} instruct conversations each).",
)
@click.option("--eval", "eval_images", default=300, show_default=True, help="Held-out eval images.")
@click.option("--image-size", default=32, show_default=True, help="Image side in pixels.")
def synth_command(out: str, seed: int, train: int, eval_images: int, image_size: int) -> None:
    """Write a synthetic shapes dataset (training JSONL + benchmark-format eval split) to OUT."""
    summary = generate(out, seed=seed, train=train, eval_images=eval_images, image_size=image_size)
    click.echo(
        f"{out}: {summary['train_images']} train images ({summary['align_samples']} align, "
        f"{summary['instruct_samples']} instruct samples); {summary['eval_images']} eval images "
        f"({summary['vqa_questions']} VQA questions, {summary['mmbench_questions']} MMBench questions)"
    )
