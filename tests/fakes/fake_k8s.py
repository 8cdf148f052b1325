"""A tiny fake Kubernetes API server for tests: NOT a cluster.

It is a Python ``http.server`` in a thread on 127.0.0.1 that keeps objects in dicts, records every request,
and answers just enough of the API for two clients:

- Spark's Kubernetes backend (fabric8) submitting in cluster mode: POST pods, server-side-apply PATCH of
  configmaps/services, GET pods;
- the kubernetes Python client used by :mod:`fruitlens.deploy.k8s`: list/get/delete jobs and pods, pod logs (with
  ``follow`` streamed in chunks).

Nothing is scheduled, no container runs: tests set pod/job statuses themselves with :meth:`FakeKube.put`.
tests/fakes/k8s_pod_runner.py plugs into its hooks (``runner``) to turn created pods into Docker containers, and
serves it over HTTPS with a bearer token, as a kubelet + API server TEST DOUBLE.
"""
from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

#: collection name → (apiVersion, kind) for the objects the fake knows.
KINDS = {
    "pods": ("v1", "Pod"),
    "configmaps": ("v1", "ConfigMap"),
    "services": ("v1", "Service"),
    "persistentvolumeclaims": ("v1", "PersistentVolumeClaim"),
    "secrets": ("v1", "Secret"),
    "jobs": ("batch/v1", "Job"),
    "deployments": ("apps/v1", "Deployment"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "roles": ("rbac.authorization.k8s.io/v1", "Role"),
    "rolebindings": ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class FakeKube:
    """The server's state; ``url`` is what a client uses as its host."""

    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (collection, ns, name) → obj
    requests: list[Request] = field(default_factory=list)
    logs: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (ns, pod) → chunks
    log_delay: float = 0.0
    url: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Bearer token every request must carry (None: no authentication, the plain fake).
    token: str | None = None
    #: Plug-in that acts on created/deleted objects and serves logs (tests/fakes/k8s_pod_runner.py), or None.
    runner: Any = None

    # -- test-side helpers ------------------------------------------------------------------------------
    def put(self, collection: str, obj: dict) -> dict:
        """Create or replace an object as the cluster would hold it (metadata filled in)."""
        obj = copy.deepcopy(obj)
        api_version, kind = KINDS[collection]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self.lock:
            self.version = getattr(self, "version", 1) + 1
            meta["resourceVersion"] = str(self.version)
            self.objects[(collection, meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, collection: str, name: str, namespace: str = "default") -> dict | None:
        return self.objects.get((collection, namespace, name))

    def of(self, collection: str) -> list[dict]:
        return [o for (c, _, _), o in self.objects.items() if c == collection]

    def sent(self, method: str, path_part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and path_part in r.path]


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k) != v.lstrip("="):
                return False
        elif labels.get(term) is None:
            return False
    return True


def _parse(path: str) -> tuple[str | None, str | None, str | None, str | None]:
    """``/api/v1/namespaces/ns/pods/name/log`` → (ns, collection, name, subresource)."""
    parts = [p for p in path.split("/") if p]
    if "namespaces" not in parts:
        return None, None, None, None
    i = parts.index("namespaces")
    rest = parts[i + 1:]
    ns = rest[0] if rest else None
    coll = rest[1] if len(rest) > 1 else None
    name = rest[2] if len(rest) > 2 else None
    sub = rest[3] if len(rest) > 3 else None
    return ns, coll, name, sub


def _make_handler(state: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if not raw:
                return None
            ctype = self.headers.get("Content-Type", "")
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            try:
                return json.loads(raw)
            except ValueError:
                return raw.decode(errors="replace")

        def _send(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                              "reason": reason, "message": message})

        def _authorized(self) -> bool:
            if state.token is None or self.headers.get("Authorization") == f"Bearer {state.token}":
                return True
            self._status(401, "Unauthorized", "the pod runner's API wants the mounted service-account token")
            return False

        def _record(self) -> Request:
            u = urlparse(self.path)
            req = Request(self.command, u.path, parse_qs(u.query), dict(self.headers), self._body())
            with state.lock:
                state.requests.append(req)
            return req

        def do_GET(self):
            req = self._record()
            if not self._authorized():
                return None
            ns, coll, name, sub = _parse(req.path)
            if coll not in KINDS:
                return self._status(404, "NotFound", f"the fake knows no {req.path}")
            if name is None:
                if req.query.get("watch", ["false"])[0] in ("true", "1"):
                    if state.runner is not None:
                        return state.runner.watch(self, ns, coll, req)
                    # No watch support: an empty stream that ends (clients re-list or give up).
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                selector = (req.query.get("labelSelector") or [None])[0]
                items = [o for (c, n, _), o in sorted(state.objects.items())
                         if c == coll and n == ns and _matches(o["metadata"].get("labels") or {}, selector)]
                api_version, kind = KINDS[coll]
                return self._send(200, {"apiVersion": api_version, "kind": kind + "List",
                                        "metadata": {"resourceVersion": "1"}, "items": items})
            obj = state.get(coll, name, ns)
            if obj is None:
                return self._status(404, "NotFound", f'{coll} "{name}" not found')
            if sub == "log":
                if state.runner is not None:
                    return state.runner.log(self, ns, name, req)
                return self._log(ns, name, req)
            return self._send(200, obj)

        def _log(self, ns: str, name: str, req: Request) -> None:
            chunks = state.logs.get((ns, name))
            if chunks is None:
                return self._status(400, "BadRequest", f'container "driver" in pod "{name}" is waiting to start')
            follow = req.query.get("follow", ["false"])[0] == "true"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                data = chunk.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                if follow and state.log_delay:
                    time.sleep(state.log_delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def do_POST(self):
            req = self._record()
            if not self._authorized():
                return None
            ns, coll, name, _ = _parse(req.path)
            if coll not in KINDS or not isinstance(req.body, dict):
                return self._status(404, "NotFound", f"the fake cannot create {req.path}")
            body = req.body
            body.setdefault("metadata", {})["namespace"] = ns
            if state.get(coll, body["metadata"].get("name", ""), ns) is not None:
                return self._status(409, "AlreadyExists", f'{coll} "{body["metadata"]["name"]}" already exists')
            if coll == "pods":
                body.setdefault("status", {"phase": "Pending"})
            if state.runner is not None:
                return self._send(201, state.runner.create(coll, body))
            return self._send(201, state.put(coll, body))

        def do_PATCH(self):
            req = self._record()
            if not self._authorized():
                return None
            ns, coll, name, _ = _parse(req.path)
            if coll not in KINDS:
                return self._status(404, "NotFound", f"the fake cannot patch {req.path}")
            body = req.body if isinstance(req.body, dict) else {}
            existing = state.get(coll, name, ns)
            if existing is None or "apply-patch" in req.headers.get("Content-Type", ""):
                body.setdefault("metadata", {}).update(name=name, namespace=ns)
                return self._send(200, state.put(coll, {**(existing or {}), **body}))
            merged = copy.deepcopy(existing)
            for k, v in body.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k].update(v)
                else:
                    merged[k] = v
            return self._send(200, state.put(coll, merged))

        def do_PUT(self):
            self.do_PATCH()

        def do_DELETE(self):
            req = self._record()
            if not self._authorized():
                return None
            ns, coll, name, _ = _parse(req.path)
            if coll not in KINDS:
                return self._status(404, "NotFound", f"the fake cannot delete {req.path}")
            if name is None:  # deletecollection
                selector = (req.query.get("labelSelector") or [None])[0]
                gone = [k for k, o in state.objects.items() if k[0] == coll and k[1] == ns
                        and _matches(o["metadata"].get("labels") or {}, selector)]
                with state.lock:
                    items = [state.objects.pop(k) for k in gone]
                if state.runner is not None:
                    for item in items:
                        state.runner.deleted(coll, item)
                api_version, kind = KINDS[coll]
                return self._send(200, {"apiVersion": api_version, "kind": kind + "List", "metadata": {},
                                        "items": items})
            with state.lock:
                obj = state.objects.pop((coll, ns, name), None)
            if obj is None:
                return self._status(404, "NotFound", f'{coll} "{name}" not found')
            if state.runner is not None:
                state.runner.deleted(coll, obj)
            if coll == "pods":  # the API answers a pod deletion with the pod (now terminating)
                return self._send(200, obj)
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                                    "details": {"name": name, "kind": coll}})

    return Handler


