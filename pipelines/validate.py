"""Offline checks of rendered Kubernetes objects (chart output, kustomize output).

Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields are errors,
as with ``kubectl --validate=strict``); PyTorchJobs through the vendored CRD schema and the
training operator's webhook rules (``operators.validation``). Every problem is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

# The Kubernetes minor release whose API schemas the objects are checked against.
KUBERNETES_VERSION = "1.30.0"


def load_objects(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [obj for obj in yaml.safe_load_all(text) if obj]


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def object_problems(obj: dict[str, Any]) -> list[str]:
    if obj.get("kind") == "PyTorchJob":
        from operators.validation import pytorchjob_problems

        return [f"{_name(obj)}: {p}" for p in pytorchjob_problems(obj)]
    try:
        import kubernetes_validate
    except ImportError as err:  # a test/dev extra: pip install 'vlm-platform[test]'
        raise RuntimeError("validating built-in kinds needs kubernetes-validate (the [test] extra)") from err
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        return [f"{_name(obj)}: {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{_name(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


def problems(objects: Iterable[dict[str, Any]]) -> list[str]:
    return [p for obj in objects for p in object_problems(obj)]
