"""A Kubernetes API server for tests that enforces what the real one enforces that matters to us,
and an operator simulator that moves PyTorchJob conditions.

The server speaks the API's JSON over HTTP/1.1 to the real kubernetes client:

- *authentication*: a bearer token per ServiceAccount (401 without one);
- *authorization*: every request becomes (verb, API group, resource[/subresource], namespace,
  name) exactly as the API server's request-info resolver does it (GET on a collection is
  ``list``, with ``watch=true`` it is ``watch``, a single-object watch names the object through
  ``fieldSelector=metadata.name=``), and is checked against the Roles bound to the caller —
  the Role the chart renders (``render_chart_rbac``). Anything else is a 403 whose Status says
  what was refused to whom, in the API server's words;
- *admission*: a PyTorchJob must pass the CRD's openAPIV3Schema (unknown fields rejected, as
  ``kubectl`` asks with strict field validation) and the training operator's webhook rules:
  422 Invalid otherwise; names must be DNS labels;
- *semantics*: resourceVersions and an event history; 409 AlreadyExists on create, 404 NotFound,
  watches as chunked newline-delimited JSON that end at ``timeoutSeconds``, and an ``ERROR`` 410
  Gone event for a compacted resourceVersion; uid and creationTimestamp set by the server;
  deleting an object deletes its dependents (garbage collection by ownerReferences uid).

``OperatorSimulator`` plays the training operator and the pods: for every PyTorchJob created it
adds the master pod, the ``Created`` and ``Running`` conditions, calls ``work(job, cfg)`` (what
the pods would have done, with the run config from the job's mounted ConfigMap), then sets
``Succeeded`` — or ``Failed`` with the reason and message given in ``failures``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "vlm-platform"
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# URL path -> (API group, version, resource)
ROUTES = [
    (re.compile(r"^/apis/(kubeflow\.org)/(v1)/namespaces/([^/]+)/(pytorchjobs)(?:/([^/]+))?(?:/(status))?$")),
    (re.compile(r"^/apis/(batch)/(v1)/namespaces/([^/]+)/(jobs)(?:/([^/]+))?(?:/(status))?$")),
    (re.compile(r"^/api()/(v1)/namespaces/([^/]+)/(configmaps|pods)(?:/([^/]+))?(?:/(log|status))?$")),
]
KINDS = {"pytorchjobs": "PyTorchJob", "jobs": "Job", "configmaps": "ConfigMap", "pods": "Pod"}


def status(code: int, reason: str, message: str, **details: Any) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip
    if details:
        body["details"] = details
    return body


@dataclass(frozen=True)
class RequestInfo:
    verb: str
    group: str
    resource: str  # with the subresource: "pods/log"
    namespace: str
    name: str | None


def rule_allows(rule: dict, req: RequestInfo) -> bool:
    def has(values, value):
        return "*" in values or value in values

    return (
        has(rule.get("apiGroups") or [], req.group)
        and has(rule.get("resources") or [], req.resource)
        and has(rule.get("verbs") or [], req.verb)
        and (not rule.get("resourceNames") or req.name in rule["resourceNames"])
    )


def render_chart_rbac(namespace: str = "vlm", values: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(Roles, RoleBindings) the project's chart renders: the RBAC the launcher gets."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="vlm", namespace=namespace)
    objects = [o for name, text in rendered.items() if name.endswith(".yaml") for o in yaml.safe_load_all(text) if o]
    return [o for o in objects if o["kind"] == "Role"], [o for o in objects if o["kind"] == "RoleBinding"]


class KubeAPI:
    """The server's state. ``requests`` lists (user, RequestInfo, allowed) for every request."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name)
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, type, resource, object)
        self.rv = 0
        self.oldest_rv = 0  # watches from an older resourceVersion get 410 Gone
        self.tokens: dict[str, str] = {}  # bearer token -> user
        self.roles: list[dict] = []
        self.bindings: list[dict] = []
        self.requests: list[tuple[str, RequestInfo, bool]] = []
        self.pod_logs: dict[str, list[str]] = {}
        self.max_events_per_watch: int | None = None
        self.on_watch: Callable[[int, str | None], None] = lambda index, rv: None
        self.watches = 0

    # -- identities and RBAC

    def service_account(self, namespace: str, name: str) -> str:
        """A token for ``system:serviceaccount:<namespace>:<name>``."""
        token = f"token-{namespace}-{name}"
        self.tokens[token] = f"system:serviceaccount:{namespace}:{name}"
        return token

    def admin(self) -> str:
        self.tokens["admin"] = "admin"
        return "admin"

    def load_rbac(self, roles: list[dict], bindings: list[dict]) -> None:
        self.roles, self.bindings = roles, bindings

    def authorize(self, user: str, req: RequestInfo) -> bool:
        if user == "admin":
            return True
        for binding in self.bindings:
            if binding["metadata"].get("namespace") != req.namespace:
                continue
            subjects = {f"system:serviceaccount:{s.get('namespace')}:{s['name']}" for s in binding.get("subjects") or []
                        if s.get("kind") == "ServiceAccount"}  # fmt: skip
            if user not in subjects:
                continue
            role = next((r for r in self.roles if r["metadata"]["name"] == binding["roleRef"]["name"]
                         and r["metadata"].get("namespace") == req.namespace), None)  # fmt: skip
            if role and any(rule_allows(rule, req) for rule in role.get("rules") or []):
                return True
        return False

    def refused(self, user: str) -> list[RequestInfo]:
        return [req for who, req, allowed in self.requests if who == user and not allowed]

    # -- state changes (as the API server, the operator or the garbage collector make them)

    def put(self, resource: str, ns: str, obj: dict, event: str) -> dict:
        with self.lock:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.update(namespace=ns, resourceVersion=str(self.rv))
            meta.setdefault("uid", f"uid-{resource}-{meta['name']}-{self.rv}")
            meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self.objects[(resource, ns, meta["name"])] = obj
            self.events.append((self.rv, event, resource, obj))
            self.lock.notify_all()
            return obj

    def delete(self, resource: str, ns: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.pop((resource, ns, name), None)
            if obj is None:
                return None
            self.rv += 1
            self.events.append((self.rv, "DELETED", resource, obj))
            uid = obj["metadata"]["uid"]
            dependents = [(r, n, m) for (r, n, m), o in self.objects.items()
                          if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences") or [])]  # fmt: skip
            for dependent in dependents:
                self.delete(*dependent)
            self.lock.notify_all()
            return obj

    def get(self, resource: str, ns: str, name: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((resource, ns, name)))

    def of(self, resource: str, ns: str | None = None) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(o) for (r, n, _), o in self.objects.items() if r == resource and ns in (None, n)]

    def set_condition(self, ns: str, name: str, ctype: str, reason: str = "", message: str = "") -> None:
        with self.lock:
            obj = copy.deepcopy(self.objects[("pytorchjobs", ns, name)])
            conds = obj.setdefault("status", {}).setdefault("conditions", [])
            for cond in conds:
                cond["status"] = "False" if cond["type"] in ("Created", "Running") and ctype != cond["type"] else cond["status"]
            conds.append({"type": ctype, "status": "True", "reason": reason, "message": message})
            self.put("pytorchjobs", ns, obj, "MODIFIED")

    def compact(self) -> None:
        with self.lock:
            self.oldest_rv = self.rv


def condition(obj: dict | None, ctype: str) -> bool:
    return any(c["type"] == ctype and c["status"] == "True" for c in ((obj or {}).get("status") or {}).get("conditions") or [])


def admission_problems(resource: str, obj: Any) -> list[str]:
    """What the API server (CRD schema) and the operator's webhook refuse in a new object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return ["metadata: Required value"]
    name = obj["metadata"].get("name")
    if not isinstance(name, str) or not DNS1123.match(name) or len(name) > 253:
        return [f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of ..."]
    if resource == "pytorchjobs":
        from operators.validation import pytorchjob_problems

        return pytorchjob_problems(obj)
    if resource == "configmaps":
        return [f"data[{k}]: must be a string" for k, v in (obj.get("data") or {}).items() if not isinstance(v, str)]
    return []


def _request_info(method: str, group: str, resource: str, ns: str, name: str | None, sub: str | None, query: dict) -> RequestInfo:
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "get")
    if method == "GET" and name is None:
        verb = "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
        field_selector = query.get("fieldSelector", "")
        if field_selector.startswith("metadata.name="):
            name = field_selector.split("=", 1)[1]  # as the API server: a one-object list/watch names it
    return RequestInfo(verb, group, f"{resource}/{sub}" if sub else resource, ns, name)


def forbidden(user: str, req: RequestInfo) -> dict:
    kind = f"{req.resource.split('/')[0]}.{req.group}" if req.group else req.resource.split("/")[0]
    subject = f'{kind} "{req.name}"' if req.name else kind
    message = (f'{subject} is forbidden: User "{user}" cannot {req.verb} resource "{req.resource}" in API group '
               f'"{req.group}" in the namespace "{req.namespace}"')  # fmt: skip
    return status(403, "Forbidden", message, name=req.name or "", group=req.group, kind=req.resource.split("/")[0])


def make_handler(api: KubeAPI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length)) if length else None

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _start_chunked(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _end_chunked(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            auth = self.headers.get("Authorization", "")
            user = api.tokens.get(auth.removeprefix("Bearer ").strip())
            if user is None:
                return self._send(401, status(401, "Unauthorized", "Unauthorized"))
            match = next((m for pattern in ROUTES if (m := pattern.match(url.path))), None)
            if match is None:
                return self._send(404, status(404, "NotFound", "the server could not find the requested resource"))
            group, _, ns, resource, name, sub = match.groups()
            req = _request_info(method, group, resource, ns, name, sub, query)
            allowed = api.authorize(user, req)
            api.requests.append((user, req, allowed))
            if not allowed:
                return self._send(403, forbidden(user, req))
            if sub == "log":
                return self._log(ns, name)
            return self._objects(resource, method, ns, name, query, body)

        def _log(self, ns: str, pod: str) -> None:
            if api.get("pods", ns, pod) is None:
                return self._send(404, status(404, "NotFound", f'pods "{pod}" not found'))
            self._start_chunked("text/plain")
            for line in api.pod_logs.get(pod, []):
                self._chunk(line.encode() + b"\n")
            return self._end_chunked()

        def _objects(self, resource, method, ns, name, query, body):
            kind = KINDS[resource]
            if method == "POST":
                problems = admission_problems(resource, body)
                if problems:
                    named = (body.get("metadata") or {}).get("name") if isinstance(body, dict) else None
                    return self._send(422, status(422, "Invalid", f'{kind} "{named}" is invalid: ' + "; ".join(problems)))
                if api.get(resource, ns, body["metadata"]["name"]) is not None:
                    return self._send(409, status(409, "AlreadyExists", f'{resource} "{body["metadata"]["name"]}" already exists'))
                return self._send(201, api.put(resource, ns, body, "ADDED"))
            if method == "PUT":
                if api.get(resource, ns, name) is None:
                    return self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
                return self._send(200, api.put(resource, ns, body, "MODIFIED"))
            if method == "DELETE":
                if api.delete(resource, ns, name) is None:
                    return self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            if name is not None:
                obj = api.get(resource, ns, name)
                if obj is None:
                    return self._send(404, status(404, "NotFound", f'{resource} "{name}" not found'))
                return self._send(200, obj)
            if query.get("watch", "").lower() in ("true", "1"):  # the python client sends "True"
                return self._watch(resource, ns, query)
            wanted = dict(kv.split("=", 1) for kv in query.get("labelSelector", "").split(",") if kv)
            items = [o for o in api.of(resource, ns) if wanted.items() <= (o["metadata"].get("labels") or {}).items()]
            return self._send(200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(api.rv)},
                                    "items": items})  # fmt: skip

        def _watch(self, resource, ns, query):
            rv = query.get("resourceVersion")
            index = api.watches
            api.watches += 1
            api.on_watch(index, rv)
            selector = query.get("fieldSelector", "")
            only = selector.split("=", 1)[1] if selector.startswith("metadata.name=") else None
            deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
            self._start_chunked("application/json")
            if rv is not None and int(rv) < api.oldest_rv:
                gone = status(410, "Expired", f"too old resource version: {rv} ({api.oldest_rv})")
                self._chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return self._end_chunked()
            last, sent = int(rv or 0), 0
            with api.lock:
                while time.monotonic() < deadline:
                    for erv, etype, eresource, obj in api.events:
                        if erv <= last:
                            continue
                        last = erv
                        if eresource != resource or obj["metadata"].get("namespace") != ns:
                            continue
                        if only and obj["metadata"]["name"] != only:
                            continue
                        self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                        sent += 1
                        if api.max_events_per_watch and sent >= api.max_events_per_watch:
                            return self._end_chunked()
                    api.lock.wait(0.05)
            return self._end_chunked()

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_PATCH(self):
            self._route("PATCH")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client hung up: not news
            super().handle_error(request, client_address)


class KubeServer:
    """The API server on 127.0.0.1; ``client(token)`` is a kubernetes ApiClient for a caller."""

    def __init__(self) -> None:
        self.api = KubeAPI()
        self.http = _Server(("127.0.0.1", 0), make_handler(self.api))
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def client(self, token: str):
        from kubernetes import client

        configuration = client.Configuration(host=self.url, api_key={"authorization": f"Bearer {token}"})
        return client.ApiClient(configuration)

    def kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig file that reaches this server as ``token`` (for subprocesses)."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))  # fmt: skip
        return path

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# ----------------------------------------------------------------------------- the operator


def job_config(api: KubeAPI, job: dict):
    """The run config a job's pods read: ``config.yaml`` of the ConfigMap it mounts."""
    from vlm_core.config import parse_config

    pod = next(iter(job["spec"]["pytorchReplicaSpecs"].values()))["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    config_map = api.get("configmaps", job["metadata"]["namespace"], volume["configMap"]["name"])
    assert config_map is not None, f"{job['metadata']['name']} mounts ConfigMap {volume['configMap']['name']}, which does not exist"
    return parse_config(yaml.safe_load(config_map["data"]["config.yaml"]))


@dataclass
class OperatorSimulator:
    """Moves every new PyTorchJob through Created -> Running -> Succeeded/Failed (see module doc)."""

    api: KubeAPI
    work: Callable[[dict, Any], None] = lambda job, cfg: None
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # job name -> (reason, message)
    hold: set[str] = field(default_factory=set)  # jobs left Running until released
    step_seconds: float = 0.05
    created: list[str] = field(default_factory=list)
    # job name -> names of the PyTorchJobs that had Succeeded when it was created
    succeeded_before: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._seen = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def release(self, name: str) -> None:
        self.hold.discard(name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.api.lock:
                new = [(e[3]["metadata"]["namespace"], e[3]["metadata"]["name"]) for e in self.api.events[self._seen:]
                       if e[1] == "ADDED" and e[2] == "pytorchjobs"]  # fmt: skip
                self._seen = len(self.api.events)
            for ns, name in new:
                self.created.append(name)
                self.succeeded_before[name] = {j["metadata"]["name"] for j in self.api.of("pytorchjobs", ns)
                                               if condition(j, "Succeeded")}  # fmt: skip
                threading.Thread(target=self._run_job, args=(ns, name), daemon=True).start()
            time.sleep(0.02)

    def _run_job(self, ns: str, name: str) -> None:
        job = self.api.get("pytorchjobs", ns, name)
        self.api.set_condition(ns, name, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        pod = f"{name}-master-0"
        self.api.put("pods", ns, _master_pod(ns, name), "ADDED")
        self.api.pod_logs[pod] = [f"{name}: step 1", f"{name}: done"]
        time.sleep(self.step_seconds)
        self.api.set_condition(ns, name, "Running", "PyTorchJobRunning", f"PyTorchJob {name} is running.")
        while name in self.hold and not self._stop.is_set():
            time.sleep(0.02)
        time.sleep(self.step_seconds)
        if self.api.get("pytorchjobs", ns, name) is None:
            return
        if name in self.failures:
            reason, message = self.failures[name]
            self.api.set_condition(ns, name, "Failed", reason, message)
            return
        self.work(job, job_config(self.api, job))
        self.api.set_condition(ns, name, "Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {name} is successfully completed.")


def _master_pod(ns: str, job: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-master-0",
            "namespace": ns,
            "labels": {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": "master"},
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "pytorch", "ready": True, "restartCount": 0, "image": "x", "imageID": "x",
                 "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
            ],
        },
    }


def pretend_to_run(job: dict, cfg) -> None:
    """What a step's pods leave behind, written from the config they mount: a training stage's
    completion marker (as ``train_stage`` writes it), eval's results."""
    from vlm_core import storage
    from vlm_core.completion import stage_fingerprint, write_marker

    step = job["metadata"]["labels"]["app.kubernetes.io/component"]
    if step == "eval":
        results = {b: {"benchmark": b, "accuracy": 50.0, "num_questions": 4} for b in cfg.eval.benchmarks}
        storage.write_text_atomic(storage.join(cfg.eval_output(), "results.json"), json.dumps(results))
        rows = "".join(f"| {b} | 50.00 |\n" for b in cfg.eval.benchmarks)
        storage.write_text_atomic(storage.join(cfg.eval_output(), "results.md"), "| benchmark | accuracy |\n|---|---|\n" + rows)
        return
    url = cfg.stage_output(step)
    storage.write_text_atomic(storage.join(url, "config.json"), "{}")
    write_marker(url, step, stage_fingerprint(cfg, step), global_step=cfg.stage(step).max_steps, checkpoint=url)
