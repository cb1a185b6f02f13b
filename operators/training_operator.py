"""What the Kubeflow training operator (release-1.9) does with a PyTorchJob, as plain functions:
the replicas it creates, the environment it injects into each pod, when it restarts a replica
and when a job has succeeded. The local backend runs jobs by these rules, so a job behaves the
same on one machine as on a cluster; the rules are tested here on their own.

The environment (``pkg/controller.v1/pytorch/envvar.go``), for one replica:

====================  ======================================================================
``MASTER_ADDR``        ``127.0.0.1`` (the Master's Service name on a cluster)
``MASTER_PORT``        the rendezvous port (the container port ``pytorchjob-port`` on a cluster)
``WORLD_SIZE``         nodes x nprocPerNode (nodes alone when nprocPerNode is not an integer)
``RANK``               the *node* rank: Master 0, Worker i -> i + 1
``PET_NNODES``         nodes (``min:max`` with an elasticPolicy)
``PET_NODE_RANK``      the node rank, as RANK
``PET_NPROC_PER_NODE`` ``spec.nprocPerNode``
``PET_MASTER_ADDR/PORT`` as MASTER_ADDR/PORT
``PET_RDZV_*``, ``PET_MAX_RESTARTS`` with an elasticPolicy (endpoint 127.0.0.1:port)
====================  ======================================================================

torchrun reads ``PET_<FLAG>`` for each of its flags, so a bare ``torchrun`` forms the job's
static rendezvous on the Master (torchrun then sets the per-process RANK/WORLD_SIZE itself).

Restarts: a failed replica under ``OnFailure``/``Always`` restarts; under ``ExitCode`` only for
retryable codes (>= 128: killed by a signal, e.g. 137 = SIGKILL, 143 = SIGTERM; 1-127 are
permanent); ``Never`` fails the job. Every restart counts against ``runPolicy.backoffLimit``.
The job succeeds when the Master exits 0 (all Workers, without a Master).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from operators.pytorchjob import CONTAINER

REPLICA_ORDER = ("Master", "Worker")
RETRYABLE_MIN_EXIT_CODE = 128  # the operator's rule: exit codes of signals are retryable
DEFAULT_BACKOFF_LIMIT = 6  # batch/v1 Job's default, used when runPolicy.backoffLimit is unset


class UnsupportedJob(ValueError):
    """A PyTorchJob these rules cannot run (unknown replica type, no ``pytorch`` container)."""


@dataclass
class Replica:
    rtype: str
    index: int
    rank: int
    container: dict[str, Any]
    pod_spec: dict[str, Any]
    restart_policy: str

    @property
    def name(self) -> str:
        return f"{self.rtype.lower()}-{self.index}"


def replicas_of(job: dict[str, Any]) -> list[Replica]:
    """The job's replicas in rank order: the Master, then each Worker."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    unknown = set(specs) - set(REPLICA_ORDER)
    if unknown:
        raise UnsupportedJob(f"replica types {sorted(unknown)} are not supported; allowed: {', '.join(REPLICA_ORDER)}")
    out: list[Replica] = []
    for rtype in (r for r in REPLICA_ORDER if r in specs):
        spec = specs[rtype]
        pod = spec["template"]["spec"]
        container = next((c for c in pod["containers"] if c.get("name") == CONTAINER), None)
        if container is None:
            raise UnsupportedJob(f"{rtype} has no container named {CONTAINER!r}")
        for index in range(int(spec.get("replicas", 1))):
            out.append(Replica(rtype, index, len(out), container, pod, spec.get("restartPolicy", "Never")))
    return out


def operator_env(job: dict[str, Any], replica: Replica, nodes: int, port: int) -> dict[str, str]:
    """The variables the training operator injects into a replica's pod (see the module doc)."""
    spec = job["spec"]
    nproc = str(spec.get("nprocPerNode", "auto"))
    env = {"PYTHONUNBUFFERED": "1"}
    if "Master" in spec["pytorchReplicaSpecs"]:
        world = nodes * int(nproc) if nproc.isdigit() else nodes
        env.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port),
            WORLD_SIZE=str(world), RANK=str(replica.rank),
            PET_NPROC_PER_NODE=nproc, PET_NODE_RANK=str(replica.rank),
        )  # fmt: skip
    elastic = spec.get("elasticPolicy")
    if elastic is None:
        env["PET_NNODES"] = str(nodes)
        return env
    low, high = elastic.get("minReplicas"), elastic.get("maxReplicas")
    env["PET_NNODES"] = f"{low}:{high}" if low is not None and high is not None else str(nodes)
    env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend", "c10d")
    env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
    if elastic.get("maxRestarts") is not None:
        env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    if elastic.get("rdzvId"):
        env["PET_RDZV_ID"] = elastic["rdzvId"]
    return env


def backoff_limit(job: dict[str, Any]) -> int:
    return (job["spec"].get("runPolicy") or {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT)


def restartable(policy: str, code: int) -> bool:
    """Whether a replica that exited with ``code`` is restarted under its ``restartPolicy``."""
    if policy in ("OnFailure", "Always"):
        return True
    if policy == "ExitCode":
        return code >= RETRYABLE_MIN_EXIT_CODE
    return False


def succeeded(codes: Mapping[str, int | None], has_master: bool) -> str | None:
    """The reason the job has succeeded given each replica's exit code (None: still running),
    or None while it has not."""
    if has_master:
        return "master-0 exited with 0" if codes.get("master-0") == 0 else None
    return "all workers exited with 0" if codes and all(c == 0 for c in codes.values()) else None
