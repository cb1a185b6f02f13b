"""Run a PyTorchJob object on this machine: each replica (Master, then Workers) becomes one local
process running its ``pytorch`` container's command (for our jobs ``torchrun``, which starts
``nprocPerNode`` processes itself), with the environment, restarts and success rule of the
training operator (``operators/training_operator.py``). ``torchrun`` and ``python`` in a command
run with this interpreter: this environment is the local "image".

Where things are:

- the working directory of a replica is its container's ``workingDir`` when set, else the
  directory the command runs in (the local image's working directory), so relative paths in a
  run config resolve against it, as they do for ``vlm train`` and the orchestrator itself;
- volumes map to folders under ``<workdir>/<job>/volumes``: a ConfigMap to a folder holding its
  files (from the ConfigMap objects given with the job), a PVC to ``pvc/<claim>`` shared by all
  replicas (like a ReadWriteMany claim), an emptyDir to a folder per replica; ``/dev/shm`` stays
  the host's, and the ``cache`` volume (DeepSpeed's compiled ops, a minute to build) is this
  machine's cache folder (``host_cache_dirs``). Mount paths in the command, args, env values and
  ConfigMap files are rewritten to those folders, so ``--config /etc/vlm/config.yaml`` and an
  ``output: /mnt/vlm/runs/x`` resolve locally;
- each replica's output goes to ``<workdir>/<job>/logs/<replica>.log`` and to ``log`` with a
  ``[master-0]`` prefix; ``secretKeyRef`` values come from ``secrets`` ({secret: {key: value}})
  or this environment's variable of the same name, and are never logged.

A restart restarts *all* replicas: on a cluster the surviving replicas' collectives fail as soon
as a peer dies, so the whole group restarts there too, and a static torchrun rendezvous needs
every node to rejoin anyway.

Taking over: the replicas run in sessions of their own (stopping one stops its torchrun's
children too), so they outlive a caller killed with SIGKILL. Their process ids are recorded in
``<workdir>/<job>/processes.json``; running the same job again first stops what is left of the
previous run, and the new replicas resume from the stage's newest checkpoint.

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
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators import training_operator as rules
from operators.pytorchjob import JobOutcome, split_objects
from operators.training_operator import Replica
from vlm_core.ports import free_port

STOP_GRACE_SECONDS = 10
WORKER_GRACE_SECONDS = 30  # after the Master succeeds, Workers may still be shutting down
SHM = "/dev/shm"
PROCESSES_FILE = "processes.json"


class LocalJobError(RuntimeError):
    """The PyTorchJob cannot run locally (unsupported volume, missing secret, ...)."""


@dataclass
class LocalJobResult(JobOutcome):
    restarts: int = 0
    exit_codes: list[dict[str, int]] = field(default_factory=list)  # per attempt: replica -> code
    log_dir: Path | None = None


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


def host_cache_dirs() -> dict[str, Path]:
    """Volumes that map to this machine's own caches rather than per-run folders.

    The pods' `cache` emptyDir holds DeepSpeed's compiled ops (a minute to build) and hub files;
    on a cluster it lives as long as the pod, here it can outlive the run.
    """
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlm" / "pytorchjob"
    return {"cache": root}


def _volume_folder(replica: Replica, mount: dict[str, Any], volume: dict[str, Any], volumes_dir: Path) -> Path | None:
    """The local folder of one mount (None: use the host's own, for /dev/shm)."""
    if mount["name"] in host_cache_dirs():
        return host_cache_dirs()[mount["name"]]
    if "configMap" in volume:
        return volumes_dir / "configmaps" / volume["configMap"]["name"]
    if "emptyDir" in volume:
        return None if mount["mountPath"] == SHM else volumes_dir / replica.name / mount["name"]
    if "persistentVolumeClaim" in volume:
        return volumes_dir / "pvc" / volume["persistentVolumeClaim"]["claimName"]
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    kinds = sorted(set(volume) - {"name"})
    raise LocalJobError(
        f"{replica.name}: volume {mount['name']!r} of type {kinds} is not supported locally; "
        "supported: configMap, emptyDir, persistentVolumeClaim, hostPath"
    )


def _prepare_volumes(replica: Replica, volumes_dir: Path, config_maps: dict[str, dict[str, str]]) -> PathMap:
    volumes = {v["name"]: v for v in replica.pod_spec.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in replica.container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise LocalJobError(f"{replica.name}: volumeMount {mount['name']!r} names no volume of the pod")
        if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
            raise LocalJobError(
                f"ConfigMap {volume['configMap']['name']!r} (volume {mount['name']!r}) not given: "
                "pass the ConfigMap object with the job"
            )
        folder = _volume_folder(replica, mount, volume, volumes_dir)
        if folder is not None:
            mounts[mount["mountPath"]] = folder / mount["subPath"] if mount.get("subPath") else folder
    for local in mounts.values():
        local.mkdir(parents=True, exist_ok=True)
    path_map = PathMap(mounts)
    for volume in volumes.values():
        if "configMap" in volume and volume["configMap"]["name"] in config_maps:
            _write_config_map(volumes_dir / "configmaps", volume["configMap"], config_maps, path_map)
    return path_map


def _write_config_map(root: Path, source: dict[str, Any], config_maps: dict[str, dict[str, str]], path_map: PathMap) -> None:
    data = config_maps[source["name"]]
    for item in source.get("items") or [{"key": k, "path": k} for k in data]:
        target = root / source["name"] / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        # Files refer to other mounts by their container paths (e.g. output: /mnt/vlm/...).
        target.write_text(path_map(data[item["key"]]))


# ----------------------------------------------------------------------------- env and command


def _field_ref(job: dict[str, Any], replica: Replica, name: str, path: str) -> str:
    fields = {
        "metadata.name": f"{job['metadata']['name']}-{replica.name}",
        "metadata.namespace": job["metadata"].get("namespace", "default"),
        "status.podIP": "127.0.0.1",
    }
    if path not in fields:
        raise LocalJobError(f"env {name}: fieldRef {path!r} is not supported locally; supported: {sorted(fields)}")
    return fields[path]


def _secret(name: str, ref: dict[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> str | None:
    value = (secrets.get(ref["name"]) or {}).get(ref["key"], os.environ.get(name))
    if value is None and not ref.get("optional"):
        raise LocalJobError(
            f"env {name}: key {ref['key']!r} of Secret {ref['name']!r} is not available locally; "
            f"set {name} in the environment or pass secrets={{{ref['name']!r}: {{...}}}}"
        )
    return value


def _container_env(
    replica: Replica, job: dict[str, Any], path_map: PathMap, secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in replica.container.get("env") or []:
        name, source = var["name"], var.get("valueFrom") or {}
        if "value" in var:
            env[name] = path_map(str(var["value"]))
        elif "secretKeyRef" in source:
            if (value := _secret(name, source["secretKeyRef"], secrets)) is not None:
                env[name] = value
        elif "fieldRef" in source:
            env[name] = _field_ref(job, replica, name, source["fieldRef"]["fieldPath"])
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


@dataclass
class _Launch:
    replica: Replica
    argv: list[str]
    env: dict[str, str]
    cwd: Path


# ----------------------------------------------------------------------------- processes


def _exit_code(returncode: int) -> int:
    """A container runtime reports death by signal N as 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _descendants(pids: list[int]) -> list[int]:
    """Every process below ``pids``: torchrun starts its workers in sessions of their own, so
    signalling a replica's process group alone would not reach them."""
    import psutil

    found: list[int] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return found


def _stop_groups(pgids: list[int], reap: Callable[[], object] = lambda: None) -> None:
    """TERM, then KILL after a grace period, each process group (a replica's own session) and
    every process below it. ``reap`` collects our own exited children (a zombie still counts)."""
    below = [pid for pid in _descendants(pgids) if pid not in pgids]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            reap()
            if not any(map(_group_alive, pgids)) and not any(map(_running, below)):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_leftovers(job_dir: Path, log: Callable[[str], None]) -> None:
    """Stop the replicas a previous run of this job left behind (its caller was killed)."""
    import psutil

    record = job_dir / PROCESSES_FILE
    if not record.exists():
        return
    alive = []
    for entry in json.loads(record.read_text()):
        with contextlib.suppress(psutil.Error):
            # the same process, not a later one that reuses its pid
            if abs(psutil.Process(entry["pid"]).create_time() - entry["create_time"]) < 0.01:
                alive.append(entry["pid"])
    if alive:
        log(f"[{job_dir.name}] stopping {len(alive)} replica(s) left by an earlier run: {alive}")
        _stop_groups(alive)
    record.unlink()


class _Attempt:
    """One start of all replicas; output pumped to the log with a ``[master-0]`` prefix."""

    def __init__(self, launches: list[_Launch], job_dir: Path, attempt: int, log: Callable[[str], None]) -> None:
        import psutil

        self.procs: dict[str, subprocess.Popen] = {}
        self.pumps: list[threading.Thread] = []
        self.record = job_dir / PROCESSES_FILE
        for launch in launches:
            log_file = (job_dir / "logs" / f"{launch.replica.name}.log").open("a")
            log_file.write(f"--- attempt {attempt}\n")
            proc = subprocess.Popen(
                launch.argv, env=launch.env, cwd=launch.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopping it stops torchrun's children too
            )  # fmt: skip
            self.procs[launch.replica.name] = proc
            pump = threading.Thread(target=self._pump, args=(launch.replica.name, proc, log_file, log), daemon=True)
            pump.start()
            self.pumps.append(pump)
        started = [{"pid": p.pid, "create_time": psutil.Process(p.pid).create_time()} for p in self.procs.values()]
        self.record.write_text(json.dumps(started))

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
        _stop_groups([p.pid for p in self.procs.values()], reap=self.poll)
        for pump in self.pumps:
            pump.join(timeout=5)
        self.record.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the backend


class LocalBackend:
    """Run PyTorchJobs with local processes; ``run(objects)`` returns a ``LocalJobResult``.

    ``workdir`` holds one folder per job (volumes, logs, the process record); ``timeout``
    (seconds) stops and fails a job that runs longer, as ``activeDeadlineSeconds`` does."""

    def __init__(
        self,
        workdir: str | Path,
        *,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        log: Callable[[str], None] = print,
        poll_interval: float = 0.1,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.secrets, self.env = secrets or {}, dict(env or {})
        self.timeout, self.log, self.poll_interval = timeout, log, poll_interval

    def run(self, objects: list[dict[str, Any]]) -> LocalJobResult:
        job, config_maps = split_objects(objects)
        job_dir = self.workdir / job["metadata"]["name"]
        (job_dir / "logs").mkdir(parents=True, exist_ok=True)
        stop_leftovers(job_dir, self.log)
        try:
            replicas = rules.replicas_of(job)
        except rules.UnsupportedJob as err:
            raise LocalJobError(str(err)) from None
        cm_data = {cm["metadata"]["name"]: dict(cm.get("data") or {}) for cm in config_maps}
        launches = [self._prepare(job, replica, job_dir / "volumes", cm_data) for replica in replicas]
        return self._run_attempts(job, launches, job_dir)

    def _prepare(self, job: dict[str, Any], replica: Replica, volumes_dir: Path, cm_data: dict) -> _Launch:
        path_map = _prepare_volumes(replica, volumes_dir, cm_data)
        env = {**os.environ, **self.env, **_container_env(replica, job, path_map, self.secrets)}
        working_dir = replica.container.get("workingDir")
        cwd = Path(path_map(working_dir)) if working_dir else Path.cwd()
        cwd.mkdir(parents=True, exist_ok=True)
        return _Launch(replica, _command(replica, path_map), env, cwd)

    def _deadline(self, job: dict[str, Any]) -> float | None:
        limits = [t for t in (self.timeout, (job["spec"].get("runPolicy") or {}).get("activeDeadlineSeconds")) if t]
        return time.monotonic() + min(limits) if limits else None

    def _run_attempts(self, job: dict[str, Any], launches: list[_Launch], job_dir: Path) -> LocalJobResult:
        name = job["metadata"]["name"]
        result = LocalJobResult(name, "Failed", log_dir=job_dir / "logs")
        limit, deadline = rules.backoff_limit(job), self._deadline(job)
        policies = {launch.replica.name: launch.replica.restart_policy for launch in launches}
        while True:
            state, reason, failed = self._attempt(job, launches, job_dir, result, deadline)
            if state == "Succeeded":
                result.state, result.reason = state, reason
                break
            if failed is None:  # out of time
                result.reason = reason
                break
            replica, code = failed
            if not rules.restartable(policies[replica], code):
                result.reason = f"{replica} exited with {code} (restartPolicy {policies[replica]}: not retried)"
                break
            if result.restarts >= limit:
                result.reason = f"BackoffLimitExceeded: {replica} exited with {code} after {result.restarts} restarts"
                break
            result.restarts += 1
            self.log(f"[{name}] {replica} exited with {code}: restarting all replicas ({result.restarts}/{limit})")
        self.log(f"[{name}] {result.state}: {result.reason}")
        return result

    def _attempt(self, job, launches, job_dir, result, deadline) -> tuple[str, str, tuple[str, int] | None]:
        port = free_port()  # fresh per attempt: the old one may linger in TIME_WAIT
        nodes = len(launches)
        started = [
            _Launch(la.replica, la.argv, {**la.env, **rules.operator_env(job, la.replica, nodes, port)}, la.cwd)
            for la in launches
        ]
        names = ", ".join(la.replica.name for la in launches)
        self.log(f"[{result.name}] attempt {result.restarts}: starting {names} (port {port})")
        attempt = _Attempt(started, job_dir, result.restarts, self.log)
        try:
            outcome = self._supervise(attempt, any(la.replica.rtype == "Master" for la in launches), deadline)
        finally:
            attempt.stop()
        result.exit_codes.append({k: v for k, v in attempt.poll().items() if v is not None})
        return outcome

    def _supervise(self, attempt: _Attempt, has_master: bool, deadline: float | None) -> tuple[str, str, tuple[str, int] | None]:
        while True:
            codes = attempt.poll()
            if (reason := rules.succeeded(codes, has_master)) is not None:
                # The job has succeeded (the operator's rule); let Workers finish on their own for a while.
                grace = time.monotonic() + WORKER_GRACE_SECONDS
                while time.monotonic() < grace and None in attempt.poll().values():
                    time.sleep(self.poll_interval)
                return "Succeeded", reason, None
            failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
            if failed:
                return "Failed", "", failed[0]
            if deadline is not None and time.monotonic() > deadline:
                return "Failed", "DeadlineExceeded", None
            time.sleep(self.poll_interval)
