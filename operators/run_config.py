"""Load a run config the way every command of the platform does: the file, then ``--set`` pairs.

``--set KEY=VALUE`` (repeatable) is the CLI form of ``RunConfig.with_overrides`` (the one override
path): values are YAML (``3``, ``true``, ``[a, b]``, ``null``) and a key that names nothing is an
error that names it. Relative local paths are kept as written: every step resolves them against
the directory the command runs in (the local backend runs its replicas there too).
"""

from __future__ import annotations

from collections.abc import Iterable

from vlm_core.config import RunConfig, load_config, parse_override


def apply_sets(cfg: RunConfig, sets: Iterable[str], source: str = "--set") -> RunConfig:
    pairs = dict(parse_override(text) for text in sets)
    return cfg.with_overrides(pairs, source=source) if pairs else cfg


def load_run_config(url: str, sets: Iterable[str] = ()) -> RunConfig:
    return apply_sets(load_config(url), sets)
