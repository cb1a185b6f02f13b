"""`vlm job render|submit|run`: one stage as a PyTorchJob, printed, sent to a cluster, or run here.

Every command takes either a YAML FILE (ConfigMap + PyTorchJob, as ``render`` prints) or
``--config X --stage S``, which builds the same objects.
"""

from __future__ import annotations

import sys
from typing import Any

import click


def _objects(file: str | None, config: str | None, stage: str | None, **overrides: Any) -> list[dict[str, Any]]:
    import yaml

    from operators.pytorchjob import render_stage
    from vlm_core import storage
    from vlm_core.config import load_config

    if file and config:
        raise click.UsageError("give either FILE or --config/--stage, not both")
    if file:
        objects = [o for o in yaml.safe_load_all(storage.read_text(file)) if o]
        if not any(o.get("kind") == "PyTorchJob" for o in objects):
            raise click.UsageError(f"{file} holds no PyTorchJob")
        return objects
    if not (config and stage):
        raise click.UsageError("give FILE, or both --config and --stage")
    return render_stage(load_config(config), stage, **{k: v for k, v in overrides.items() if v})


def _source_options(command):
    for decorator in reversed(
        [
            click.argument("file", required=False),
            click.option("--config", "config", help="Run config (any fsspec URL)."),
            click.option("--stage", type=click.Choice(["align", "instruct", "full"]), help="Stage to run."),
            click.option("--nodes", type=int, help="Override distributed.nodes."),
            click.option("--image", help="Override cluster.image."),
        ]
    ):
        command = decorator(command)
    return command


@click.group("job")
def job_group() -> None:
    """Build, submit and run the PyTorchJobs of training stages."""


@job_group.command("render")
@_source_options
@click.option("--namespace", help="Override cluster.namespace.")
def render_command(file, config, stage, nodes, image, namespace) -> None:
    """Print the ConfigMap and the validated PyTorchJob of a stage as YAML."""
    from operators.pytorchjob import render_yaml

    click.echo(render_yaml(_objects(file, config, stage, nodes=nodes, image=image, namespace=namespace)), nl=False)


@job_group.command("submit")
@_source_options
@click.option("--namespace", help="Namespace (default: the object's).")
@click.option("--wait/--no-wait", default=False, help="Wait for Succeeded/Failed, streaming the master's log.")
@click.option("--timeout", type=float, help="Seconds to wait at most.")
@click.option("--delete", is_flag=True, help="Delete the PyTorchJob when it has finished.")
@click.option("--context", help="kubeconfig context (outside a cluster).")
def submit_command(file, config, stage, nodes, image, namespace, wait, timeout, delete, context) -> None:
    """Create the stage's PyTorchJob on the cluster (attach to it if it exists)."""
    from operators.k8s_backend import load_kube_config, submit_and_wait

    objects = _objects(file, config, stage, nodes=nodes, image=image, namespace=namespace)
    load_kube_config(context)
    result = submit_and_wait(objects, namespace, wait=wait, timeout=timeout, delete=delete, log=click.echo)
    if wait:
        click.echo(f"{result.name}: {result.state} {result.reason} {result.message}".rstrip())
        sys.exit(0 if result.succeeded else 1)


@job_group.command("run")
@_source_options
@click.option("--local", "local", is_flag=True, required=True, help="Run the replicas as local processes.")
@click.option("--workdir", default="job-work", show_default=True, help="Folder for volumes and replica logs.")
@click.option("--timeout", type=float, help="Seconds before the job is stopped and failed.")
def run_command(file, config, stage, nodes, image, local, workdir, timeout) -> None:
    """Run a PyTorchJob on this machine with the training operator's env and restart rules."""
    from operators.local_backend import run_objects

    objects = _objects(file, config, stage, nodes=nodes, image=image)
    result = run_objects(objects, workdir=workdir, timeout=timeout, log=click.echo)
    click.echo(f"{result.name}: {result.state} after {result.restarts} restart(s); logs in {result.log_dir}")
    sys.exit(0 if result.succeeded else 1)
