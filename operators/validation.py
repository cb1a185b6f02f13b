"""Check a PyTorchJob offline the way the API server and the training operator would.

Two layers, every problem reported at once:

1. The CRD's structural schema (``operators/crds/kubeflow.org_pytorchjobs.yaml``, release-1.9),
   checked with jsonschema plus the Kubernetes extensions the API server applies:
   unknown fields are errors (``kubectl`` asks for strict field validation), ``int32`` /
   ``int64`` ranges, ``x-kubernetes-int-or-string`` (quantities such as ``cpu: 4`` or ``"500m"``),
   and the keys of ``x-kubernetes-list-type: map`` lists being unique (two env vars with one name).
   ``x-kubernetes-validations`` holds only a transition rule (``self == oldSelf`` on the queue),
   which applies to updates, never to a new object.
2. The operator's validating webhook: a DNS-1035 name; replica types Master or Worker only; in
   every replica a container named ``pytorch`` (``pytorchjob.CONTAINER``) and an image in every
   container; one Master; ``elasticPolicy`` only with a Worker replica spec; ``runPolicy.managedBy``
   from the known values.
   ``restartPolicy`` is checked against the values the CRD documents (the schema has no enum).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft4Validator, ValidationError, validators

from operators.pytorchjob import CONTAINER, GROUP, KIND, VERSION

REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
MANAGED_BY = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class InvalidPyTorchJob(ValueError):
    """A PyTorchJob the API server or the training operator would reject; lists every problem."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"PyTorchJob {name!r} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------- schema layer


@cache
def crd_schema() -> dict[str, Any]:
    text = resources.files("operators").joinpath("crds/kubeflow.org_pytorchjobs.yaml").read_text()
    crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 8k lines: use libyaml
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _properties(validator, properties, instance, schema):
    yield from Draft4Validator.VALIDATORS["properties"](validator, properties, instance, schema)
    if not validator.is_type(instance, "object") or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if "additionalProperties" in schema:
        return
    for key in instance:
        if key not in properties:
            yield ValidationError(f"unknown field {key!r}", path=[key], validator="properties")


def _int_or_string(validator, flag, instance, schema):
    if flag and not (validator.is_type(instance, "integer") or validator.is_type(instance, "string")):
        yield ValidationError(f"{instance!r} must be an integer or a string")


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set" and len({repr(i) for i in instance}) != len(instance):
        yield ValidationError("duplicate entries in a list-type=set")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[tuple] = set()
        for index, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
                yield ValidationError(f"duplicate entry with {shown}", path=[index])
            seen.add(key)


def _format(validator, fmt, instance, schema):
    bounds = _INT_RANGES.get(fmt)
    if bounds and validator.is_type(instance, "integer") and not bounds[0] <= instance <= bounds[1]:
        yield ValidationError(f"{instance} is out of range for {fmt}")
    elif fmt == "date-time":
        yield from Draft4Validator.VALIDATORS["format"](validator, fmt, instance, schema)


KubernetesValidator = validators.extend(
    Draft4Validator,
    {
        "properties": _properties,
        "x-kubernetes-int-or-string": _int_or_string,
        "x-kubernetes-list-type": _list_type,
        "format": _format,
    },
)


def _path(error: ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def _best_message(error: ValidationError) -> str:
    # anyOf failures (int-or-string) hide the useful message in their context.
    if error.validator == "anyOf" and error.context:
        return "; ".join(sorted({_best_message(e) for e in error.context}))
    if error.validator == "pattern" and error.schema.get("x-kubernetes-int-or-string"):
        return f"{error.instance!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)"
    return error.message


def schema_problems(obj: dict[str, Any]) -> list[str]:
    validator = KubernetesValidator(crd_schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_path(e)}: {_best_message(e)}" for e in errors]


# ----------------------------------------------------------------------------- webhook layer


def _containers(rspec: Any) -> list[Any]:
    try:
        containers = rspec["template"]["spec"]["containers"]
    except (KeyError, TypeError):
        return []
    return containers if isinstance(containers, list) else []


def webhook_problems(obj: dict[str, Any]) -> Iterator[str]:
    if obj.get("apiVersion") != f"{GROUP}/{VERSION}" or obj.get("kind") != KIND:
        yield f"apiVersion/kind: expected {GROUP}/{VERSION} {KIND} (got {obj.get('apiVersion')!r} {obj.get('kind')!r})"
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > 63 or not DNS1035.match(name):
        yield (
            f"metadata.name: {name!r} is not a DNS-1035 label (lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters)"
        )
    spec = obj.get("spec") or {}
    managed_by = (spec.get("runPolicy") or {}).get("managedBy")
    if managed_by is not None and managed_by not in MANAGED_BY:
        yield f"spec.runPolicy.managedBy: {managed_by!r} is not supported; allowed: {', '.join(MANAGED_BY)}"
    specs = spec.get("pytorchReplicaSpecs")
    if not isinstance(specs, dict) or not specs:
        yield "spec.pytorchReplicaSpecs: must be given"
        return
    if spec.get("elasticPolicy") is not None:
        worker = specs.get("Worker")
        if worker is None:
            yield "spec.pytorchReplicaSpecs.Worker: must be configured if elastic policy is used"
        elif isinstance(worker, dict) and isinstance(worker.get("replicas"), int) and worker["replicas"] < 1:
            yield "spec.pytorchReplicaSpecs.Worker.replicas: must be at least 1 worker if elastic policy is used"
        if (spec["elasticPolicy"] or {}).get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
            yield "spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode"
    for rtype, rspec in specs.items():
        path = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            yield f"{path}: replica type {rtype!r} is not supported; allowed: {', '.join(REPLICA_TYPES)}"
        containers = _containers(rspec)
        if not containers:
            yield f"{path}.template.spec.containers: must be specified"
        for index, container in enumerate(containers):
            if isinstance(container, dict) and not container.get("image"):
                yield f"{path}.template.spec.containers[{index}].image: must be given"
        if containers and not any(isinstance(c, dict) and c.get("name") == CONTAINER for c in containers):
            yield f"{path}.template.spec.containers: must have a container named {CONTAINER!r}"
        if not isinstance(rspec, dict):
            continue
        if rtype == "Master" and rspec.get("replicas") != 1:
            yield f"{path}.replicas: must be 1 (got {rspec.get('replicas')!r})"
        policy = rspec.get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            yield f"{path}.restartPolicy: {policy!r} is not supported; allowed: {', '.join(RESTART_POLICIES)}"


# ----------------------------------------------------------------------------- entry point


def pytorchjob_problems(obj: dict[str, Any]) -> list[str]:
    return schema_problems(obj) + list(webhook_problems(obj))


def validate_pytorchjob(obj: dict[str, Any]) -> dict[str, Any]:
    """Return ``obj`` unchanged, or raise ``InvalidPyTorchJob`` naming every problem."""
    problems = pytorchjob_problems(obj)
    if problems:
        name = (obj.get("metadata") or {}).get("name", "<unnamed>") if isinstance(obj, dict) else "<not a mapping>"
        raise InvalidPyTorchJob(str(name), problems)
    return obj
