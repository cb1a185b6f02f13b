"""The `vlm` command line.

Subcommands load lazily (importing torch takes seconds; `vlm config validate` should not).
vlm_core's own commands are listed here; operators and pipelines contribute theirs through the
`vlm.commands` entry-point group, so vlm_core never imports the layers built on it.

`python -m vlm_core.cli train ...` is the command a PyTorchJob's torchrun runs.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import click

# name -> "module:attribute" of a click command
CORE_COMMANDS = {
    "config": "vlm_core.cli:config_group",
    "synth": "vlm_core.data.synth:synth_command",
    "data": "vlm_core.data.cli:data_group",
    "train": "vlm_core.train.cli:train_command",
    "export": "vlm_core.train.cli:export_command",
    "import": "vlm_core.models.importers.cli:import_command",
    "eval": "vlm_core.eval.cli:eval_group",
    "chat": "vlm_core.eval.chat:chat_command",
}


def _plugin_commands() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="vlm.commands")}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = lazy or {}

    def _all(self) -> dict[str, str]:
        return {**self._lazy, **_plugin_commands()}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._all()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        target = self._all().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, lazy=CORE_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate vision-language models, locally or on Kubernetes."""


@click.group("config")
def config_group() -> None:
    """Validate run configs and print their JSON Schema."""


@config_group.command("validate")
@click.argument("files", nargs=-1, required=True)
def config_validate(files: tuple[str, ...]) -> None:
    """Check run config FILES; exit 1 naming every bad field."""
    from vlm_core.config import ConfigError, load_config

    failed = False
    for file in files:
        try:
            cfg = load_config(file)
        except ConfigError as err:
            click.echo(str(err), err=True)
            failed = True
        else:
            click.echo(f"{file}: ok (stages: {', '.join(cfg.stages) or 'none'})")
    sys.exit(1 if failed else 0)


@config_group.command("schema")
def config_schema() -> None:
    """Print the run config's JSON Schema (generated from the pydantic model)."""
    from vlm_core.config import json_schema_text

    click.echo(json_schema_text(), nl=False)


if __name__ == "__main__":
    main()
