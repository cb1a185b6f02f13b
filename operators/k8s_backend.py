"""Run a PyTorchJob on a cluster through the kubernetes client: adopt or create, watch, stream logs.

- ``run`` first looks the job up by name. One that exists is *adopted*: finished, its outcome is
  returned as it is (Succeeded: nothing to do; Failed: its reason); running, it is watched. Only
  a job that does not exist is created, after its ConfigMap. So a restarted driver (or a retried
  KFP task) picks up the job it launched before instead of starting a second one.
- ``wait`` watches the job until a ``Succeeded`` or ``Failed`` condition. A watch ends when the
  server closes it (its timeout) and fails with 410 Gone when its resourceVersion is too old
  (etcd compaction); both reconnect after a fresh GET, which also catches a finish that happened
  between two streams. The overall timeout holds across reconnects.
- The master pod's log (``training.kubeflow.org/replica-type=master``) streams while waiting,
  again after each container restart.
- Ownership: with ``VLM_DRIVER_JOB`` set (the chart's driver Job sets its own name), the job and
  its ConfigMap get an ownerReference to that batch/v1 Job, so deleting the driver (``helm
  uninstall``, ``kubectl delete -k``) deletes what the run created. Without it (KFP tasks, a
  laptop) they carry the run's labels: ``kubectl delete pytorchjobs,configmaps -l
  app.kubernetes.io/part-of=<run>``.

Every API call is one ``ApiRequest`` (verb, API group, resource, namespace, name; see
``operators/k8s_errors.py``): together exactly the rules of the launcher Role
(charts/vlm-platform/templates/rbac.yaml). When the server refuses one, a ``KubeApiError`` says
in one line what was refused, to whom, and the rule that would allow it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from operators.k8s_errors import ApiRequest, JobTimeout, KubeApiError, KubeConfigError, explain
from operators.pytorchjob import (
    CONTAINER,
    GROUP,
    PLURAL,
    VERSION,
    JobOutcome,
    split_objects,
    with_owner,
)

TERMINAL = ("Succeeded", "Failed")
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
WATCH_SECONDS = 60  # server-side timeout of one watch; the loop reconnects
DRIVER_ENV = "VLM_DRIVER_JOB"  # name of the batch/v1 Job that owns the run's objects


@dataclass
class JobStatus(JobOutcome):
    object: dict[str, Any] = field(default_factory=dict)


def load_kube_config(context: str | None = None) -> None:
    """In-cluster credentials inside a pod, otherwise the kubeconfig (``KUBECONFIG`` / ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config(context=context)
        except (config.ConfigException, OSError) as err:
            raise KubeConfigError(
                f"no Kubernetes credentials: not in a pod, and the kubeconfig (KUBECONFIG or ~/.kube/config) "
                f"gives none ({' '.join(str(err).split())})"
            ) from None


def terminal_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The job's Succeeded/Failed condition when it is true, else None."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in TERMINAL and str(cond.get("status")) == "True":
            return cond
    return None


class KubernetesBackend:
    """Run PyTorchJobs on the cluster of ``api_client`` (default: in-cluster or kubeconfig
    credentials) in ``namespace`` (default: each object's); ``run(objects)`` -> ``JobStatus``."""

    def __init__(
        self,
        namespace: str | None = None,
        *,
        api_client: client.ApiClient | None = None,
        timeout: float | None = None,
        follow_logs: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        if api_client is None:
            load_kube_config()
            api_client = client.ApiClient()
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.namespace, self.timeout, self.follow_logs, self.log = namespace, timeout, follow_logs, log

    def _call(self, request: ApiRequest, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise explain(request, err) from None
        except HTTPError as err:
            host = self.api_client.configuration.host
            raise KubeApiError(request, None, f"cannot reach the Kubernetes API at {host} to {request.verb} "
                                              f"{request.what()}: {err}") from None  # fmt: skip

    # -- the steps

    def run(self, objects: list[dict[str, Any]]) -> JobStatus:
        """Adopt the step's PyTorchJob if it exists, else create it (and its ConfigMaps); wait."""
        job, config_maps = split_objects(objects)
        namespace = self.namespace or job["metadata"].get("namespace") or "default"
        name = job["metadata"]["name"]
        existing = self.get(name, namespace)
        if existing is None:
            owned = with_owner([*config_maps, job], self.owner(namespace))
            for obj in owned[:-1]:
                self.apply_config_map(obj, namespace)
            existing = self.submit(owned[-1], namespace)
        else:
            self.log(f"pytorchjob {namespace}/{name} exists: adopting it")
        if (cond := terminal_condition(existing)) is not None:
            return _status(name, cond, existing)
        return self.wait(name, namespace, self.timeout)

    def owner(self, namespace: str) -> dict[str, Any] | None:
        """The ownerReference to the driver Job named by ``VLM_DRIVER_JOB``, None when unset."""
        name = os.environ.get(DRIVER_ENV)
        if not name:
            return None
        request = ApiRequest("get", "batch", "jobs", namespace, name)
        driver = self._call(request, self.batch.read_namespaced_job, name, namespace)
        return {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": driver.metadata.uid}

    def apply_config_map(self, obj: dict[str, Any], namespace: str) -> None:
        """Create the ConfigMap, or replace one left by an earlier attempt (its job never started)."""
        name = obj["metadata"]["name"]
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        try:
            self._call(ApiRequest("create", "", "configmaps", namespace), self.core.create_namespaced_config_map, namespace, obj)
        except KubeApiError as err:
            if err.status != 409:
                raise
            request = ApiRequest("update", "", "configmaps", namespace, name)
            self._call(request, self.core.replace_namespaced_config_map, name, namespace, obj)

    def submit(self, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Create the PyTorchJob; one of that name created meanwhile (409) is adopted."""
        name = obj["metadata"]["name"]
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        request = ApiRequest("create", GROUP, PLURAL, namespace)
        try:
            created = self._call(request, self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, obj)
        except KubeApiError as err:
            if err.status != 409:
                raise
            self.log(f"pytorchjob {namespace}/{name} exists: adopting it")
            return self.get(name, namespace) or obj
        self.log(f"created pytorchjob {namespace}/{name}")
        return created

    def get(self, name: str, namespace: str) -> dict[str, Any] | None:
        request = ApiRequest("get", GROUP, PLURAL, namespace, name)
        try:
            return self._call(request, self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        except KubeApiError as err:
            if err.status == 404:
                return None
            raise

    # -- wait

    def wait(self, name: str, namespace: str, timeout: float | None = None) -> JobStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        done = threading.Event()
        follower = None
        if self.follow_logs:
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
            if obj is None:
                raise RuntimeError(f"pytorchjob {namespace}/{name} was deleted while waiting")
            if (cond := terminal_condition(obj)) is not None:
                return _status(name, cond, obj)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(f"pytorchjob {namespace}/{name} did not finish in time")
            seconds = WATCH_SECONDS if remaining is None else max(1, min(WATCH_SECONDS, int(remaining)))
            opened = time.monotonic()
            status, events = self._watch_once(name, namespace, obj["metadata"]["resourceVersion"], seconds)
            if status is not None:
                return status
            if events == 0 and time.monotonic() - opened < 1:
                time.sleep(1)  # a server that closes watches at once must not make us spin

    def _watch_once(self, name: str, namespace: str, version: str, seconds: int) -> tuple[JobStatus | None, int]:
        """One watch stream: the terminal status if it came, and how many events did."""
        request = ApiRequest("watch", GROUP, PLURAL, namespace, name)
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            GROUP, VERSION, namespace, PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=version,
            timeout_seconds=seconds,
            _request_timeout=seconds + 10,
        )  # fmt: skip
        events = 0
        try:
            for event in stream:
                events += 1
                if event["type"] == "DELETED":
                    raise RuntimeError(f"pytorchjob {namespace}/{name} was deleted while waiting")
                if (cond := terminal_condition(event["object"])) is not None:
                    return _status(name, cond, event["object"]), events
        except ApiException as err:
            if err.status != 410:  # Gone: our resourceVersion was compacted away; re-list
                raise explain(request, err) from None
            self.log(f"watch of {name} expired (410 Gone); reconnecting")
        except HTTPError as err:  # a dropped connection: the next GET tells whether the server is there
            self.log(f"watch of {name} interrupted ({type(err).__name__}); reconnecting")
        return None, events

    # -- logs

    def master_pod(self, name: str, namespace: str) -> Any | None:
        selector = f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}=master"
        request = ApiRequest("list", "", "pods", namespace)
        pods = self._call(request, self.core.list_namespaced_pod, namespace, label_selector=selector).items
        return pods[0] if pods else None

    def _follow_master_logs(self, name: str, namespace: str, done: threading.Event) -> None:
        try:
            self._stream_master_logs(name, namespace, done)
        except KubeApiError as err:  # logs are a convenience: say why they stop, keep watching
            self.log(f"not following the logs of {name}: {err}")

    def _stream_master_logs(self, name: str, namespace: str, done: threading.Event) -> None:
        followed: set[tuple[str, int]] = set()  # (pod uid, container restart count)
        while not done.is_set():
            pod = self.master_pod(name, namespace)
            key = _container_instance(pod)
            if key is None or key in followed:
                done.wait(2)
                continue
            followed.add(key)
            request = ApiRequest("get", "", "pods/log", namespace, pod.metadata.name)
            try:
                resp = self._call(request, self.core.read_namespaced_pod_log, pod.metadata.name, namespace,
                                  container=CONTAINER, follow=True, _preload_content=False)  # fmt: skip
            except KubeApiError as err:
                if err.status not in (400, 404):  # container not started yet / pod gone: try again
                    raise
                done.wait(2)
                continue
            try:
                for line in watch.watch.iter_resp_lines(resp):
                    self.log(f"[master-0] {line}")
                    if done.is_set():
                        break
            finally:
                resp.release_conn()


def _status(name: str, cond: dict[str, Any], obj: dict[str, Any]) -> JobStatus:
    return JobStatus(name, cond["type"], cond.get("reason", ""), cond.get("message", ""), object=obj)


def _container_instance(pod: Any) -> tuple[str, int] | None:
    """Identity of the running (or finished) ``pytorch`` container, None before it starts."""
    if pod is None or pod.status is None:
        return None
    for status in pod.status.container_statuses or []:
        if status.name == CONTAINER and status.state is not None and (status.state.running or status.state.terminated):
            return pod.metadata.uid, status.restart_count or 0
    return None
