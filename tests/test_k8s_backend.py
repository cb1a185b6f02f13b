"""The Kubernetes backend against a local HTTP server speaking the Kubernetes API's JSON.

The server keeps objects with resourceVersions and an event history, serves watches as
newline-delimited JSON over chunked HTTP/1.1 (as the API server does), answers a watch from a
compacted resourceVersion with an ``ERROR`` 410 event, and streams pod logs. The real kubernetes
client code path runs against it; tests assert on the requests it received.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from operators.k8s_backend import JobTimeout, KubernetesBackend, submit_and_wait
from operators.pytorchjob import build_config_map, build_pytorchjob
from vlm_core.config import parse_config

JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
CONFIGMAPS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}


class FakeKubeAPI:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name)
        self.events: list[tuple[int, str, dict]] = []
        self.rv = 0
        self.oldest_rv = 0  # watches from an older resourceVersion get 410 Gone
        self.requests: list[tuple[str, str, dict, object]] = []  # method, path, query, body
        self.watch_rvs: list[str | None] = []
        self.on_watch = lambda index, rv: None
        self.max_events_per_watch: int | None = None
        self.pods: list[dict] = []
        self.pod_logs: dict[str, list[str]] = {}
        self.logs_served = threading.Event()

    # -- state changes (as the training operator would make them)

    def put(self, resource: str, ns: str, obj: dict, event: str) -> dict:
        with self.lock:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.update(namespace=ns, resourceVersion=str(self.rv))
            meta.setdefault("uid", f"uid-{meta['name']}")
            self.objects[(resource, ns, meta["name"])] = obj
            self.events.append((self.rv, event, obj))
            self.lock.notify_all()
            return obj

    def set_condition(self, ns: str, name: str, ctype: str, reason: str = "", message: str = "") -> None:
        obj = copy.deepcopy(self.objects[("pytorchjobs", ns, name)])
        conds = obj.setdefault("status", {}).setdefault("conditions", [])
        conds.append({"type": ctype, "status": "True", "reason": reason, "message": message})
        self.put("pytorchjobs", ns, obj, "MODIFIED")

    def compact(self) -> None:
        with self.lock:
            self.oldest_rv = self.rv

    def requests_to(self, method: str, pattern: str) -> list:
        return [r for r in self.requests if r[0] == method and re.search(pattern, r[1])]


def make_handler(api: FakeKubeAPI):
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
            body = self._body() if method in ("POST", "PUT", "DELETE") else None
            api.requests.append((method, url.path, query, body))
            if m := JOBS.match(url.path):
                return self._objects("pytorchjobs", method, m.group(1), m.group(2), query, body)
            if m := CONFIGMAPS.match(url.path):
                return self._objects("configmaps", method, m.group(1), m.group(2), query, body)
            if m := PODS.match(url.path):
                wanted = dict(kv.split("=") for kv in query.get("labelSelector", "").split(",") if kv)
                items = [p for p in api.pods if wanted.items() <= p["metadata"]["labels"].items()]
                return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
            if m := POD_LOG.match(url.path):
                self._start_chunked("text/plain")
                for line in api.pod_logs.get(m.group(2), []):
                    self._chunk(line.encode() + b"\n")
                self._end_chunked()
                api.logs_served.set()
                return None
            return self._send(404, status(404, "NotFound", f"no route {url.path}"))

        def _objects(self, resource, method, ns, name, query, body):
            key = (resource, ns, name)
            if method == "POST":
                key = (resource, ns, body["metadata"]["name"])
                if key in api.objects:
                    return self._send(409, status(409, "AlreadyExists", f'{resource} "{key[2]}" already exists'))
                return self._send(201, api.put(resource, ns, body, "ADDED"))
            if method == "PUT":
                return self._send(200, api.put(resource, ns, body, "MODIFIED"))
            if method == "DELETE":
                obj = api.objects.pop(key, None)
                if obj is None:
                    return self._send(404, status(404, "NotFound", f"{name} not found"))
                return self._send(200, status(200, "Success", "deleted") | {"status": "Success"})
            if name is not None:
                if key not in api.objects:
                    return self._send(404, status(404, "NotFound", f"{name} not found"))
                return self._send(200, api.objects[key])
            if query.get("watch", "").lower() in ("true", "1"):  # the python client sends "True"
                return self._watch(resource, ns, query)
            items = [o for (r, n, _), o in api.objects.items() if r == resource and n == ns]
            return self._send(200, {"kind": "List", "metadata": {"resourceVersion": str(api.rv)}, "items": items})

        def _watch(self, resource, ns, query):
            rv = query.get("resourceVersion")
            index = len(api.watch_rvs)
            api.watch_rvs.append(rv)
            api.on_watch(index, rv)
            field = query.get("fieldSelector", "")
            only = field.split("=", 1)[1] if field.startswith("metadata.name=") else None
            deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
            self._start_chunked("application/json")
            if rv is not None and int(rv) < api.oldest_rv:
                gone = status(410, "Expired", f"too old resource version: {rv} ({api.oldest_rv})")
                self._chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return self._end_chunked()
            last, sent = int(rv or 0), 0
            with api.lock:
                while time.monotonic() < deadline:
                    for erv, etype, obj in api.events:
                        if erv <= last or obj["metadata"].get("namespace") != ns:
                            continue
                        last = erv
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

        def do_DELETE(self):
            self._route("DELETE")

    return Handler


@pytest.fixture()
def kube():
    api = FakeKubeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api_client = client.ApiClient(configuration)
    try:
        yield api, api_client
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def cfg():
    return parse_config(
        {
            "name": "demo",
            "data": {"datasets": {"caps": {"url": "s3://b/caps.jsonl"}}},
            "stages": {"align": {"datasets": ["caps"], "trainable": ["projector"], "max_steps": 5}},
            "distributed": {"nodes": 2},
        }
    )


def master_pod(job: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-master-0",
            "namespace": "ml",
            "uid": "pod-1",
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


def test_submit_twice_attaches_to_the_existing_job(kube, cfg):
    api, api_client = kube
    backend = KubernetesBackend(api_client, log=lambda line: None)
    job = build_pytorchjob(cfg, "align", namespace="ml")
    first = backend.submit(job, "ml")
    api.set_condition("ml", "demo-align", "Running")
    second = backend.submit(job, "ml")
    assert first["metadata"]["resourceVersion"] == "1"
    assert second["status"]["conditions"][0]["type"] == "Running"  # the existing object, not ours
    posts = api.requests_to("POST", r"/pytorchjobs$")
    assert len(posts) == 2 and all(body == job for *_, body in posts)
    assert posts[0][1] == "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs"


def test_wait_reconnects_after_stream_end_and_410_and_streams_master_logs(kube, cfg):
    api, api_client = kube
    lines: list[str] = []
    backend = KubernetesBackend(api_client, log=lines.append)
    backend.submit(build_pytorchjob(cfg, "align"), "ml")
    api.pods.append(master_pod("demo-align"))
    api.pod_logs["demo-align-master-0"] = ["step 1 loss 2.0", "step 2 loss 1.5"]
    api.max_events_per_watch = 1

    def operator(index: int, rv: str) -> None:
        if index == 0:  # one event, then the server ends the stream
            api.set_condition("ml", "demo-align", "Running", "PyTorchJobRunning")
        elif index == 1:  # history compacted past the client's resourceVersion: 410 Gone
            api.set_condition("ml", "demo-align", "Running", "StillRunning")
            api.compact()
        else:
            assert api.logs_served.wait(10)
            threading.Timer(0.2, api.set_condition, ("ml", "demo-align", "Succeeded", "PyTorchJobSucceeded", "done")).start()

    api.on_watch = operator
    result = backend.wait("demo-align", "ml", timeout=30)
    assert result.succeeded and result.reason == "PyTorchJobSucceeded" and result.message == "done"
    # every reconnect resumes from the resourceVersion of a fresh GET
    assert api.watch_rvs == ["1", "2", "3"]
    watches = api.requests_to("GET", r"/pytorchjobs$")
    assert all(q["fieldSelector"] == "metadata.name=demo-align" and q["watch"].lower() == "true" for _, _, q, _ in watches)
    assert any("410" in line for line in lines)
    assert "[master-0] step 1 loss 2.0" in lines and "[master-0] step 2 loss 1.5" in lines
    (pod_list,) = api.requests_to("GET", r"/pods$")[:1]
    assert pod_list[2]["labelSelector"] == (
        "training.kubeflow.org/job-name=demo-align,training.kubeflow.org/replica-type=master"
    )
    (log_request,) = api.requests_to("GET", r"/log$")
    assert log_request[1] == "/api/v1/namespaces/ml/pods/demo-align-master-0/log"
    assert log_request[2]["follow"].lower() == "true" and log_request[2]["container"] == "pytorch"


def test_wait_times_out_across_reconnects(kube, cfg):
    api, api_client = kube
    backend = KubernetesBackend(api_client, log=lambda line: None)
    backend.submit(build_pytorchjob(cfg, "align"), "ml")
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="demo-align"):
        backend.wait("demo-align", "ml", timeout=2.5, follow_logs=False)
    assert time.monotonic() - started < 8
    assert len(api.watch_rvs) >= 2  # the 1 s server-side watches ended and were reopened


def test_submit_and_wait_applies_config_map_reports_failure_and_deletes(kube, cfg):
    api, api_client = kube
    objects = [build_config_map(cfg), build_pytorchjob(cfg, "align")]
    api.put("configmaps", "ml", build_config_map(cfg), "ADDED")  # from an earlier run
    api.on_watch = lambda index, rv: api.set_condition("ml", "demo-align", "Failed", "PyTorchJobFailed", "OOMKilled")
    result = submit_and_wait(objects, "ml", timeout=20, delete=True, api_client=api_client, log=lambda line: None)
    assert result.state == "Failed" and result.message == "OOMKilled"
    (put,) = api.requests_to("PUT", r"/configmaps/demo-config$")
    assert put[3]["data"]["config.yaml"] == cfg.to_yaml()
    (delete,) = api.requests_to("DELETE", r"/pytorchjobs/demo-align$")
    assert delete[3]["propagationPolicy"] == "Foreground"
    assert ("pytorchjobs", "ml", "demo-align") not in api.objects
    assert api.requests_to("POST", r"/namespaces/ml/pytorchjobs$")[0][3]["metadata"]["namespace"] == "ml"
