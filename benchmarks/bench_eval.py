"""Eval questions/s: batched left-padded greedy decoding vs one question at a time.

Both sides answer the same synthetic VQA + MMBench requests with the same model through
`generate_answers` (same template, same images, greedy); only the batch size differs. The
answers are checked equal, so the speed-up is not bought with different output.
"""

from __future__ import annotations

import tempfile

import torch

from benchmarks.harness import alternate, median, row


def _setup(quick: bool):
    from pathlib import Path

    from vlm_core.config import load_config
    from vlm_core.data.synth import generate
    from vlm_core.eval.benchmarks import BENCHMARKS
    from vlm_core.models.builder import build_vlm

    # The model the quickstart evaluates (random weights: the answers need not be right, only equal).
    quickstart = load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    model, processor = build_vlm(quickstart.model, template=quickstart.data.template, image_aspect="pad",
                                 tokenizer_texts=["What colour is the shape?"])
    model = model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    root = tempfile.mkdtemp(prefix="bench-eval-")
    generate(root, train=4, eval_images=16 if quick else 48)
    per_benchmark = []
    for name in ("synth_vqa", "synth_mmbench"):
        bench = BENCHMARKS.get(name)
        per_benchmark.append(bench.load(bench.default_spec(root)).requests)
    # short open questions and long multiple-choice prompts, alternating, as an eval run mixes them
    requests = [r for pair in zip(*per_benchmark) for r in pair]
    return model, processor, requests[: 16 if quick else 96]


def bench(quick: bool) -> list[dict]:
    from vlm_core.eval.generate import generate_answers

    model, processor, requests = _setup(quick)
    batch_size, max_new_tokens = 32, 8
    out: dict[str, list] = {}

    def one_by_one():
        out["single"] = generate_answers(model, processor, requests, 1, max_new_tokens, progress=False)

    def batched():
        out["batched"] = generate_answers(model, processor, requests, batch_size, max_new_tokens, progress=False)

    single_t, batched_t = alternate(one_by_one, batched, reps=1 if quick else 3)
    same = sum(a == b for a, b in zip(out["single"], out["batched"]))
    n = len(requests)
    return [
        row(
            "eval generation (batched vs one-by-one)",
            "questions/s",
            n / median(single_t),
            n / median(batched_t),
            target=">= 3x",
            note=f"{n} questions, batch {batch_size}, {max_new_tokens} new tokens; {same}/{n} answers identical",
        )
    ]
