"""`vlm job render|submit|run`: one step's PyTorchJob, printed, created on a cluster, or run to its end.

Every command takes either a YAML FILE (ConfigMap + PyTorchJob, as ``render`` prints) or
``--config X --step S`` (a training stage or ``eval``, with ``--set KEY=VALUE`` overrides),
which builds the same objects. To run a whole run (staging, every stage, eval) use ``vlm run``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from operators.orchestrator.cli import SET_HELP, one_line_errors
from operators.pytorchjob import BACKENDS, EVAL
from vlm_core.config import STAGE_NAMES


def _objects(file: str | None, config: str | None, step: str | None, sets: tuple[str, ...]) -> list[dict[str, Any]]:
    import yaml

    from operators.pytorchjob import KIND, render_job
    from operators.run_config import load_run_config
    from operators.validation import validate_pytorchjob
    from vlm_core import storage

    if file and (config or sets):
        raise click.UsageError("give either FILE or --config/--step/--set, not both")
    if file:
        objects = [o for o in yaml.safe_load_all(storage.read_text(file)) if o]
        jobs = [o for o in objects if o.get("kind") == KIND]
        if not jobs:
            raise click.UsageError(f"{file} holds no PyTorchJob")
        for job in jobs:
            validate_pytorchjob(job)
        return objects
    if not (config and step):
        raise click.UsageError("give FILE, or both --config and --step")
    return render_job(load_run_config(config, sets), step)


def _source_options(command):
    for decorator in reversed(
        [
            click.argument("file", required=False),
            click.option("--config", "config", help="Run config (any fsspec URL)."),
            click.option("--step", "--stage", "step", type=click.Choice([*STAGE_NAMES, EVAL]), help="A training stage, or eval."),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP),
        ]
    ):
        command = decorator(command)
    return command


@click.group("job")
def job_group() -> None:
    """Build, submit and run the PyTorchJob of one step (a training stage or eval)."""


@job_group.command("render")
@_source_options
def render_command(file, config, step, sets) -> None:
    """Print the ConfigMap and the validated PyTorchJob of a step as YAML."""
    from operators.pytorchjob import render_yaml

    with one_line_errors():
        click.echo(render_yaml(_objects(file, config, step, sets)), nl=False)


@job_group.command("submit")
@_source_options
@click.option("--context", help="kubeconfig context (outside a cluster).")
def submit_command(file, config, step, sets, context) -> None:
    """Create the step's PyTorchJob on the cluster, or adopt the one of that name; don't wait."""
    from kubernetes import client

    from operators.k8s_backend import KubernetesBackend, load_kube_config
    from operators.pytorchjob import split_objects

    with one_line_errors():
        job, config_maps = split_objects(_objects(file, config, step, sets))
        load_kube_config(context)
        backend = KubernetesBackend(api_client=client.ApiClient(), log=click.echo)
        namespace = job["metadata"].get("namespace") or "default"
        if backend.get(job["metadata"]["name"], namespace) is not None:
            click.echo(f"pytorchjob {namespace}/{job['metadata']['name']} exists: left as it is")
            return
        for obj in config_maps:
            backend.apply_config_map(obj, namespace)
        backend.submit(job, namespace)


@job_group.command("run")
@_source_options
@click.option("--backend", type=click.Choice(BACKENDS.names()), default="local", show_default=True,
              help="local: the replicas as processes here; kubernetes: on the cluster, watched.")  # fmt: skip
@click.option("--workdir", default="job-work", show_default=True, help="local: folder for volumes and replica logs.")
@click.option("--timeout", type=float, help="Seconds before the job is stopped and failed.")
@click.option("--local", "_local", is_flag=True, hidden=True, help="Accepted for older command lines (= --backend local).")
def run_command(file, config, step, sets, backend, workdir, timeout, _local) -> None:
    """Run a step's PyTorchJob to its end (locally with the training operator's env and restart rules)."""
    from operators.pytorchjob import job_backend

    options = {"workdir": workdir} if backend == "local" else {}
    with one_line_errors():
        objects = _objects(file, config, step, sets)
        result = job_backend(backend, timeout=timeout, log=click.echo, **options).run(objects)
    click.echo(result.describe())
    sys.exit(0 if result.succeeded else 1)
