"""A local pod runner: a TEST DOUBLE for the kubelet and the API server, NOT a cluster.

It plugs into tests/fakes/fake_k8s.py (the in-memory API server) and turns every Pod created through it into a
``docker run`` of the pod's spec, so the chart's driver and the executor pods Spark creates run as real
containers of the real image:

- the API is served over HTTPS with a CA made here, and wants the bearer token it mounts into pods with
  the CA at /var/run/secrets/kubernetes.io/serviceaccount (the in-cluster way; KUBERNETES_SERVICE_HOST/PORT
  are set in every pod, as the kubelet does);
- image, command/args (``$(VAR)`` expanded as the kubelet does), env with the downward API (metadata.name,
  metadata.namespace, status.podIP, spec.serviceAccountName), Secret and ConfigMap keys;
- securityContext: user/group, fsGroup, read-only root filesystem, dropped capabilities, no new privileges;
- volumes: emptyDir, configMap, secret, hostPath and the projected service-account token + CA, as host
  temp dirs bind-mounted; memory/CPU limits (and CPU requests as shares);
- host network (``--network host``): every pod's IP is 127.0.0.1, and kubernetes.default.svc plus the
  Services' DNS names resolve to it (``--add-host``);
- phases and container states (exit code, reason, OOMKilled) come from ``docker inspect``; the termination
  message is the file the container wrote at terminationMessagePath, else (FallbackToLogsOnError) the
  log tail; logs from ``docker logs``; deleting a pod removes its container; owner references
  are garbage-collected (a Job's pod, the driver's executors);
- a minimal Job controller: a Job makes its pod from the template, backoffLimit retries, the podFailurePolicy
  (Ignore, FailJob, Count on exit codes and pod conditions), status succeeded/failed with Complete/Failed
  conditions; :meth:`PodRunner.evict` is a drain's eviction (DisruptionTarget, preStop, SIGTERM, grace, deletion);
- a minimal Deployment controller: a Deployment makes ``spec.replicas`` (default 1) pods from its template,
  owned by it (no ReplicaSet in between, no rollouts);
- readiness: an ``httpGet`` readinessProbe is called as the kubelet calls it (path, named or numbered port,
  timeoutSeconds) at every refresh; the container and the pod's Ready condition follow its answer.

Not modelled (a real cluster's business): liveness/startup probes and restarts, lifecycle hooks other than
an eviction's preStop, ReplicaSets and rollouts, HPA and PDB controllers, scheduling and resource accounting across nodes, cluster DNS and
Service routing (names just map to 127.0.0.1), network policy, admission, RBAC (any valid token may do
anything), IRSA, image pulls (images must be present locally).
"""
from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fakes.fake_k8s import KINDS, FakeKubeServer, _matches

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LABEL = "fruitlens.test/pod-runner"


# -- TLS: a CA and a server certificate for kubernetes.default.svc ------------------------------------------

def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) in ``directory``; the server certificate names the API's DNS names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pod-runner test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
             "localhost"]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(n) for n in names),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, cert_path, key_path


# -- quantities -----------------------------------------------------------------------------------------------

def memory_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if str(q).endswith(suffix):
            return int(float(str(q)[: -len(suffix)]) * factor)
    return int(float(q))