class FakeKubeServer:
    """Context manager: ``with FakeKubeServer() as kube: ... kube.url``."""

    def __init__(self, *, host: str = "127.0.0.1", ssl_context=None, token: str | None = None) -> None:
        self.state = FakeKube(token=token)
        self.httpd = ThreadingHTTPServer((host, 0), _make_handler(self.state))
        self.httpd.daemon_threads = True
        scheme = "http"
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.state.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fake-kube", daemon=True)

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- builders for objects as a cluster would report them ------------------------------------------------

def release_labels(release: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fruitlens", "app.kubernetes.io/instance": release,
            "app.kubernetes.io/component": component}


def job(release: str, *, succeeded: int = 0, failed: int = 0, active: int = 0,
        condition: tuple[str, str, str] | None = None, namespace: str = "default") -> dict:
    status: dict[str, Any] = {}
    if succeeded:
        status["succeeded"] = succeeded
    if failed:
        status["failed"] = failed
    if active:
        status["active"] = active
    if condition:
        ctype, reason, message = condition
        status["conditions"] = [{"type": ctype, "status": "True", "reason": reason, "message": message}]
    return {"metadata": {"name": f"{release}-fruitlens", "namespace": namespace,
                         "labels": release_labels(release, "driver")},
            "spec": {"template": {"spec": {"containers": [{"name": "driver", "image": "fruitlens:test"}]}}},
            "status": status}


