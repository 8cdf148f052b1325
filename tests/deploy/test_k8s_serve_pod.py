"""The chart's serving part runs: `helm template` with `serve.enabled`, and the rendered Deployment and Service
applied through tests/fakes/k8s_pod_runner.py (a TEST DOUBLE for the kubelet and the API server, NOT a
cluster). Its Deployment controller makes the pod from the rendered template, which runs as a container of
the real serving image (`make build-serve`) with the spec's hardening (uid 185, read-only root, no
capabilities, CPU/memory limits), the model from a hostPath volume mounted read-only. The runner calls the
rendered readiness probe (/readyz) as the kubelet would; then a real photo on /v1/predict gets the host
predictor's answer, and a newer model written into the volume is swapped in.
"""
from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from conftest import real_images
from fakes.fake_k8s import render
from fakes.k8s_pod_runner import PodRunner, wait_for
from serve_support import write_predictor
from test_docker import docker_engine  # noqa: F401 (fixture)

from fruitlens.classify.predictor import Predictor

pytestmark = [pytest.mark.docker, pytest.mark.slow]
NAMESPACE = "fruits"
RELEASE = "shop"


@pytest.fixture(scope="module")
def runner(tmp_path_factory, docker_engine):  # noqa: F811
    with PodRunner(tmp_path_factory.mktemp("pod-runner-serve")) as r:
        yield r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_rendered_serving_pod_runs_hardened_gets_ready_and_answers(runner, serve_image, tmp_path):
    out = tmp_path / "out"
    write_predictor(out, seed=0)
    port = _free_port()
    repository, tag = serve_image.rsplit(":", 1)
    docs, _ = render({"serve": {
        "enabled": True, "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}, "port": port,
        "replicas": 1, "autoscaling": {"enabled": False}, "threads": 1,
        "model": {"volume": {"hostPath": {"path": str(out), "type": "Directory"}}, "pollSeconds": 1},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    }}, release=RELEASE, namespace=NAMESPACE)
    serving = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "serve"]
    assert sorted(d["kind"] for d in serving) == ["Deployment", "PodDisruptionBudget", "Service"]
    for doc in serving:
        if doc["kind"] in ("Service", "Deployment"):  # no PDB/HPA controllers here: nothing to apply them to
            runner.apply(doc, NAMESPACE)
    deployment = next(d for d in serving if d["kind"] == "Deployment")
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())

    def ready_pod():
        pods = runner.pods(NAMESPACE, selector)
        assert len(pods) == 1 and pods[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        statuses = pods[0].get("status", {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        assert waiting.get("reason") not in ("ErrImageNeverPull", "CreateContainerError",
                                             "CreateContainerConfigError"), waiting
        return pods[0] if statuses[0].get("ready") else None

    try:
        pod = wait_for(ready_pod, timeout=180, what="the serving pod to be ready (/readyz)")
        container = runner.inspect(pod["metadata"]["name"], NAMESPACE)
        host = container["HostConfig"]
        # the spec's hardening reached the container
        assert container["Config"]["User"] == "185:185" and host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert host["Memory"] == 1 << 30 and host["NanoCpus"] == 10**9
        assert container["Config"]["Image"] == serve_image

        assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200
        photo = real_images(per_class=1, classes=1)[0].read_bytes()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=photo,
                                     headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())
        want = Predictor.load(str(out)).predict_bytes(["x"], [photo])[0]
        assert got["label"] == want["label"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
        first = json.loads(_get(port, "/v1/model")[1])["version"]

        # a newer model trained into the (read-only mounted) OUTPUT is swapped in
        write_predictor(out, seed=1, trained_at="2026-02-01T00:00:00+00:00")
        wait_for(lambda: json.loads(_get(port, "/v1/model")[1])["version"] != first, timeout=60,
                 what="the newer model to be served")
    except AssertionError:
        pods = runner.pods(NAMESPACE, selector)
        if pods and runner.inspect(pods[0]["metadata"]["name"], NAMESPACE):
            name = runner.inspect(pods[0]["metadata"]["name"], NAMESPACE)["Name"].lstrip("/")
            print(subprocess.run(["docker", "logs", "--tail", "60", name], capture_output=True, text=True).stderr)
        raise
    finally:  # as `kubectl delete deployment`: the pod goes with it (owner reference)
        with runner.kube.lock:
            gone = runner.kube.objects.pop(("deployments", NAMESPACE, deployment["metadata"]["name"]))
        runner.deleted("deployments", gone)
    wait_for(lambda: not runner.pods(NAMESPACE, selector), timeout=60, what="the pod to go with its Deployment")