def cpu_cores(q: str) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion in command/args/env (``$$`` escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PodRunner:
    """Runs the pods of a :class:`fake_k8s.FakeKube` as Docker containers (see the module docstring)."""

    def __init__(self, workdir: Path, *, poll: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.token = secrets.token_urlsafe(32)
        self.ca, cert, key = make_tls(self.workdir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server = FakeKubeServer(host="0.0.0.0", ssl_context=ctx, token=self.token)
        self.kube = self.server.state
        self.kube.runner = self
        self.port = self.server.httpd.server_address[1]
        self.url = f"https://kubernetes.default.svc:{self.port}"
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self.containers: dict[str, str] = {}  # pod uid → container name
        self.started: list[str] = []  # pod names, in start order
        self.commands: dict[str, list[str]] = {}  # pod name → its `docker run` command
        self._job_pods: dict[str, dict[str, tuple[dict, str | None]]] = {}  # Job uid → pod uid → (pod, verdict)
        self.hook_logs: dict[str, str] = {}  # pod name → what its preStop hook printed
        self.final_logs: dict[str, str] = {}  # pod name → its container's log, taken when the pod was deleted
        self.final_states: dict[str, dict] = {}  # pod name → its container's last `docker inspect` State

    # -- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> PodRunner:
        self.server.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.__exit__(*exc)
        names = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}={self.run_id}"],
                               capture_output=True, text=True).stdout.split()
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
        shutil.rmtree(self.workdir / "pods", ignore_errors=True)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for host-side clients (helm, kubernetes client): the API at 127.0.0.1 with the CA."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "pod-runner",
                  "clusters": [{"name": "pod-runner", "cluster": {
                      "server": f"https://127.0.0.1:{self.port}", "certificate-authority": str(self.ca)}}],
                  "users": [{"name": "test", "user": {"token": self.token}}],
                  "contexts": [{"name": "pod-runner", "context": {"cluster": "pod-runner", "user": "test",
                                                                  "namespace": namespace}}]}
        path.write_text(json.dumps(config))
        return path

    # -- the API side ---------------------------------------------------------------------------------------
    def apply(self, doc: dict, namespace: str) -> dict:
        """Create one rendered manifest (kubectl apply for a fresh namespace)."""
        collection = next(c for c, (_, kind) in KINDS.items() if kind == doc["kind"])
        doc = copy.deepcopy(doc)
        doc.setdefault("metadata", {}).setdefault("namespace", namespace)
        return self.create(collection, doc)

    def create(self, collection: str, body: dict) -> dict:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        obj = self.kube.put(collection, body)
        if collection == "pods":
            obj.setdefault("status", {})["phase"] = "Pending"
            threading.Thread(target=self._start_pod, args=(obj,), daemon=True).start()
        elif collection == "jobs":
            self._job_pod(obj)
        elif collection == "deployments":
            for _ in range(obj["spec"].get("replicas", 1)):
                self._owned_pod(obj, obj["spec"]["template"], {})
        return obj

    def deleted(self, collection: str, obj: dict) -> None:
        """After an object left the store: stop its container, collect what it owned (GC, any policy)."""
        uid = obj["metadata"].get("uid")
        if collection == "pods":
            name = self.containers.pop(uid, None)
            if name:  # its log stays readable for the test, as `kubectl logs` would have shown it before
                self.final_logs[obj["metadata"]["name"]] = subprocess.run(
                    ["docker", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    errors="replace").stdout
                inspected = subprocess.run(["docker", "inspect", name], capture_output=True, text=True)
                if inspected.returncode == 0:
                    self.final_states[obj["metadata"]["name"]] = json.loads(inspected.stdout)[0]["State"]
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        with self.kube.lock:
            owned = [(k, o) for k, o in self.kube.objects.items()
                     if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]
            for k, _ in owned:
                self.kube.objects.pop(k, None)
        for (coll, _, _), o in owned:
            self.deleted(coll, o)

    def log(self, handler, ns: str, name: str, req) -> None:
        pod = self.kube.get("pods", name, ns)
        cname = self.containers.get(pod["metadata"]["uid"]) if pod else None
        if cname is None:
            return handler._status(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        follow = req.query.get("follow", ["false"])[0] == "true"
        cmd = ["docker", "logs", *(["--follow"] if follow else []), cname]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while data := proc.stdout.read1(65536):
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            proc.kill()
            proc.wait()

    def watch(self, handler, ns: str, coll: str, req) -> None:
        """A watch: ADDED for what matches now, then MODIFIED/DELETED as the store changes, until timeout.
        Over a WebSocket when the client asks for one (fabric8, Spark's client), else a chunked HTTP stream."""
        selector = (req.query.get("labelSelector") or [None])[0]
        field = (req.query.get("fieldSelector") or [""])[0]
        timeout = float((req.query.get("timeoutSeconds") or ["300"])[0])
        websocket = handler.headers.get("Upgrade", "").lower() == "websocket"
        if websocket:
            accept = base64.b64encode(hashlib.sha1((handler.headers["Sec-WebSocket-Key"] +
                                                    "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            handler.send_response(101)
            handler.send_header("Upgrade", "websocket")
            handler.send_header("Connection", "Upgrade")
            handler.send_header("Sec-WebSocket-Accept", accept)
            handler.end_headers()
            handler.close_connection = True
        else:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()

        def send(data: bytes) -> None:
            if websocket:  # one unmasked text frame per event (RFC 6455)
                n = len(data)
                head = bytes([0x81, n]) if n < 126 else (bytes([0x81, 126]) + n.to_bytes(2, "big") if n < 65536
                                                         else bytes([0x81, 127]) + n.to_bytes(8, "big"))
                handler.wfile.write(head + data)
            else:
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        seen: dict[str, str] = {}

        def current() -> dict[str, dict]:
            with self.kube.lock:
                return {o["metadata"]["name"]: copy.deepcopy(o) for (c, n, _), o in self.kube.objects.items()
                        if c == coll and n == ns and _matches(o["metadata"].get("labels") or {}, selector)
                        and (not field.startswith("metadata.name=") or o["metadata"]["name"] == field[14:])}

        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                now = current()
                events = [("ADDED" if n not in seen else "MODIFIED", o) for n, o in now.items()
                          if seen.get(n) != o["metadata"]["resourceVersion"]]
                events += [("DELETED", {"metadata": {"name": n, "namespace": ns}, "kind": KINDS[coll][1],
                                        "apiVersion": KINDS[coll][0]}) for n in seen if n not in now]
                seen = {n: o["metadata"]["resourceVersion"] for n, o in now.items()}
                for kind, obj in events:
                    send((json.dumps({"type": kind, "object": obj}) + "\n").encode())
                handler.wfile.flush()
                time.sleep(0.5)
            handler.wfile.write(b"\x88\x00" if websocket else b"0\r\n\r\n")  # close frame / last chunk
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    # -- the kubelet side -----------------------------------------------------------------------------------
    def _start_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        while True:  # as the kubelet: a missing ConfigMap/Secret (Spark creates its conf map beside the pods) is retried
            try:
                cmd = self._docker_run(pod)
                break
            except Exception as exc:
                self._set_waiting(pod, "CreateContainerConfigError", str(exc))
                if self._stop.wait(1.0) or self.kube.get("pods", meta["name"], meta["namespace"]) is None:
                    return
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            reason = "ErrImageNeverPull" if "No such image" in done.stderr else "CreateContainerError"
            self._set_waiting(pod, reason, done.stderr.strip()[-500:])
            return
        with self.kube.lock:
            if self.kube.get("pods", meta["name"], meta["namespace"]) is None:  # deleted meanwhile
                subprocess.run(["docker", "rm", "-f", cmd[cmd.index("--name") + 1]], capture_output=True)
                return
            self.containers[meta["uid"]] = cmd[cmd.index("--name") + 1]
            self.started.append(meta["name"])
            self.commands[meta["name"]] = cmd

    def _set_waiting(self, pod: dict, reason: str, message: str) -> None:
        with self.kube.lock:
            live = self.kube.get("pods", pod["metadata"]["name"], pod["metadata"]["namespace"])
            if live is None:
                return
            c = live["spec"]["containers"][0]
            live["status"] = {"phase": "Pending", "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}}]}
            self.kube.put("pods", live)

    def _env(self, pod: dict, container: dict) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
                  "spec.nodeName": "pod-runner", "spec.serviceAccountName": spec.get("serviceAccountName", "default")}
        env = {"KUBERNETES_SERVICE_HOST": "kubernetes.default.svc", "KUBERNETES_SERVICE_PORT": str(self.port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port)}
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
                continue
            ref = item.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[name] = fields[ref["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secrets" if "secretKeyRef" in ref else "configmaps"
                r = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
                obj = self.kube.get(kind, r["name"], meta["namespace"])
                data = self._data(obj) if obj else {}
                if r["key"] not in data:
                    if r.get("optional"):
                        continue
                    raise ValueError(f'{kind[:-1]} "{r["name"]}" key "{r["key"]}" not found')
                env[name] = data[r["key"]].decode()
            else:
                raise ValueError(f"env {name}: unsupported valueFrom {sorted(ref)}")
        return env

    @staticmethod
    def _data(obj: dict) -> dict[str, bytes]:
        out = {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
        if obj.get("kind") == "Secret":
            out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        else:
            out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        return out

    def _volume_dir(self, pod: dict, volume: dict, uid: int, gid: int | None) -> tuple[str, bool]:
        """A host path for one volume, filled as the kubelet would, and whether it is read-only."""
        base = self.workdir / "pods" / pod["metadata"]["uid"] / volume["name"]
        ns = pod["metadata"]["namespace"]
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                raise ValueError(f"hostPath {path} does not exist")
            return str(path), False
        base.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            try:  # as the kubelet: owned by the pod's user and fsGroup (needs root; else world-writable does)
                os.chown(base, uid, gid if gid is not None else uid)
            except PermissionError:
                pass
            base.chmod(0o2777 if gid is not None else 0o777)
            return str(base), False
        files: dict[str, bytes] = {}
        if "configMap" in volume or "secret" in volume:
            kind = "configmaps" if "configMap" in volume else "secrets"
            src = volume.get("configMap") or volume.get("secret")
            name = src.get("name") or src.get("secretName")
            obj = self.kube.get(kind, name, ns)
            if obj is None:
                raise ValueError(f'{kind[:-1]} "{name}" not found')
            data = self._data(obj)
            files = {i["path"]: data[i["key"]] for i in src["items"]} if src.get("items") else data
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                if "serviceAccountToken" in source:
                    files[source["serviceAccountToken"]["path"]] = self.token.encode()
                elif "configMap" in source:  # kube-root-ca.crt
                    for item in source["configMap"].get("items") or []:
                        files[item["path"]] = self.ca.read_bytes()
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"]["items"]:
                        files[item["path"]] = ns.encode()
        else:
            raise ValueError(f"volume {volume['name']}: unsupported type")
        for rel, content in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_bytes(content)
            (base / rel).chmod(0o644)
        return str(base), True

    def _termination_file(self, pod: dict) -> Path:
        return self.workdir / "pods" / pod["metadata"]["uid"] / "termination-log"

    def _docker_run(self, pod: dict) -> list[str]:
        meta, spec = pod["metadata"], copy.deepcopy(pod["spec"])
        if len(spec["containers"]) != 1:
            raise ValueError("the pod runner runs pods of one container")
        (c,) = spec["containers"]
        psc, csc = spec.get("securityContext") or {}, c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        fs_group = psc.get("fsGroup")
        if spec.get("automountServiceAccountToken", True) is not False and \
                not any(m.get("mountPath") == SA_DIR for m in c.get("volumeMounts") or []):
            spec.setdefault("volumes", []).append({"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace"}]}}]}})
            c.setdefault("volumeMounts", []).append({"name": "kube-api-access", "mountPath": SA_DIR, "readOnly": True})
        env = self._env(pod, c)
        name = f"k8s-{self.run_id}-{meta['name']}"[:120]
        cmd = ["docker", "run", "-d", "--name", name, "--label", f"{LABEL}={self.run_id}",
               "--label", f"{LABEL}.pod={meta['namespace']}/{meta['name']}", "--network", "host",
               "--pull", "never"]
        # The kubelet writes the pod's own hostname into its /etc/hosts; on the host network that name is
        # the host's, which the container could not resolve otherwise (Spark looks itself up at start).
        hosts = {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                 socket.gethostname()}
        for svc in self.kube.of("services"):
            s, n = svc["metadata"]["name"], svc["metadata"]["namespace"]
            hosts |= {s, f"{s}.{n}", f"{s}.{n}.svc", f"{s}.{n}.svc.cluster.local"}
        for h in sorted(hosts):
            cmd += ["--add-host", f"{h}:127.0.0.1"]
        if uid is not None:
            cmd += ["--user", f"{uid}:{gid if gid is not None else uid}"]
        if fs_group is not None:
            cmd += ["--group-add", str(fs_group)]
        if csc.get("readOnlyRootFilesystem"):
            cmd.append("--read-only")
        for cap in (csc.get("capabilities") or {}).get("drop") or []:
            cmd += ["--cap-drop", cap]
        if csc.get("allowPrivilegeEscalation") is False:
            cmd += ["--security-opt", "no-new-privileges"]
        limits = (c.get("resources") or {}).get("limits") or {}
        requests = (c.get("resources") or {}).get("requests") or {}
        if "memory" in limits:
            cmd += ["--memory", str(memory_bytes(limits["memory"])),
                    "--memory-swap", str(memory_bytes(limits["memory"]))]
        if "cpu" in limits:
            cmd += ["--cpus", str(cpu_cores(limits["cpu"]))]
        if "cpu" in requests:
            cmd += ["--cpu-shares", str(max(2, int(cpu_cores(requests["cpu"]) * 1024)))]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounted: dict[str, tuple[str, bool]] = {}
        paths = set()
        for m in c.get("volumeMounts") or []:
            if m["mountPath"] in paths:
                raise ValueError(f'spec.containers[0].volumeMounts.mountPath "{m["mountPath"]}": must be unique')
            paths.add(m["mountPath"])
            if m["name"] not in mounted:
                mounted[m["name"]] = self._volume_dir(pod, volumes[m["name"]], uid or 0, fs_group)
            src, ro = mounted[m["name"]]
            if m.get("subPath"):
                src = os.path.join(src, m["subPath"])
            opts = "ro" if (ro or m.get("readOnly")) else "rw"
            cmd += ["--mount", f"type=bind,source={src},target={m['mountPath']},{'readonly' if opts == 'ro' else 'bind-propagation=rprivate'}"]
        # As the kubelet: an empty, world-writable file at terminationMessagePath for the container's own
        # account of why it ended.
        term_file = self._termination_file(pod)
        term_file.parent.mkdir(parents=True, exist_ok=True)
        term_file.write_text("")
        term_file.chmod(0o666)
        cmd += ["--mount", f"type=bind,source={term_file},"
                           f"target={c.get('terminationMessagePath') or '/dev/termination-log'}"]
        for k, v in env.items():
            cmd += ["--env", f"{k}={v}"]
        if c.get("workingDir"):
            cmd += ["--workdir", c["workingDir"]]
        args = [_expand(a, env) for a in c.get("args") or []]
        if c.get("command"):
            command = [_expand(a, env) for a in c["command"]]
            cmd += ["--entrypoint", command[0], c["image"], *command[1:], *args]
        else:
            cmd += [c["image"], *args]
        return cmd

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._refresh()
                self._jobs()
            except Exception as exc:  # keep the kubelet alive; the test sees stale state and fails on it
                print(f"pod-runner: {type(exc).__name__}: {exc}")

    def _refresh(self) -> None:
        for (coll, ns, name), pod in list(self.kube.objects.items()):
            if coll != "pods":
                continue
            cname = self.containers.get(pod["metadata"]["uid"])
            if cname is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            done = subprocess.run(["docker", "inspect", cname], capture_output=True, text=True)
            if done.returncode != 0:
                continue
            state = json.loads(done.stdout)[0]["State"]
            status = self._status(pod, cname, state)
            with self.kube.lock:
                live = self.kube.get("pods", name, ns)
                if live is not None and live.get("status") != status:
                    live = copy.deepcopy(live)
                    live["status"] = status
                    self.kube.put("pods", live)

    def _status(self, pod: dict, cname: str, state: dict) -> dict:
        c = pod["spec"]["containers"][0]
        base = {"name": c["name"], "image": c["image"], "imageID": "", "restartCount": 0}
        # A DisruptionTarget condition set by an eviction stays, as on a real pod.
        conditions = [{"type": "PodScheduled", "status": "True"},
                      *(k for k in pod.get("status", {}).get("conditions") or [] if k["type"] == "DisruptionTarget")]
        if state["Status"] == "running":
            ready = self._ready(c)
            cs = {**base, "ready": ready, "started": True, "state": {"running": {"startedAt": state["StartedAt"]}}}
            conditions.append({"type": "Ready", "status": str(ready)})
            return {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "conditions": conditions,
                    "containerStatuses": [cs]}
        if state["Status"] in ("exited", "dead"):
            code = state["ExitCode"]
            reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
            term: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": state["StartedAt"],
                                    "finishedAt": state["FinishedAt"]}
            written = self._termination_file(pod).read_text(errors="replace")[:4096]
            if written:
                term["message"] = written
            elif code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                # As the kubelet: the last 80 lines (at most 2 KiB) of the log.
                tail = subprocess.run(["docker", "logs", "--tail", "80", cname], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace").stdout
                term["message"] = tail[-2048:]
            cs = {**base, "ready": False, "started": False, "state": {"terminated": term}}
            return {"phase": "Succeeded" if code == 0 else "Failed", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
                    "conditions": conditions, "containerStatuses": [cs]}
        cs = {**base, "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
        return {"phase": "Pending", "conditions": conditions, "containerStatuses": [cs]}

    @staticmethod
    def _ready(c: dict) -> bool:
        """A running container's readiness: its httpGet readinessProbe answering 200-399 (no probe: ready)."""
        probe = (c.get("readinessProbe") or {}).get("httpGet")
        if not probe:
            return True
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c.get("ports") or [] if p.get("name") == port)
        timeout = c["readinessProbe"].get("timeoutSeconds", 1)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)  # host network: the pod's IP
            conn.request("GET", probe.get("path", "/"), headers={"User-Agent": "kube-probe/1.33"})
            status = conn.getresponse().status
            conn.close()
        except OSError:
            return False
        return 200 <= status < 400

    # -- the Job and Deployment controllers -----------------------------------------------------------------
    def _owned_pod(self, owner: dict, template: dict, extra_labels: dict) -> dict:
        meta = owner["metadata"]
        template = copy.deepcopy(template)
        labels = {**(template.get("metadata") or {}).get("labels", {}), **extra_labels}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**(template.get("metadata") or {}), "generateName": f"{meta['name']}-",
                            "namespace": meta["namespace"], "labels": labels,
                            "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                                 "name": meta["name"], "uid": meta["uid"], "controller": True}]},
               "spec": template["spec"]}
        return self.create("pods", pod)

    def _job_pod(self, job: dict) -> dict:
        meta = job["metadata"]
        return self._owned_pod(job, job["spec"]["template"], {
            "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
            "batch.kubernetes.io/controller-uid": meta["uid"]})

    def _jobs(self) -> None:
        """As the Job controller (parallelism and completions 1): each owned pod that ends is accounted once,
        through the podFailurePolicy if any (Ignore: not counted, FailJob: the Job fails at once, Count or no
        match: against backoffLimit); a pod deleted before it ended counts as failed (the controller's
        finalizer sees it); while the Job is not finished and no pod is active, a new one is made."""
        for job in [o for (c, _, _), o in list(self.kube.objects.items()) if c == "jobs"]:
            status = job.get("status") or {}
            if any(cond["type"] in ("Complete", "Failed") for cond in status.get("conditions") or []):
                continue
            uid = job["metadata"]["uid"]
            seen = self._job_pods.setdefault(uid, {})  # pod uid -> (last seen pod, verdict or None)
            present = {o["metadata"]["uid"]: o for (c, n, _), o in list(self.kube.objects.items()) if c == "pods"
                       and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])}
            for puid, pod in present.items():
                verdict = seen.get(puid, (None, None))[1]
                seen[puid] = (pod, verdict)
            failed_job = None
            for puid, (pod, verdict) in list(seen.items()):
                if verdict is not None:
                    continue
                phase = pod.get("status", {}).get("phase")
                if puid in present and phase not in ("Succeeded", "Failed"):
                    continue
                if phase == "Succeeded":
                    verdict = "Succeeded"
                else:
                    verdict, rule = pod_failure_verdict(job["spec"].get("podFailurePolicy"), pod)
                    if verdict == "FailJob":
                        failed_job = failed_job or (
                            f"Pod {pod['metadata']['namespace']}/{pod['metadata']['name']} has condition or exit code "
                            f"matching FailJob rule at index {rule}")
                seen[puid] = (pod, verdict)
            verdicts = [v for _, v in seen.values()]
            new = {"active": sum(1 for puid, p in present.items() if seen[puid][1] is None),
                   "succeeded": verdicts.count("Succeeded"), "failed": verdicts.count("Count") + verdicts.count("FailJob"),
                   "startTime": status.get("startTime", _now())}
            if new["succeeded"]:
                new["conditions"] = [{"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                                      "message": "Reached expected number of succeeded pods"},
                                     {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                                      "message": "Reached expected number of succeeded pods"}]
                new["completionTime"] = _now()
            elif failed_job:
                new["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                                      "message": failed_job},
                                     {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                      "message": failed_job}]
            elif new["failed"] > job["spec"].get("backoffLimit", 6):
                new["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                                      "message": "Job has reached the specified backoff limit"},
                                     {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                      "message": "Job has reached the specified backoff limit"}]
            elif not new["active"]:
                self._job_pod(job)
                new["active"] = 1
            if new != {k: status.get(k) for k in new} or not status:
                job = copy.deepcopy(job)
                job["status"] = {**status, **new}
                self.kube.put("jobs", job)

    # -- disruptions ----------------------------------------------------------------------------------------
    def evict(self, pod_name: str, namespace: str, *, grace_seconds: int | None = None) -> None:
        """A drain's (or a spot notice's) eviction through the Eviction API: the pod gets a DisruptionTarget
        condition, then is deleted gracefully as the kubelet does it: the container's preStop exec hook runs
        (Spark's /opt/decom.sh on a decommissioning executor), then SIGTERM, then SIGKILL once the grace
        period (terminationGracePeriodSeconds, default 30 s) is over, hook included. The pod ends Failed; a
        Job's pod is accounted by the Job controller before it leaves the store, then what it owned (a
        driver's executors) is garbage-collected."""
        with self.kube.lock:
            pod = copy.deepcopy(self.kube.get("pods", pod_name, namespace))
            pod.setdefault("status", {}).setdefault("conditions", []).append(
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                 "message": "Eviction API: evicting", "lastTransitionTime": _now()})
            self.kube.put("pods", pod)
        self.terminate(pod_name, namespace, grace_seconds=grace_seconds)
        wait_for(lambda: (self.kube.get("pods", pod_name, namespace) or {"status": {"phase": "Failed"}})
                 .get("status", {}).get("phase") in ("Failed", "Succeeded"), 30, poll=0.5,
                 what=f"evicted pod {pod_name} to end")  # (a Spark driver may delete its executor first)
        if any(r.get("kind") == "Job" for r in pod["metadata"].get("ownerReferences") or []):
            wait_for(lambda: self._accounted(pod["metadata"]["uid"]), 30, poll=0.5,
                     what=f"the Job controller to account evicted pod {pod_name}")
        self.delete_pod(pod_name, namespace)

    def terminate(self, pod_name: str, namespace: str, *, grace_seconds: int | None = None) -> float:
        """The kubelet's graceful stop of a pod's container: preStop exec hook, SIGTERM, SIGKILL after the
        grace period. Returns the seconds the hook took (it counts against the grace period)."""
        pod = self.kube.get("pods", pod_name, namespace)
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30) if grace_seconds is None else grace_seconds
        cname = self.containers.get(pod["metadata"]["uid"])
        if cname is None:
            return 0.0
        hook = (((pod["spec"]["containers"][0].get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
        started = time.monotonic()
        if hook.get("command"):
            try:
                done = subprocess.run(["docker", "exec", cname, *hook["command"]], capture_output=True, text=True,
                                      timeout=grace)
                self.hook_logs[pod_name] = done.stdout + done.stderr
            except subprocess.TimeoutExpired as exc:  # (its output comes as bytes, text=True or not)
                said = b"".join(x if isinstance(x, bytes) else x.encode() for x in (exc.stdout, exc.stderr) if x)
                self.hook_logs[pod_name] = said.decode(errors="replace") + f"(preStop killed after {grace} s)"
        spent = time.monotonic() - started
        subprocess.run(["docker", "stop", "-t", str(max(0, int(grace - spent))), cname], capture_output=True)
        return spent

    def delete_pod(self, pod_name: str, namespace: str) -> None:
        obj = self.kube.objects.pop(("pods", namespace, pod_name), None)
        if obj is not None:
            self.deleted("pods", obj)

    def _accounted(self, pod_uid: str) -> bool:
        return any(pod_uid in pods and pods[pod_uid][1] is not None for pods in self._job_pods.values())

    # -- for tests ------------------------------------------------------------------------------------------
    def pods(self, namespace: str, selector: str | None = None) -> list[dict]:
        return [o for (c, n, _), o in list(self.kube.objects.items()) if c == "pods" and n == namespace
                and _matches(o["metadata"].get("labels") or {}, selector)]

    def containers_left(self) -> list[str]:
        out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}={self.run_id}",
                              "--format", "{{.Names}}"], capture_output=True, text=True).stdout
        return out.split()

    def inspect(self, pod_name: str, namespace: str) -> dict | None:
        """The container of a pod, as `docker inspect` has it (None once removed)."""
        out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}.pod={namespace}/{pod_name}",
                              "--filter", f"label={LABEL}={self.run_id}"], capture_output=True, text=True).stdout.split()
        if not out:
            return None
        return json.loads(subprocess.run(["docker", "inspect", out[0]], capture_output=True, text=True).stdout)[0]


def pod_failure_verdict(policy: dict | None, pod: dict) -> tuple[str, int | None]:
    """The action of a Job's podFailurePolicy (batch/v1) for a failed pod, and the index of the rule that
    matched: its rules in order, the first whose exit-code requirement (any container's terminated code, or
    the named container's) or any condition pattern matches; no match (or no policy): Count. Unknown actions
    are skipped, as the API says clients must."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    conditions = pod.get("status", {}).get("conditions") or []
    for i, rule in enumerate((policy or {}).get("rules") or []):
        if rule.get("action") not in ("FailJob", "Ignore", "Count"):
            continue
        if "onExitCodes" in rule:
            req = rule["onExitCodes"]
            codes = [s["state"]["terminated"]["exitCode"] for s in statuses
                     if "terminated" in s.get("state", {}) and req.get("containerName") in (None, s["name"])]
            codes = [code for code in codes if code != 0]
            hit = any((code in req["values"]) == (req["operator"] == "In") for code in codes)
        else:
            hit = any(c["type"] == p["type"] and c["status"] == p.get("status", "True")
                      for p in rule.get("onPodConditions") or [] for c in conditions)
        if hit:
            return rule["action"], i
    return "Count", None


def wait_for(predicate, timeout: float, poll: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)

