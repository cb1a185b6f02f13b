"""Run a PyTorchJob object on this machine, the way the training operator runs it on a cluster.

Each replica (Master, then Workers) becomes one local process running its ``pytorch``
container's command; for our jobs that is ``torchrun``, which starts ``nprocPerNode`` training
processes itself. The process gets the environment the operator (release-1.9,
``pkg/controller.v1/pytorch/envvar.go``) injects into a pod:

====================  ======================================================================
``MASTER_ADDR``        ``127.0.0.1`` (the Master's Service name on a cluster)
``MASTER_PORT``        a free local port (the container port ``pytorchjob-port`` on a cluster)
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
``torchrun`` and ``python`` in a command run with this interpreter (the local "image").

Volumes map to local folders under ``workdir``: a ConfigMap to a folder holding its files (from
sibling ConfigMap objects or ``config_files``), a PVC to ``volumes/pvc/<claim>`` shared by all
replicas (like a ReadWriteMany claim), an emptyDir to a folder per replica; ``/dev/shm`` stays
the host's, and the ``cache`` volume (compiled DeepSpeed ops) is this machine's cache folder
(``host_cache_dirs``; ``volume_dirs`` maps any volume by name). Mount paths in the command, args, env values and ConfigMap files are rewritten to
those folders, so ``--config /etc/vlm/config.yaml`` and an ``output: /mnt/vlm/runs/x`` resolve
locally. ``secretKeyRef`` values come from ``secrets`` ({secret: {key: value}}) or, failing that,
from this environment's variable of the same name; they are never logged.

Restarts follow the operator: a failed replica under ``OnFailure``/``Always`` restarts; under
``ExitCode`` only for retryable codes (>= 128: killed by a signal, e.g. 137 = SIGKILL, 143 =
SIGTERM; 1-127 are permanent); ``Never`` fails the job. Every restart counts against
``runPolicy.backoffLimit``. A restart restarts *all* replicas: on a cluster the surviving
replicas' collectives fail as soon as a peer dies, so the whole group restarts there too,
and a static torchrun rendezvous needs every node to rejoin anyway. The job succeeds when the
Master exits 0 (all Workers without a Master), like the operator.

What a resumed run guarantees (with ``--resume auto`` in the training command): training
restarts from the newest complete checkpoint, so updates after it are recomputed; the data
sampler is seeded by (seed, epoch) and skips the batches the checkpoint's global step already
consumed, so with the same world size the resumed run sees exactly the samples, in the same
order, that an uninterrupted run would have, and it ends at the planned global step. With a
different world size (elastic) the same global position is resumed but the per-rank split
differs. Samples of the steps between the last checkpoint and the failure are consumed twice
(once lost, once counted), never skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLICA_ORDER = ("Master", "Worker")
RETRYABLE_MIN_EXIT_CODE = 128  # the operator's rule: exit codes of signals are retryable
DEFAULT_BACKOFF_LIMIT = 6  # batch/v1 Job's default, used when runPolicy.backoffLimit is unset
STOP_GRACE_SECONDS = 10
WORKER_GRACE_SECONDS = 30  # after the Master succeeds, Workers may still be shutting down
SHM = "/dev/shm"


class LocalJobError(RuntimeError):
    """The PyTorchJob cannot run locally (unsupported volume, missing secret, ...)."""


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


@dataclass
class LocalJobResult:
    name: str
    state: str  # Succeeded | Failed
    reason: str
    restarts: int
    exit_codes: list[dict[str, int]] = field(default_factory=list)  # per attempt: replica -> code
    log_dir: Path | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "Succeeded"


# ----------------------------------------------------------------------------- job structure


def replicas_of(job: dict[str, Any]) -> list[Replica]:
    specs = job["spec"]["pytorchReplicaSpecs"]
    unknown = set(specs) - set(REPLICA_ORDER)
    if unknown:
        raise LocalJobError(f"replica types {sorted(unknown)} are not supported; allowed: {', '.join(REPLICA_ORDER)}")
    out: list[Replica] = []
    rank = 0
    for rtype in REPLICA_ORDER:
        if rtype not in specs:
            continue
        spec = specs[rtype]
        pod = spec["template"]["spec"]
        container = next((c for c in pod["containers"] if c.get("name") == "pytorch"), None)
        if container is None:
            raise LocalJobError(f"{rtype} has no container named 'pytorch'")
        for index in range(int(spec.get("replicas", 1))):
            out.append(Replica(rtype, index, rank, container, pod, spec.get("restartPolicy", "Never")))
            rank += 1
    return out


def operator_env(job: dict[str, Any], replica: Replica, nodes: int, port: int) -> dict[str, str]:
    """The variables the training operator injects into a replica's pod (see module doc)."""
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
    else:
        low, high = elastic.get("minReplicas"), elastic.get("maxReplicas")
        env["PET_NNODES"] = f"{low}:{high}" if low is not None and high is not None else str(nodes)
        env["PET_RDZV_BACKEND"] = elastic.get("rdzvBackend", "c10d")
        env["PET_RDZV_ENDPOINT"] = f"127.0.0.1:{port}"
        if elastic.get("maxRestarts") is not None:
            env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
        if elastic.get("rdzvId"):
            env["PET_RDZV_ID"] = elastic["rdzvId"]
    return env


