"""Build the run-time Kubernetes objects of a run: one PyTorchJob (kubeflow.org/v1) per training
stage and one for eval, each with the ConfigMap it mounts. The chart never templates these; this
module is their one source (docs/ARCHITECTURE.md, "Platform").

A step is one PyTorchJob named ``<cfg.name>-<step>`` (``<run>-align``, ``<run>-eval``): a Master
and ``nodes - 1`` Workers (no Worker spec for one node), each a pod whose container ``pytorch``
runs, for a training stage and for eval::

    torchrun -m vlm_core.cli train --config /etc/vlm/config.yaml --stage <stage> --resume auto
    torchrun -m vlm_core.cli eval run --config /etc/vlm/config.yaml

torchrun takes no topology flags: the training operator injects them as environment variables
(``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``; torchrun reads any ``--flag`` from ``PET_FLAG``), so the same command is right
on every replica and the job's replica counts are the single source of truth. ``--resume auto``
makes a restarted pod continue from the newest checkpoint of the stage; eval resumes from the
answers it already wrote.

Each job mounts its own ConfigMap ``<job>-config`` (the exact config that job runs: staged data,
the checkpoint eval scores) at ``/etc/vlm``; it holds no secrets (S3 keys come from a Secret
through ``secretKeyRef`` only). Every object carries the labels ``app.kubernetes.io/name``,
``instance`` and ``part-of`` (the run name) and ``component`` (the step), the same as the
chart's install-time objects, so a run's objects can be listed and deleted by label.

Elastic mode (``cluster.elastic_min_nodes``) emits Workers only, the operator's elastic layout:
the c10d rendezvous lives on worker-0 and ``minReplicas``/``maxReplicas`` count Worker pods.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from vlm_core.config import RunConfig
from vlm_core.registry import Registry

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds its container by this name
PORT_NAME = "pytorchjob-port"  # the operator reads MASTER_PORT from the port with this name
DEFAULT_PORT = 23456

CONFIG_DIR = "/etc/vlm"
CONFIG_FILE = "config.yaml"
CACHE_DIR = "/cache"
NON_ROOT_UID = 1000


EVAL = "eval"  # the step name of eval: job `<run>-eval`, component label `eval`


def job_name(cfg: RunConfig, step: str) -> str:
    return f"{cfg.name}-{step}"


def config_map_name(cfg: RunConfig, step: str) -> str:
    return f"{job_name(cfg, step)}-config"


def labels(cfg: RunConfig, component: str) -> dict[str, str]:
    """The labels of every object of a run (the chart's install-time objects carry the same)."""
    return {
        "app.kubernetes.io/name": "vlm-platform",
        "app.kubernetes.io/instance": cfg.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": cfg.name,
    }


def _check_step(cfg: RunConfig, step: str) -> None:
    if step == EVAL:
        if not cfg.eval.benchmarks:
            raise ValueError("eval has no benchmarks configured (eval.benchmarks is empty)")
    else:
        cfg.stage(step)  # a clear error for an unconfigured stage


def build_config_map(cfg: RunConfig, step: str) -> dict[str, Any]:
    """The ConfigMap carrying the run config of one step as ``config.yaml`` (mounted at /etc/vlm)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(cfg, step),
            "namespace": cfg.cluster.namespace,
            "labels": labels(cfg, step),
        },
        "data": {CONFIG_FILE: cfg.to_yaml()},
    }


def container_command(step: str) -> tuple[list[str], list[str]]:
    """(command, args) of the ``pytorch`` container of a training stage or of eval."""
    config = f"{CONFIG_DIR}/{CONFIG_FILE}"
    if step == EVAL:
        return ["torchrun"], ["-m", "vlm_core.cli", "eval", "run", "--config", config]
    return ["torchrun"], ["-m", "vlm_core.cli", "train", "--config", config, "--stage", step, "--resume", "auto"]


def _resources(cfg: RunConfig) -> dict[str, Any]:
    res = cfg.cluster.resources
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits = dict(requests)
    if res.gpus_per_node > 0:
        # Extended resources are limits-only: the request defaults to the limit.
        limits["nvidia.com/gpu"] = res.gpus_per_node
    return {"requests": requests, "limits": limits}


def _env(cfg: RunConfig, elastic: bool) -> list[dict[str, Any]]:
    storage = cfg.cluster.storage
    env: list[dict[str, Any]] = [
        # Caches on a writable emptyDir: the image runs as a non-root user with no home to write.
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{CACHE_DIR}/torch_extensions"},
    ]
    if elastic:
        # Without a Master the operator injects no PET_NPROC_PER_NODE (it does so with the master env).
        env.append({"name": "PET_NPROC_PER_NODE", "value": str(cfg.distributed.procs_per_node)})
    if storage.s3_endpoint:
        # The endpoint is not a secret; both spellings: botocore's and TensorBoard's.
        env += [
            {"name": "AWS_ENDPOINT_URL", "value": storage.s3_endpoint},
            {"name": "S3_ENDPOINT", "value": storage.s3_endpoint},
        ]
    if storage.s3_secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": storage.s3_secret, "key": key}}}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    return env


def _volumes(cfg: RunConfig, config_map: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    res, storage = cfg.cluster.resources, cfg.cluster.storage
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map}},
        # NCCL and dataloader workers share tensors through /dev/shm; the container default is 64Mi.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if storage.pvc:
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": storage.pvc}})
        mounts.append({"name": "checkpoints", "mountPath": storage.pvc_mount})
    return volumes, mounts


def _pod_template(cfg: RunConfig, step: str, elastic: bool) -> dict[str, Any]:
    cluster, sched = cfg.cluster, cfg.cluster.scheduling
    command, args = container_command(step)
    volumes, mounts = _volumes(cfg, config_map_name(cfg, step))
    container = {
        "name": CONTAINER,
        "image": cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "command": command,
        "args": args,
        "env": _env(cfg, elastic),
        "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "resources": _resources(cfg),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    spec: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if sched.node_selector:
        spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        spec["tolerations"] = [dict(t) for t in sched.tolerations]
    if sched.priority_class:
        spec["priorityClassName"] = sched.priority_class
    config_sha = hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16]
    return {
        # The checksum tells which run config a pod started with (ConfigMaps change in place).
        "metadata": {"labels": labels(cfg, step), "annotations": {"vlm-platform/config-sha256": config_sha}},
        "spec": spec,
    }


def _run_policy(cfg: RunConfig, nodes: int) -> dict[str, Any]:
    cluster, sched = cfg.cluster, cfg.cluster.scheduling
    policy: dict[str, Any] = {"cleanPodPolicy": cluster.clean_pod_policy, "backoffLimit": cluster.backoff_limit}
    if cluster.ttl_seconds_after_finished is not None:
        policy["ttlSecondsAfterFinished"] = cluster.ttl_seconds_after_finished
    if cluster.active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    if sched.gang:
        scheduling: dict[str, Any] = {"minAvailable": cluster.elastic_min_nodes or nodes}
        if sched.queue:
            scheduling["queue"] = sched.queue
        if sched.priority_class:
            scheduling["priorityClass"] = sched.priority_class
        policy["schedulingPolicy"] = scheduling
    return policy


def pod_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard: non-root, seccomp RuntimeDefault (every pod we emit)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def build_pytorchjob(cfg: RunConfig, step: str) -> dict[str, Any]:
    """The PyTorchJob running ``step`` (a training stage, or ``eval``) of ``cfg``.

    Everything comes from the config; change it with ``cfg.with_overrides`` (one override path)."""
    _check_step(cfg, step)
    nodes = cfg.distributed.nodes
    cluster = cfg.cluster
    elastic = cluster.elastic_min_nodes is not None
    if elastic and not 1 <= cluster.elastic_min_nodes <= nodes:
        raise ValueError(
            f"cluster.elastic_min_nodes must lie in 1..nodes={nodes} (got {cluster.elastic_min_nodes})"
        )
    template = _pod_template(cfg, step, elastic)

    def replica(count: int) -> dict[str, Any]:
        # Each replica owns its template: shared dicts would alias (and render as YAML anchors).
        return {"replicas": count, "restartPolicy": cluster.restart_policy, "template": copy.deepcopy(template)}

    spec: dict[str, Any] = {"nprocPerNode": str(cfg.distributed.procs_per_node)}
    if elastic:
        spec["pytorchReplicaSpecs"] = {"Worker": replica(nodes)}
        spec["elasticPolicy"] = {
            "minReplicas": cluster.elastic_min_nodes,
            "maxReplicas": nodes,
            "rdzvBackend": "c10d",
            "maxRestarts": cluster.backoff_limit,
        }
    else:
        spec["pytorchReplicaSpecs"] = {"Master": replica(1)}
        if nodes > 1:
            spec["pytorchReplicaSpecs"]["Worker"] = replica(nodes - 1)
    spec["runPolicy"] = _run_policy(cfg, nodes)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": job_name(cfg, step), "namespace": cluster.namespace, "labels": labels(cfg, step)},
        "spec": spec,
    }


def render_job(cfg: RunConfig, step: str) -> list[dict[str, Any]]:
    """The ConfigMap and the validated PyTorchJob of one step (``InvalidPyTorchJob`` lists problems)."""
    from operators.validation import validate_pytorchjob

    job = validate_pytorchjob(build_pytorchjob(cfg, step))
    return [build_config_map(cfg, step), job]


def with_owner(objects: list[dict[str, Any]], owner: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The objects owned by ``owner`` (an ownerReference): deleting the owner deletes them."""
    if owner is None:
        return objects
    return [{**o, "metadata": {**o["metadata"], "ownerReferences": [owner]}} for o in objects]


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream (what ``kubectl apply -f`` takes)."""
    return yaml.safe_dump_all(objects, sort_keys=False)


def split_objects(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the one PyTorchJob, its ConfigMaps) of a step's objects."""
    jobs = [o for o in objects if o.get("kind") == KIND]
    if len(jobs) != 1:
        raise ValueError(f"expected exactly one PyTorchJob among the objects, got {len(jobs)}")
    return jobs[0], [o for o in objects if o.get("kind") == "ConfigMap"]


# ----------------------------------------------------------------------------- backends


@dataclass
class JobOutcome:
    """How a PyTorchJob ended, on any backend."""

    name: str
    state: str  # Succeeded | Failed
    reason: str = ""
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == "Succeeded"

    def describe(self) -> str:
        return f"PyTorchJob {self.name} {self.state}" + "".join(f": {p}" for p in (self.reason, self.message) if p)


class JobBackend(Protocol):
    def run(self, objects: list[dict[str, Any]]) -> JobOutcome:
        """Run the PyTorchJob among ``objects`` (with its ConfigMaps) to its end."""
        ...


# name -> "module:class"; imported on use (the kubernetes client is slow to load)
BACKENDS: Registry[str] = Registry("PyTorchJob backend")
BACKENDS.add("local", "operators.local_backend:LocalBackend")
BACKENDS.add("kubernetes", "operators.k8s_backend:KubernetesBackend")


def job_backend(name: str, **options: Any) -> JobBackend:
    """The backend ``name`` (``local`` | ``kubernetes``) built with ``options``."""
    import importlib

    module, cls = BACKENDS.get(name).split(":")
    return getattr(importlib.import_module(module), cls)(**options)
