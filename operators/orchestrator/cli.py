"""``vlm run --config FILE [--backend local|kubernetes] [--set KEY=VALUE ...]`` and ``vlm run status``."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import click

from operators.pytorchjob import BACKENDS

SET_HELP = "Override one config value, e.g. stages.align.max_steps=10 (repeatable; values are YAML)."


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors a user can act on become one line (exit 1), never a traceback."""
    from operators.k8s_errors import JobTimeout, KubeApiError, KubeConfigError
    from operators.local_backend import LocalJobError
    from operators.orchestrator.steps import StepFailed
    from operators.validation import InvalidPyTorchJob
    from vlm_core.config import ConfigError

    try:
        yield
    except (ConfigError, StepFailed, KubeApiError, KubeConfigError, JobTimeout, LocalJobError, InvalidPyTorchJob) as err:
        raise click.ClickException(str(err)) from None


def _stop_on_sigterm() -> None:
    """SIGTERM (a deleted pod, `kill`) unwinds like Ctrl-C: local replicas are stopped and the
    status document says the run was interrupted."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@click.group("run", invoke_without_command=True)
@click.option("--config", "config", help="Run config (YAML, any URL).")
@click.option("--backend", type=click.Choice(BACKENDS.names()), default="local", show_default=True,
              help="Where the PyTorchJobs run: local processes, or the cluster of the kubeconfig / pod.")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.pass_context
def run_group(ctx: click.Context, config: str | None, backend: str, sets: tuple[str, ...]) -> None:
    """Run a whole run: staging, each training stage, eval; then print the results table.

    Restart-safe: run it again after a failure or a kill and it continues where it stopped."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise click.UsageError("give --config FILE (or a subcommand: status)")
    from operators.orchestrator.driver import run
    from operators.run_config import load_run_config

    _stop_on_sigterm()
    with one_line_errors():
        status = run(load_run_config(config, sets), backend, log=lambda line: click.echo(line, err=True))
    click.echo(status.results or "", nl=False)


@run_group.command("status")
@click.option("--config", "config", required=True, help="Run config (YAML, any URL): its output holds the status.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status_command(config: str, sets: tuple[str, ...], as_json: bool) -> None:
    """Print a run's status; exit 0 only when it completed (every step done, results written)."""
    from operators.orchestrator.status import read_status, status_json, status_table, status_url
    from operators.run_config import load_run_config

    with one_line_errors():
        cfg = load_run_config(config, sets)
        doc = read_status(cfg)
    if doc is None:
        click.echo(f"{cfg.name}: no status at {status_url(cfg)}: the run has not started", err=True)
        sys.exit(1)
    click.echo(status_json(doc) if as_json else status_table(doc), nl=False)
    sys.exit(0 if doc.complete and _results_exist(cfg, doc) else 1)


def _results_exist(cfg, doc) -> bool:
    from vlm_core import storage

    if not any(s.kind == "eval" for s in doc.steps):
        return True
    return storage.exists(storage.join(cfg.eval_output(), "results.json"))
