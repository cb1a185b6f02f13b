"""`vlm chat`: ask a checkpoint about an image, streaming the answer token by token.

The prompt goes through the same template and generation code as `vlm eval run` (greedy
decoding), so what you see here is what the benchmarks score. Each question is one turn.
"""

from __future__ import annotations

import sys

import click


@click.command("chat")
@click.option("--checkpoint", required=True, help="Checkpoint URL (local path or s3://).")
@click.option("--image", default=None, help="Image URL to ask about.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.argument("prompt", required=False)
def chat_command(checkpoint: str, image: str | None, max_new_tokens: int, prompt: str | None) -> None:
    """Answer PROMPT once, or, without PROMPT, every line read from stdin (Ctrl-D ends)."""
    from transformers import TextStreamer

    from vlm_core.eval import distributed
    from vlm_core.eval.benchmarks import EvalRequest
    from vlm_core.eval.generate import generate_answers
    from vlm_core.models.checkpoint import load_checkpoint

    model, processor = load_checkpoint(checkpoint)
    model.to(distributed.device()).eval()
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def ask(text: str) -> None:
        [record] = generate_answers(
            model,
            processor,
            [EvalRequest("chat", text, image)],
            batch_size=1,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            progress=False,
        )
        if record.get("error"):
            raise click.ClickException(record["error"])

    if prompt is not None:
        ask(prompt)
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip():
            ask(line.strip())