# ----------------------------------------------------------------------------- volumes and paths


class PathMap:
    """Container mount paths -> local folders, applied to strings at path boundaries."""

    def __init__(self, mounts: Mapping[str, Path]) -> None:
        self.mounts = {k.rstrip("/"): v for k, v in mounts.items()}
        # longest first, so /mnt/vlm/data wins over /mnt/vlm
        prefixes = sorted(self.mounts, key=len, reverse=True)
        self._pattern = (
            re.compile("(?<![\\w./-])(" + "|".join(map(re.escape, prefixes)) + ")(?=/|$|[\\s\"',:;)\\]}])")
            if prefixes
            else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: str(self.mounts[m.group(1)]), text)


def _config_map_data(config_maps: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {cm["metadata"]["name"]: dict(cm.get("data") or {}) for cm in config_maps}


def host_cache_dirs() -> dict[str, Path]:
    """Volumes that map to this machine's own caches rather than per-run folders.

    The pods' `cache` emptyDir holds DeepSpeed's compiled ops (a minute to build) and hub files;
    on a cluster it lives as long as the pod, here it can outlive the run.
    """
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlm" / "pytorchjob"
    return {"cache": root}


def _prepare_volumes(
    replica: Replica,
    workdir: Path,
    config_maps: dict[str, dict[str, str]],
    config_files: Mapping[str, str | Path],
    volume_dirs: Mapping[str, str | Path],
) -> PathMap:
    volumes = {v["name"]: v for v in replica.pod_spec.get("volumes") or []}
    mounts: dict[str, Path] = {}
    configmap_mounts: list[tuple[Path, str, dict[str, Any]]] = []
    for mount in replica.container.get("volumeMounts") or []:
        path = mount["mountPath"]
        volume = volumes.get(mount["name"])
        if volume is None:
            raise LocalJobError(f"{replica.name}: volumeMount {mount['name']!r} names no volume of the pod")
        if mount["name"] in volume_dirs:
            mounts[path] = Path(volume_dirs[mount["name"]])
        elif "configMap" in volume:
            cm = volume["configMap"]["name"]
            if cm in config_files:
                mounts[path] = Path(config_files[cm])
                continue
            if cm not in config_maps:
                raise LocalJobError(
                    f"ConfigMap {cm!r} (volume {mount['name']!r}) not given: pass the ConfigMap object "
                    "or config_files={name: folder}"
                )
            local = workdir / "volumes" / "configmaps" / cm
            mounts[path] = local
            configmap_mounts.append((local, cm, volume["configMap"]))
        elif "emptyDir" in volume:
            if path == SHM:
                continue  # the host's own /dev/shm serves the same purpose
            mounts[path] = workdir / "volumes" / replica.name / mount["name"]
        elif "persistentVolumeClaim" in volume:
            mounts[path] = workdir / "volumes" / "pvc" / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:
            mounts[path] = Path(volume["hostPath"]["path"])
        else:
            kinds = sorted(set(volume) - {"name"})
            raise LocalJobError(
                f"{replica.name}: volume {mount['name']!r} of type {kinds} is not supported locally; "
                "supported: configMap, emptyDir, persistentVolumeClaim, hostPath"
            )
        if mount.get("subPath"):
            mounts[path] = mounts[path] / mount["subPath"]
    for local in mounts.values():
        local.mkdir(parents=True, exist_ok=True)
    path_map = PathMap(mounts)
    for local, cm, source in configmap_mounts:
        data = config_maps[cm]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            # Files refer to other mounts by their container paths (e.g. output: /mnt/vlm/...).
            target.write_text(path_map(data[item["key"]]))
    return path_map


# ----------------------------------------------------------------------------- env and command


def _container_env(
    replica: Replica, job: dict[str, Any], path_map: PathMap, secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in replica.container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = path_map(str(var["value"]))
            continue
        source = var.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = (secrets.get(ref["name"]) or {}).get(ref["key"], os.environ.get(name))
            if value is None:
                if ref.get("optional"):
                    continue
                raise LocalJobError(
                    f"env {name}: key {ref['key']!r} of Secret {ref['name']!r} is not available locally; "
                    f"set {name} in the environment or pass secrets={{{ref['name']!r}: {{...}}}}"
                )
            env[name] = value
        elif "fieldRef" in source:
            fields = {
                "metadata.name": f"{job['metadata']['name']}-{replica.name}",
                "metadata.namespace": job["metadata"].get("namespace", "default"),
                "status.podIP": "127.0.0.1",
            }
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise LocalJobError(f"env {name}: fieldRef {path!r} is not supported locally; supported: {sorted(fields)}")
            env[name] = fields[path]
        else:
            raise LocalJobError(f"env {name}: valueFrom {sorted(source)} is not supported locally")
    return env


_LOCAL_PROGRAMS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
    "python": [sys.executable],
    "python3": [sys.executable],
}


def _command(replica: Replica, path_map: PathMap) -> list[str]:
    argv = [*(replica.container.get("command") or []), *(replica.container.get("args") or [])]
    if not argv:
        raise LocalJobError(f"{replica.name}: the pytorch container has no command (the image's entrypoint is unknown here)")
    return [*_LOCAL_PROGRAMS.get(argv[0], [argv[0]]), *(path_map(a) for a in argv[1:])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- processes


def _exit_code(returncode: int) -> int:
    """A container runtime reports death by signal N as 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class _Attempt:
    """One start of all replicas; output pumped to the log with a ``[master-0]`` prefix."""

    def __init__(self, launches: list[tuple[Replica, list[str], dict[str, str], Path]], log_dir: Path,
                 attempt: int, log: Callable[[str], None]) -> None:  # fmt: skip
        self.procs: dict[str, subprocess.Popen] = {}
        self.pumps: list[threading.Thread] = []
        for replica, argv, env, cwd in launches:
            log_file = (log_dir / f"{replica.name}.log").open("a")
            log_file.write(f"--- attempt {attempt}\n")
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops torchrun's children too
            )  # fmt: skip
            self.procs[replica.name] = proc
            pump = threading.Thread(target=self._pump, args=(replica.name, proc, log_file, log), daemon=True)
            pump.start()
            self.pumps.append(pump)

    @staticmethod
    def _pump(name: str, proc: subprocess.Popen, log_file, log: Callable[[str], None]) -> None:
        with log_file:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                log_file.write(line + "\n")
                log_file.flush()
                log(f"[{name}] {line}")

    def poll(self) -> dict[str, int | None]:
        return {name: (None if (rc := p.poll()) is None else _exit_code(rc)) for name, p in self.procs.items()}

    def stop(self) -> None:
        """Stop every replica's whole process group: TERM, then KILL after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
                time.sleep(0.05)
        for pump in self.pumps:
            pump.join(timeout=5)


def _restartable(policy: str, code: int) -> bool:
    if policy in ("OnFailure", "Always"):
        return True
    if policy == "ExitCode":
        return code >= RETRYABLE_MIN_EXIT_CODE
    return False


def run_local(
    job: dict[str, Any],
    *,
    workdir: str | Path,
    config_maps: list[dict[str, Any]] = (),
    config_files: Mapping[str, str | Path] | None = None,
    volume_dirs: Mapping[str, str | Path] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] = print,
    poll_interval: float = 0.1,
) -> LocalJobResult:
    """Run ``job`` (a PyTorchJob dict) to completion with local processes; see the module doc."""
    name = job["metadata"]["name"]
    workdir = Path(workdir).resolve()
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    replicas = replicas_of(job)
    cm_data = _config_map_data(list(config_maps))
    prepared = []
    for replica in replicas:
        path_map = _prepare_volumes(
            replica, workdir, cm_data, config_files or {}, host_cache_dirs() if volume_dirs is None else volume_dirs
        )
        base = {**os.environ, **(env or {}), **_container_env(replica, job, path_map, secrets or {})}
        working_dir = replica.container.get("workingDir")
        cwd = Path(path_map(working_dir)) if working_dir else workdir
        cwd.mkdir(parents=True, exist_ok=True)
        prepared.append((replica, _command(replica, path_map), base, cwd))

    run_policy = job["spec"].get("runPolicy") or {}
    backoff_limit = run_policy.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
    deadlines = [t for t in (timeout, run_policy.get("activeDeadlineSeconds")) if t is not None]
    deadline = time.monotonic() + min(deadlines) if deadlines else None
    by_name = {r.name: r for r in replicas}
    has_master = any(r.rtype == "Master" for r in replicas)
    result = LocalJobResult(name, "Failed", "", restarts=0, log_dir=log_dir)

    while True:
        port = _free_port()  # fresh per attempt: the old one may linger in TIME_WAIT
        launches = [
            (r, argv, {**base, **operator_env(job, r, len(replicas), port)}, cwd) for r, argv, base, cwd in prepared
        ]
        log(f"[{name}] attempt {result.restarts}: starting {', '.join(r.name for r in replicas)} (port {port})")
        attempt = _Attempt(launches, log_dir, result.restarts, log)
        try:
            outcome = _supervise(attempt, has_master, deadline, poll_interval)
        finally:
            attempt.stop()
        result.exit_codes.append({k: v for k, v in attempt.poll().items() if v is not None})
        state, reason, failed = outcome
        if state == "Succeeded":
            result.state, result.reason = "Succeeded", reason
            break
        if state == "DeadlineExceeded":
            result.reason = "DeadlineExceeded"
            break
        replica, code = failed
        if not _restartable(by_name[replica].restart_policy, code):
            result.reason = f"{replica} exited with {code} (restartPolicy {by_name[replica].restart_policy}: not retried)"
            break
        if result.restarts >= backoff_limit:
            result.reason = f"BackoffLimitExceeded: {replica} exited with {code} after {result.restarts} restarts"
            break
        result.restarts += 1
        log(f"[{name}] {replica} exited with {code}: restarting all replicas ({result.restarts}/{backoff_limit})")
    log(f"[{name}] {result.state}: {result.reason}")
    return result


def _supervise(
    attempt: _Attempt, has_master: bool, deadline: float | None, poll_interval: float
) -> tuple[str, str, tuple[str, int] | None]:
    while True:
        codes = attempt.poll()
        if has_master and codes["master-0"] == 0:
            # The job has succeeded (the operator's rule); let Workers finish on their own for a while.
            grace = time.monotonic() + WORKER_GRACE_SECONDS
            while time.monotonic() < grace and None in attempt.poll().values():
                time.sleep(poll_interval)
            return "Succeeded", "master-0 exited with 0", None
        failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
        if failed:
            return "Failed", "", failed[0]
        done = [n for n, c in codes.items() if c == 0]
        if not has_master and len(done) == len(codes):
            return "Succeeded", "all workers exited with 0", None
        if deadline is not None and time.monotonic() > deadline:
            return "DeadlineExceeded", "", None
        time.sleep(poll_interval)


def run_objects(objects: list[dict[str, Any]], **options: Any) -> LocalJobResult:
    """Run the one PyTorchJob among ``objects``, its ConfigMaps taken from the same list."""
    jobs = [o for o in objects if o.get("kind") == "PyTorchJob"]
    if len(jobs) != 1:
        raise LocalJobError(f"expected exactly one PyTorchJob among the objects, got {len(jobs)}")
    config_maps = [o for o in objects if o.get("kind") == "ConfigMap"]
    return run_local(jobs[0], config_maps=config_maps, **options)
