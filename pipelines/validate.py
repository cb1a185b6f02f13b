"""Offline checks of rendered Kubernetes objects (chart output, kustomize output, built jobs).

Three layers, every problem reported:

1. Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields are errors,
   as with ``kubectl --validate=strict``); PyTorchJobs through the vendored CRD schema and the
   training operator's webhook rules (``operators.validation``).
2. Every pod template (Pods, workload controllers, each PyTorchJob replica) against the
   *restricted* Pod Security Standard, the policy a namespace labelled
   ``pod-security.kubernetes.io/enforce: restricted`` admits: non-root, no privilege escalation,
   capabilities dropped (NET_BIND_SERVICE the only addition), a RuntimeDefault/Localhost seccomp
   profile, the restricted volume types, and from the baseline no privileged containers, host
   namespaces, host ports, HostProcess or unmasked /proc
   (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import click
import yaml

# The Kubernetes minor release whose API schemas the objects are checked against.
KUBERNETES_VERSION = "1.30.0"

# Restricted: the only volume types a pod may use.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
RESTRICTED_ADD_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

Object = dict[str, Any]


class MissingExtra(click.ClickException):
    """A clone-side command's library is not installed: one line (exit 1) saying what to install."""


def load_objects(text: str) -> list[Object]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [obj for obj in yaml.safe_load_all(text) if obj]


def _name(obj: Object) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def schema_problems(obj: Object) -> list[str]:
    if obj.get("kind") == "PyTorchJob":
        from operators.validation import pytorchjob_problems

        return pytorchjob_problems(obj)
    try:
        import kubernetes_validate
    except ImportError:
        raise MissingExtra("validating built-in kinds needs kubernetes-validate: pip install 'vlm-platform[cluster]'") from None
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(str(p) for p in err.path)}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


# ----------------------------------------------------------------------------- pod security


def pod_specs(obj: Object) -> Iterator[tuple[str, Object]]:
    """(where, pod spec) of every pod template in ``obj``."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        yield "spec", spec
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template.spec", spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "PyTorchJob":
        for replica, replica_spec in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"spec.pytorchReplicaSpecs.{replica}.template.spec", replica_spec.get("template", {}).get("spec", {})
    elif "template" in spec:  # Deployment, Job, StatefulSet, DaemonSet, ReplicaSet
        yield "spec.template.spec", spec["template"].get("spec", {})


def restricted_problems(pod: Object) -> list[str]:
    """Where ``pod`` (a pod spec) breaks the restricted Pod Security Standard."""
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field}: host namespaces are not allowed")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volumes.{volume.get('name')}: type {', '.join(sorted(kinds))} is not allowed")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser: 0 (root) is not allowed")
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess is not allowed")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        problems.append(f"securityContext.seccompProfile.type: {pod_seccomp} is not allowed")
    for list_name in CONTAINER_LISTS:
        for container in pod.get(list_name) or []:
            where = f"{list_name}.{container.get('name')}"
            problems += [f"{where}.{p}" for p in _container_problems(container, pod_ctx)]
    return problems


def _container_problems(container: Object, pod_ctx: Object) -> list[str]:
    ctx = container.get("securityContext") or {}
    problems = []
    if ctx.get("privileged"):
        problems.append("securityContext.privileged: privileged containers are not allowed")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation must be false")
    non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    if non_root is not True:
        problems.append("securityContext.runAsNonRoot must be true (here or on the pod)")
    if ctx.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser: 0 (root) is not allowed")
    seccomp = (ctx.get("seccompProfile") or {}).get("type") or (pod_ctx.get("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_ALLOWED:
        problems.append("securityContext.seccompProfile.type must be RuntimeDefault or Localhost (here or on the pod)")
    capabilities = ctx.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("securityContext.capabilities.drop must include ALL")
    extra = set(capabilities.get("add") or []) - RESTRICTED_ADD_CAPABILITIES
    if extra:
        problems.append(f"securityContext.capabilities.add: {', '.join(sorted(extra))} not allowed (only NET_BIND_SERVICE)")
    if (ctx.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess is not allowed")
    if ctx.get("procMount") not in (None, "Default"):
        problems.append(f"securityContext.procMount: {ctx['procMount']} is not allowed")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            problems.append(f"ports: hostPort {port['hostPort']} is not allowed")
    return problems


def pod_security_problems(obj: Object) -> list[str]:
    return [f"{where}.{p}" for where, pod in pod_specs(obj) for p in restricted_problems(pod)]


def object_problems(obj: Object) -> list[str]:
    return [f"{_name(obj)}: {p}" for p in schema_problems(obj) + pod_security_problems(obj)]


def problems(objects: Iterable[Object]) -> list[str]:
    return [p for obj in objects for p in object_problems(obj)]
