"""Run a PyTorchJob on a cluster through the kubernetes client: create, watch, stream logs, delete.

- ``submit`` creates the job; if one of that name exists (409 Conflict), it attaches to it, so a
  re-run of a pipeline step picks up the job it launched before instead of failing.
- ``wait`` watches the job until a ``Succeeded`` or ``Failed`` condition. A watch ends when the
  server closes it (its timeout) and fails with 410 Gone when its resourceVersion is too old
  (etcd compaction); both reconnect after a fresh GET, which also catches a finish that happened
  between two streams. The overall timeout holds across reconnects.
- The master pod's log (``training.kubeflow.org/replica-type=master``) streams while waiting,
  again after each container restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from operators.pytorchjob import GROUP, PLURAL, VERSION

TERMINAL = ("Succeeded", "Failed")
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
WATCH_SECONDS = 60  # server-side timeout of one watch; the loop reconnects


class JobTimeout(TimeoutError):
    pass


@dataclass
class JobStatus:
    name: str
    state: str  # Succeeded | Failed
    reason: str
    message: str
    object: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.state == "Succeeded"


def load_kube_config(context: str | None = None) -> None:
    """In-cluster credentials inside a pod, otherwise the kubeconfig (``KUBECONFIG`` / ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(context=context)


def terminal_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The job's Succeeded/Failed condition when it is true, else None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in TERMINAL and str(cond.get("status")) == "True":
            return cond
    return None


class KubernetesBackend:
    def __init__(self, api_client: client.ApiClient | None = None, *, log: Callable[[str], None] = print) -> None:
        self.api_client = api_client or client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.log = log

    # -- create / get / delete

    def apply_config_map(self, obj: dict[str, Any], namespace: str) -> None:
        """Create the ConfigMap, or replace it (the run config may have changed)."""
        name = obj["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(namespace, obj)
        except ApiException as err:
            if err.status != 409:
                raise
            self.core.replace_namespaced_config_map(name, namespace, obj)

    def submit(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        namespace = namespace or obj["metadata"].get("namespace") or "default"
        name = obj["metadata"]["name"]
        try:
            created = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
            self.log(f"created pytorchjob {namespace}/{name}")
            return created
        except ApiException as err:
            if err.status != 409:
                raise
        existing = self.get(name, namespace)
        self.log(f"pytorchjob {namespace}/{name} exists: attaching to it")
        return existing

    def get(self, name: str, namespace: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def delete(self, name: str, namespace: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=body)
        except ApiException as err:
            if err.status != 404:
                raise
        self.log(f"deleted pytorchjob {namespace}/{name}")

    # -- wait

    def wait(self, name: str, namespace: str, timeout: float | None = None, *, follow_logs: bool = True) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        done = threading.Event()
        follower = None
        if follow_logs:
            follower = threading.Thread(target=self._follow_master_logs, args=(name, namespace, done), daemon=True)
            follower.start()
        try:
            return self._watch_until_terminal(name, namespace, deadline)
        finally:
            done.set()
            if follower is not None:
                follower.join(timeout=5)

    def _watch_until_terminal(self, name: str, namespace: str, deadline: float | None) -> JobStatus:
        while True:
            obj = self.get(name, namespace)  # fresh state and resourceVersion after every reconnect
            if (cond := terminal_condition(obj)) is not None:
                return self._status(name, cond, obj)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(f"pytorchjob {namespace}/{name} did not finish in time")
            seconds = WATCH_SECONDS if remaining is None else max(1, min(WATCH_SECONDS, int(remaining)))
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object,
                GROUP, VERSION, namespace, PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=obj["metadata"]["resourceVersion"],
                timeout_seconds=seconds,
                _request_timeout=seconds + 10,
            )  # fmt: skip
            opened, events = time.monotonic(), 0
            try:
                for event in stream:
                    events += 1
                    current = event["object"]
                    if event["type"] == "DELETED":
                        raise RuntimeError(f"pytorchjob {namespace}/{name} was deleted while waiting")
                    if (cond := terminal_condition(current)) is not None:
                        return self._status(name, cond, current)
            except ApiException as err:
                if err.status != 410:  # Gone: our resourceVersion was compacted away; re-list
                    raise
                self.log(f"watch of {name} expired (410 Gone); reconnecting")
                continue
            if events == 0 and time.monotonic() - opened < 1:
                time.sleep(1)  # a server that closes watches at once must not make us spin

    @staticmethod
    def _status(name: str, cond: dict[str, Any], obj: dict[str, Any]) -> JobStatus:
        return JobStatus(name, cond["type"], cond.get("reason", ""), cond.get("message", ""), obj)

    # -- logs

    def master_pod(self, name: str, namespace: str) -> Any | None:
        selector = f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}=master"
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return pods[0] if pods else None

    def _follow_master_logs(self, name: str, namespace: str, done: threading.Event) -> None:
        followed: set[tuple[str, int]] = set()  # (pod uid, container restart count)
        while not done.is_set():
            try:
                pod = self.master_pod(name, namespace)
                key = _container_instance(pod)
                if key is None or key in followed:
                    done.wait(2)
                    continue
                followed.add(key)
                resp = self.core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container="pytorch", follow=True, _preload_content=False
                )
                try:
                    for line in watch.watch.iter_resp_lines(resp):
                        self.log(f"[master-0] {line}")
                        if done.is_set():
                            break
                finally:
                    resp.release_conn()
            except ApiException as err:
                if err.status not in (400, 404):  # container not started yet / pod gone: try again
                    raise
                done.wait(2)


def _container_instance(pod: Any) -> tuple[str, int] | None:
    """Identity of the running (or finished) ``pytorch`` container, None before it starts."""
    if pod is None or pod.status is None:
        return None
    for status in pod.status.container_statuses or []:
        if status.name == "pytorch" and status.state is not None and (status.state.running or status.state.terminated):
            return pod.metadata.uid, status.restart_count or 0
    return None


def submit_and_wait(
    objects: list[dict[str, Any]],
    namespace: str | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    delete: bool = False,
    api_client: client.ApiClient | None = None,
    log: Callable[[str], None] = print,
) -> JobStatus | dict[str, Any]:
    """Apply the ConfigMaps, submit the PyTorchJob and (optionally) wait for it and delete it."""
    backend = KubernetesBackend(api_client, log=log)
    jobs = [o for o in objects if o.get("kind") == "PyTorchJob"]
    if len(jobs) != 1:
        raise ValueError(f"expected exactly one PyTorchJob among the objects, got {len(jobs)}")
    namespace = namespace or jobs[0]["metadata"].get("namespace") or "default"
    objects = [{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in objects]
    job = next(o for o in objects if o.get("kind") == "PyTorchJob")
    for obj in objects:
        if obj.get("kind") == "ConfigMap":
            backend.apply_config_map(obj, namespace)
    backend.submit(job, namespace)
    if not wait:
        return job
    name = job["metadata"]["name"]
    try:
        return backend.wait(name, namespace, timeout)
    finally:
        if delete:
            backend.delete(name, namespace)