def pod(name: str, release: str, component: str, phase: str, *, container: str = "driver",
        terminated: tuple[int, str, str] | None = None, waiting: tuple[str, str] | None = None,
        reason: str | None = None, message: str | None = None, namespace: str = "default") -> dict:
    state: dict[str, Any] = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
    if terminated:
        code, treason, tmessage = terminated
        state = {"terminated": {"exitCode": code, "reason": treason, "message": tmessage}}
    elif waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif phase == "Pending":
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [
        {"name": container, "image": "fruitlens:test", "imageID": "", "ready": phase == "Running",
         "restartCount": 0, "state": state}]}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    labels = release_labels(release, component)
    if component == "driver":
        labels["batch.kubernetes.io/job-name"] = f"{release}-fruitlens"
    else:
        labels["spark-role"] = "executor"
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": container, "image": "fruitlens:test"}]}, "status": status}


# -- the real helm binary, for chart tests (no cluster needed) ------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fruitlens"


def helm_binary() -> str:
    """The helm that scripts/install-helm.sh installed (or $HELM / PATH). Missing: skip locally, FAIL in CI."""
    import os
    import shutil

    import pytest

    for candidate in (os.environ.get("HELM"), str(REPO / "build" / "tools" / "bin" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "helm is not installed: run scripts/install-helm.sh (CI: .ci/setup.d/40-k8s.sh)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def render(values: dict | None = None, *, release: str = "demo", namespace: str = "jobs",
           check: bool = True, extra: tuple[str, ...] = ()):
    """``helm template`` the chart with ``values`` (through a file, so types survive) → (docs, process)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(values or {}, fh)
        fh.flush()
        done = helm("template", release, str(CHART), "--namespace", namespace, "--values", fh.name, *extra,
                    check=check)
    docs = [d for d in yaml.safe_load_all(done.stdout) if d] if done.returncode == 0 else []
    return docs, done


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def spark_confs(args: list[str]) -> dict[str, str]:
    """``--conf k=v`` pairs of a spark-submit argument list."""
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--conf")


def executor_template(docs: list[dict]) -> dict:
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-executor-template"))
    return yaml.safe_load(cm["data"]["executor.yaml"])
