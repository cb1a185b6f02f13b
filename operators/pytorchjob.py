"""Build the Kubeflow PyTorchJob (kubeflow.org/v1) that runs one training stage, and launch it.

One stage is one PyTorchJob named ``<cfg.name>-<stage>``: a Master and ``nodes - 1`` Workers
(no Worker spec for one node), each a pod whose container ``pytorch`` runs::

    torchrun -m vlm_core.cli train --config /etc/vlm/config.yaml --stage <stage> --resume auto

torchrun takes no topology flags: the training operator injects them as environment variables
(``PET_NNODES``, ``PET_NODE_RANK``, ``PET_NPROC_PER_NODE``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``; torchrun reads any ``--flag`` from ``PET_FLAG``), so the same command is right
on every replica and the job's replica counts are the single source of truth. ``--resume auto``
makes a restarted pod continue from the newest checkpoint of the stage.

The run config reaches the pods through a ConfigMap (``build_config_map``) mounted at
``/etc/vlm``; it holds no secrets (S3 keys come from a Secret through ``secretKeyRef`` only).

Elastic mode (``cluster.elastic_min_nodes``) emits Workers only, the operator's elastic layout:
the c10d rendezvous lives on worker-0 and ``minReplicas``/``maxReplicas`` count Worker pods.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

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


def config_map_name(cfg: RunConfig) -> str:
    return cfg.cluster.config_map or f"{cfg.name}-config"


def job_name(cfg: RunConfig, stage: str) -> str:
    return f"{cfg.name}-{stage}"


def _labels(cfg: RunConfig, stage: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "vlm-platform", "app.kubernetes.io/instance": cfg.name}
    if stage:
        labels["vlm-platform/stage"] = stage
    return labels


def build_config_map(cfg: RunConfig, *, name: str | None = None) -> dict[str, Any]:
    """The ConfigMap carrying the run config as ``config.yaml`` (mounted at /etc/vlm)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name or config_map_name(cfg), "namespace": cfg.cluster.namespace, "labels": _labels(cfg)},
        "data": {CONFIG_FILE: cfg.to_yaml()},
    }


def train_command(stage: str) -> tuple[list[str], list[str]]:
    """(command, args) of the ``pytorch`` container."""
    return ["torchrun"], [
        "-m", "vlm_core.cli", "train",
        "--config", f"{CONFIG_DIR}/{CONFIG_FILE}",
        "--stage", stage,
        "--resume", "auto",
    ]  # fmt: skip


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


def _pod_template(cfg: RunConfig, stage: str, image: str, config_map: str, elastic: bool) -> dict[str, Any]:
    cluster, sched = cfg.cluster, cfg.cluster.scheduling
    command, args = train_command(stage)
    volumes, mounts = _volumes(cfg, config_map)
    container = {
        "name": CONTAINER,
        "image": image,
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
        "metadata": {"labels": _labels(cfg, stage), "annotations": {"vlm-platform/config-sha256": config_sha}},
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


def build_pytorchjob(
    cfg: RunConfig,
    stage: str,
    *,
    config_map: str | None = None,
    image: str | None = None,
    nodes: int | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The PyTorchJob running ``stage`` of ``cfg`` (overrides: image, node count, namespace)."""
    cfg.stage(stage)  # a clear error for an unconfigured stage
    nodes = nodes or cfg.distributed.nodes
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1 (got {nodes})")
    cluster = cfg.cluster
    elastic = cluster.elastic_min_nodes is not None
    if elastic and not 1 <= cluster.elastic_min_nodes <= nodes:
        raise ValueError(
            f"cluster.elastic_min_nodes must lie in 1..nodes={nodes} (got {cluster.elastic_min_nodes})"
        )
    template = _pod_template(cfg, stage, image or cluster.image, config_map or config_map_name(cfg), elastic)

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
        "metadata": {
            "name": job_name(cfg, stage),
            "namespace": namespace or cluster.namespace,
            "labels": _labels(cfg, stage),
        },
        "spec": spec,
    }


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream (what ``kubectl apply -f`` takes)."""
    return yaml.safe_dump_all(objects, sort_keys=False)


def render_stage(cfg: RunConfig, stage: str, **overrides: Any) -> list[dict[str, Any]]:
    """The ConfigMap and the PyTorchJob of one stage, validated (``ValueError`` lists problems)."""
    from operators.validation import validate_pytorchjob

    config_map = build_config_map(cfg)
    if overrides.get("namespace"):
        config_map["metadata"]["namespace"] = overrides["namespace"]
    job = build_pytorchjob(cfg, stage, config_map=config_map["metadata"]["name"], **overrides)
    validate_pytorchjob(job)
    return [config_map, job]


# ----------------------------------------------------------------------------- launching

# name -> "module:function(objects, **options)"; imported on use (the kubernetes client is slow to load)
BACKENDS: Registry[str] = Registry("PyTorchJob backend")
BACKENDS.add("local", "operators.local_backend:run_objects")
BACKENDS.add("kubernetes", "operators.k8s_backend:submit_and_wait")


def run_pytorchjob(objects: dict[str, Any] | list[dict[str, Any]], backend: str = "local", **options: Any) -> Any:
    """Run a PyTorchJob (with its ConfigMaps) on a backend; what KFP components call.

    ``local``: ``workdir=``, ``timeout=``, ``secrets=`` ... (``LocalJobResult``);
    ``kubernetes``: ``namespace=``, ``wait=``, ``timeout=``, ``delete=`` ... (``JobStatus``).
    """
    import importlib

    module, function = BACKENDS.get(backend).split(":")
    objects = [objects] if isinstance(objects, dict) else list(objects)
    for obj in objects:
        if obj.get("kind") == KIND:
            from operators.validation import validate_pytorchjob

            validate_pytorchjob(obj)
    return getattr(importlib.import_module(module), function)(objects, **options)
