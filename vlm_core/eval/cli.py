"""`vlm eval run` (answer + score with a checkpoint, torchrun-aware), `vlm eval score` (score an
existing predictions file) and `vlm eval compare` (a results.json next to published scores)."""

from __future__ import annotations

import json
import sys

import click


@click.group("eval")
def eval_group() -> None:
    """Evaluate checkpoints on MMBench, VQAv2, GQA, TextVQA, VizWiz and the synthetic sets."""


@eval_group.command("run")
@click.option("--config", "config", default=None, help="Run config: benchmarks, file locations, output, checkpoint.")
@click.option("--checkpoint", default=None, help="Checkpoint URL (default: the config's last stage output).")
@click.option("--benchmarks", default=None, help="Comma-separated benchmark names, e.g. mmbench_dev_en,vqav2_val.")
@click.option("--output", default=None, help="Output URL (default: <config output>/eval).")
@click.option("--synth-root", default=None, help="Folder written by `vlm synth OUT` (locates synth_* benchmarks).")
@click.option("--limit", type=int, default=None, help="Only the first N questions of each benchmark.")
@click.option("--batch-size", type=int, default=None)
@click.option("--max-new-tokens", type=int, default=None)
def eval_run(config, checkpoint, benchmarks, output, synth_root, limit, batch_size, max_new_tokens) -> None:
    """Answer and score benchmarks; writes answers/<bench>.jsonl, results.json, results.md."""
    from vlm_core.eval import distributed
    from vlm_core.eval.formats import AnnotationError
    from vlm_core.eval.runner import run_eval

    try:
        results = run_eval(
            config,
            checkpoint=checkpoint,
            benchmarks=benchmarks,
            output=output,
            synth_root=synth_root,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
        )
    except (AnnotationError, ValueError, KeyError) as err:
        raise click.ClickException(str(err).strip('"')) from None
    if distributed.world()[0] == 0:
        from vlm_core.eval.report import results_markdown

        click.echo(results_markdown(results), nl=False)
    distributed.shutdown()


@eval_group.command("score")
@click.option("--benchmark", required=True, help="Benchmark name (e.g. vqav2_val, textvqa_val, mmbench_dev_en).")
@click.option("--predictions", required=True, help="JSON list or JSONL of {question_id, answer} (MMBench: {index, prediction}).")
@click.option("--annotations", required=True, help="The benchmark's official annotation file.")
@click.option("--questions", default=None, help="Questions file, where the benchmark has a separate one.")
def eval_score(benchmark, predictions, annotations, questions) -> None:
    """Score existing predictions; prints one JSON object (``accuracy`` in percent)."""
    from vlm_core.eval.benchmarks import BENCHMARKS
    from vlm_core.eval.formats import AnnotationError

    try:
        bench = BENCHMARKS.get(benchmark)
        if not bench.scored:
            raise click.ClickException(f"{benchmark} is a test split scored by its evaluation server, not locally")
        result = bench.score_files(predictions, annotations, questions)
    except (AnnotationError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err).strip('"')) from None
    json.dump({"benchmark": benchmark, **result}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def _published_names() -> list[str]:
    from vlm_core.eval.compare import load_published

    return sorted(load_published())


@eval_group.command("compare")
@click.argument("results")
@click.option("--against", required=True, type=click.Choice(_published_names()), help="Published model to compare with.")
def eval_compare(results: str, against: str) -> None:
    """This run's scores (RESULTS: a results.json URL) next to published ones, flagging where
    the protocols differ (split, prompt, scorer, decoding, evaluation server, question limit)."""
    from vlm_core import storage
    from vlm_core.eval.compare import compare, compare_markdown, load_published

    try:
        data = json.loads(storage.read_text(results))
    except FileNotFoundError:
        raise click.ClickException(f"{results}: no such file (the results.json written by `vlm eval run`)") from None
    except json.JSONDecodeError as err:
        raise click.ClickException(f"{results}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise click.ClickException(f"{results}: expected results.json's shape, {{benchmark: {{accuracy, ...}}}}")
    model = load_published()[against]
    rows, unmatched = compare(data, model)
    click.echo(compare_markdown(rows, unmatched, model), nl=False)
