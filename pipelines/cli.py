"""``vlm pipeline compile|run|manifests|chart-values|validate`` and ``vlm tensorboard``."""

from __future__ import annotations

import sys

import click


@click.group("pipeline")
def pipeline_group() -> None:
    """The KFP pipeline (compile, run locally) and the cluster files generated from a run config."""


@pipeline_group.command("compile")
@click.option("--config", "config", default=None, help="Compile the pipeline of this run config's stages (default: align -> instruct -> eval).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value before compiling (repeatable).")
@click.option("-o", "--output", "output", default=None,
              help="YAML file to write (default: pipelines/vlm_pipeline.yaml; with --config: <run name>-pipeline.yaml).")
def compile_command(config: str | None, sets: tuple[str, ...], output: str | None) -> None:
    """Compile the pipeline to the YAML that the KFP UI uploads."""
    from operators.orchestrator.cli import one_line_errors
    from pipelines.pipeline import COMPILED_PATH, DEFAULT_SHAPE, PipelineShape, compile_pipeline

    if config is None:
        if sets:
            raise click.UsageError("--set needs --config")
        click.echo(f"wrote {compile_pipeline(output or COMPILED_PATH, DEFAULT_SHAPE)}")
        return
    from operators.run_config import load_run_config

    with one_line_errors():
        cfg = load_run_config(config, sets)
        shape = PipelineShape.of(cfg)
    click.echo(f"wrote {compile_pipeline(output or f'{cfg.name}-pipeline.yaml', shape)}")


@pipeline_group.command("run")
@click.option("--config", "config", required=True, help="Run config (YAML, any URL).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable; values are YAML).")
@click.option("--s3", is_flag=True, help="Keep data and outputs in a local moto S3 server instead of a folder.")
@click.option("--pipeline-root", default=None, help="Folder for KFP's task outputs (default: <output>/kfp).")
@click.option("--local", "_local", is_flag=True, hidden=True, help="Accepted for older command lines: runs are local.")
def run_command(config: str, sets: tuple[str, ...], s3: bool, pipeline_root: str | None, _local: bool) -> None:
    """Run the KFP pipeline of a config on this machine (kfp.local) and print the eval table."""
    from operators.orchestrator.cli import one_line_errors
    from pipelines.local import run_local

    with one_line_errors():
        click.echo(run_local(config, sets=sets, s3=s3, pipeline_root=pipeline_root), nl=False)


def _load(config: str):
    """The run config at ``config``; a bad one is a one-line usage error, not a traceback."""
    from vlm_core.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


@pipeline_group.command("manifests")
@click.option("--config", "config", default=None, help="Run config (default: the chart's example run, the quickstart on its PVC).")
@click.option("-o", "--output", "output", default=None, help="Folder to write (default: manifests/).")
def manifests_command(config: str | None, output: str | None) -> None:
    """Write the kustomize base (`kubectl apply -k`): the Helm chart rendered for a run config."""
    from pipelines.manifests import MANIFESTS_DIR, manifest_files, write_manifests

    files = manifest_files(_load(config), source=config) if config else manifest_files()
    for path in write_manifests(files, output or MANIFESTS_DIR):
        click.echo(f"wrote {path}")


@pipeline_group.command("chart-values")
@click.option("--config", "config", default=None, help="Your run config: write values that install it.")
@click.option("-o", "--output", "output", default=None, help="File for --config's values (default: stdout).")
@click.option("--write", is_flag=True, help="Regenerate the chart's values.yaml and values.schema.json.")
def chart_values_command(config: str | None, output: str | None, write: bool) -> None:
    """Helm values for a run config, or (--write) the chart's own generated files."""
    import yaml

    from pipelines import chart_values

    if not (write or config):
        raise click.UsageError("give --config FILE, --write, or both")
    if write:
        for path in chart_values.write_chart_files():
            click.echo(f"wrote {path}")
    if config:
        text = yaml.safe_dump(chart_values.user_values(_load(config)), sort_keys=False)
        if output:
            with open(output, "w") as f:
                f.write(text)
        else:
            click.echo(text, nl=False)


@pipeline_group.command("validate")
@click.argument("files", nargs=-1, required=True)
def validate_command(files: tuple[str, ...]) -> None:
    """Check rendered objects offline (built-in kinds strictly, PyTorchJobs by CRD + webhook rules).

    Use '-' for stdin, e.g. `kubectl kustomize manifests/ | vlm pipeline validate -`."""
    from pipelines.validate import load_objects, problems

    found: list[str] = []
    for file in files:
        if file == "-":
            text = sys.stdin.read()
        else:
            with open(file) as f:
                text = f.read()
        found += [f"{file}: {p}" for p in problems(load_objects(text))]
    for problem in found:
        click.echo(problem, err=True)
    sys.exit(1 if found else 0)


@click.command("tensorboard")
@click.option("--output", "output", default=None, help="Run output URL; serves <output>/tensorboard.")
@click.option("--logdir", default=None, help="A TensorBoard log dir to serve instead (any URL).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=6006, show_default=True, type=int)
def tensorboard_command(output: str | None, logdir: str | None, host: str, port: int) -> None:
    """Start TensorBoard on a run's event files (local folder or s3://)."""
    from pipelines.tensorboard import logdir_for, serve

    if (output is None) == (logdir is None):
        raise click.UsageError("give exactly one of --output or --logdir")
    serve(logdir or logdir_for(output), host=host, port=port)
