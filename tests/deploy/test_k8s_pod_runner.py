"""The chart's pods run as containers of the real image, through tests/fakes/k8s_pod_runner.py — a TEST DOUBLE for
the kubelet and the API server, NOT a cluster (what only a real cluster shows: docs/kubernetes.md).

1. The runner honours what a pod asks for (checked on a small pod of the image).
2. The chart, rendered by helm, is applied through it: the Job's pod is the Spark driver, which creates 2
   executor pods through the API (HTTPS, the mounted token and CA), which become containers too. On the
   2,170 Test photos the features must equal a local run's within 1e-4; PCA and manifest are written, no
   executor pod is left, and `fruitlens k8s status` / `logs` read the run.
3. A bad INPUT ends with the Job failed and the real reason in `fruitlens k8s status`.

The image: $K8S_TEST_IMAGE when set (already built, e.g. `fruitlens-i9:oss`), else the one `make build`
makes for tests/deploy/test_docker.py (IMAGE=$FRUITLENS_TEST_IMAGE, default fruitlens; built once per session).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE
from fakes.fake_k8s import render
from fakes.k8s_pod_runner import PodRunner, memory_bytes, wait_for
from test_docker import docker_engine, oss_image, rel_key  # noqa: F401 (fixtures, shared with test_docker)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "fruits"
PROBE_NS = "probe"
ORDER = ["ServiceAccount", "Role", "RoleBinding", "Service", "ConfigMap", "Job"]  # as helm installs them


@pytest.fixture(scope="module")
def image(docker_engine, request) -> str:  # noqa: F811
    """$K8S_TEST_IMAGE as is, else the session's `make build` image (one build with tests/deploy/test_docker.py)."""
    return os.environ.get("K8S_TEST_IMAGE") or request.getfixturevalue("oss_image")


@pytest.fixture(scope="module")
def runner(tmp_path_factory, docker_engine):  # noqa: F811
    with PodRunner(tmp_path_factory.mktemp("pod-runner")) as r:
        yield r


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("0.0.0.0", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _fruitlens(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", "import sys; from fruitlens.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _install(runner: PodRunner, release: str, values: dict) -> list[dict]:
    """`helm template` + apply through the runner (helm itself needs a real API server's discovery)."""
    docs, _ = render(values, release=release, namespace=NAMESPACE)
    for doc in sorted(docs, key=lambda d: ORDER.index(d["kind"])):
        runner.apply(doc, NAMESPACE)
    return docs


def _values(image: str, runner: PodRunner, data: Path, input: str, output: str, **pipeline) -> dict:
    repository, tag = image.rsplit(":", 1)
    driver_port, block_port = _free_ports(2)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "job": {"input": input, "output": output, "master": f"k8s://{runner.url}"},
        "pipeline": pipeline,
        # All pods share the host's IP here, so Spark would take executors for neighbours on one node and read
        # each other's shuffle files from disk; on a cluster every pod has its own IP and this stays on.
        "spark": {"driverPort": driver_port, "blockManagerPort": block_port,
                  "conf": {"spark.shuffle.readHostLocalDisk": "false"}},
        "extraVolumes": [{"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}],
        "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
    }


def _job_done(runner: PodRunner, name: str, namespace: str = NAMESPACE):
    job = runner.kube.get("jobs", name, namespace)
    conds = (job or {}).get("status", {}).get("conditions") or []
    return job if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conds) else None


# -- 1. the runner itself ------------------------------------------------------------------------------------

PROBE = r"""
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
url = "https://kubernetes.default.svc:%s/api/v1/namespaces/%s/pods" % (
    os.environ["KUBERNETES_SERVICE_PORT"], open(sa + "/namespace").read())
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
pods = [p["metadata"]["name"] for p in json.load(urllib.request.urlopen(req, context=ctx))["items"]]
writable = {}
for d in ("/", "/scratch", "/etc/cfg"):
    try:
        open(os.path.join(d, "probe"), "w").close(); writable[d] = True
    except OSError:
        writable[d] = False
caps = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
print(json.dumps({"pods": pods, "name": os.environ["MY_NAME"], "ip": os.environ["MY_IP"], "uid": os.getuid(),
                  "groups": os.getgroups(), "writable": writable, "caps": caps,
                  "cfg": open("/etc/cfg/a.txt").read(), "secret": os.environ["SECRET"]}))
raise SystemExit(3)
"""


def test_runner_honours_the_pod_spec(runner, image):
    runner.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe-cfg"},
                  "data": {"a.txt": "from a configmap"}}, PROBE_NS)
    runner.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe-sec"},
                  "stringData": {"k": "s3cret"}}, PROBE_NS)
    runner.apply({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"}, "spec": {
        "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "securityContext": {"runAsUser": 185, "runAsGroup": 185, "fsGroup": 185},
            "containers": [{
                "name": "probe", "image": image, "command": ["python3", "-c", PROBE],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                                    "allowPrivilegeEscalation": False},
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
                "env": [{"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "probe-sec", "key": "k"}}}],
                "volumeMounts": [{"name": "s", "mountPath": "/scratch"}, {"name": "cfg", "mountPath": "/etc/cfg"}]}],
            "volumes": [{"name": "s", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "probe-cfg"}}]}}}},
        PROBE_NS)
    job = wait_for(lambda: _job_done(runner, "probe", PROBE_NS), 120, what="the probe Job to end")
    assert job["status"]["failed"] == 1
    assert [c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"] == ["BackoffLimitExceeded"]
    (pod,) = runner.pods(PROBE_NS, "job-name=probe")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Failed" and (term["exitCode"], term["reason"]) == (3, "Error")
    seen = json.loads(term["message"].strip().splitlines()[-1])  # FallbackToLogsOnError: the log's tail
    assert seen["pods"] == [pod["metadata"]["name"]] and seen["name"] == pod["metadata"]["name"]  # API over HTTPS
    assert seen["ip"] == "127.0.0.1" and seen["uid"] == 185 and 185 in seen["groups"]
    assert seen["writable"] == {"/": False, "/scratch": True, "/etc/cfg": False}
    assert seen["caps"] == "0000000000000000"
    assert (seen["cfg"], seen["secret"]) == ("from a configmap", "s3cret")
    host = runner.inspect(pod["metadata"]["name"], PROBE_NS)["HostConfig"]
    assert host["Memory"] == 256 * 2**20 and host["NanoCpus"] == 500_000_000 and host["NetworkMode"] == "host"


def test_runner_waits_for_a_configmap_created_after_the_pod(runner, image):
    """As the kubelet: Spark creates its executor conf map beside the pods, not always before them."""
    runner.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "early"}, "spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": image, "command": ["cat", "/etc/cfg/a.txt"],
                                                  "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}],
        "volumes": [{"name": "cfg", "configMap": {"name": "late"}}]}}, PROBE_NS)
    waiting = wait_for(lambda: (runner.kube.get("pods", "early", PROBE_NS).get("status", {})
                                .get("containerStatuses") or [{}])[0].get("state", {}).get("waiting"), 30)
    assert waiting["reason"] == "CreateContainerConfigError" and "late" in waiting["message"]
    runner.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}, "data": {"a.txt": "hi"}},
                 PROBE_NS)
    wait_for(lambda: runner.kube.get("pods", "early", PROBE_NS)["status"]["phase"] == "Succeeded", 60,
             what="the pod to run once its ConfigMap exists")
    log = subprocess.run(["docker", "logs", runner.containers[runner.kube.get("pods", "early", PROBE_NS)["metadata"]["uid"]]],
                         capture_output=True, text=True).stdout
    assert log == "hi"


# -- 2. the chart's driver and executors on the Test photos -----------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The shared volume (a hostPath): the Test photos in, the outputs out (written by uid 185)."""
    root = tmp_path_factory.mktemp("k8s-data")
    root.chmod(0o755)  # pytest makes it 0700: uid 185 in the pods must get in
    shutil.copytree(SAMPLE / "Test", root / "in" / "Test")  # the shared folder may be a symlink elsewhere
    (root / "out").mkdir()
    (root / "out").chmod(0o777)
    return root


@pytest.fixture(scope="module")
def chart_run(runner, image, data):
    """The chart installed through the runner, followed to its end; returns (status, wall seconds, pods seen)."""
    values = _values(image, runner, data, "/data/in/Test", "/data/out/run", pcaK=8)
    started = time.monotonic()
    _install(runner, "demo", values)
    executors_seen: set[str] = set()

    def finished():
        executors_seen.update(p["metadata"]["name"] for p in runner.pods(NAMESPACE, "spark-role=executor")
                              if p.get("status", {}).get("phase") == "Running")
        return _job_done(runner, "demo-fruitlens")
    job = wait_for(finished, 1500, poll=2, what="the chart's Job to end")
    wall = time.monotonic() - started
    print(f"pod-runner chart run: {wall:.0f} s wall for {sum(1 for _ in (data / 'in').rglob('*.jpg'))} photos")
    return job, wall, executors_seen


def test_chart_run_completes_with_driver_and_two_executor_containers(chart_run, runner, image):
    job, _, executors_seen = chart_run
    (driver,) = runner.pods(NAMESPACE, "job-name=demo-fruitlens")
    if job["status"].get("succeeded") != 1:
        log = subprocess.run(["docker", "logs", runner.containers.get(driver["metadata"]["uid"], "?")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        print("\n".join(line for line in log.splitlines() if not line.startswith(("\tat ", "\t... ")))[-12000:])
    assert job["status"]["succeeded"] == 1, json.dumps(job["status"])
    assert driver["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    executors = sorted(n for n in runner.started if "-exec-" in n)
    assert executors == ["demo-fruitlens-exec-1", "demo-fruitlens-exec-2"]
    assert executors_seen == set(executors)  # both reached Running
    for name in [driver["metadata"]["name"], *executors]:
        cmd = runner.commands[name]
        assert image in cmd and "--read-only" in cmd and cmd[cmd.index("--user") + 1] == "185:185"
        assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    executor_cmd = runner.commands["demo-fruitlens-exec-1"]
    assert executor_cmd[executor_cmd.index(image) + 1] == "executor"
    assert int(executor_cmd[executor_cmd.index("--memory") + 1]) == memory_bytes("2524Mi")  # 1g + 1500m
    assert any("target=/opt/spark/work-dir" in a for a in executor_cmd)  # finding 1: addFile's landing place


def test_chart_run_features_equal_a_local_run(chart_run, data, tmp_path_factory):
    out = data / "out" / "run"
    ref = tmp_path_factory.mktemp("k8s-ref") / "ref"
    done = _fruitlens("run", str(data / "in" / "Test"), str(ref), "--pca-k", "8", "--master", "local[2]",
                      "--no-progress", timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]

    def features(root: Path) -> dict[str, np.ndarray]:
        table = pq.read_table(root / "features")
        return {rel_key(p): np.asarray(f, dtype=np.float32)
                for p, f in zip(table.column("path").to_pylist(), table.column("features").to_pylist())}
    pods, local = features(out), features(ref)
    assert len(local) == 2170 and set(pods) == set(local)
    worst = max(float(np.max(np.abs(pods[k] - local[k]))) for k in local)
    assert worst <= 1e-4, worst
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] | {"matched": 2170, "features": 2170, "errors": 0, "new": 2170} == manifest["counts"]
    assert manifest["spark"]["master"].startswith("k8s://https://kubernetes.default.svc")
    assert manifest["pca"]["k"] == 8 and pq.read_table(out / "pca").num_rows == 2170


def test_chart_run_leaves_no_executor_pods(chart_run, runner):
    wait_for(lambda: not runner.pods(NAMESPACE, "spark-role=executor"), 60, what="executor pods to be deleted")
    assert not [c for c in runner.containers_left() if "-exec-" in c]


def test_fruitlens_k8s_status_and_logs_read_the_run(chart_run, runner, tmp_path):
    kubeconfig = str(runner.kubeconfig(tmp_path / "kubeconfig", NAMESPACE))
    status = _fruitlens("k8s", "status", "demo", "-n", NAMESPACE, "--kubeconfig", kubeconfig, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["state"], info["exit_code"], info["driver"]["phase"]) == ("succeeded", 0, "Succeeded")
    logs = _fruitlens("k8s", "logs", "demo", "-n", NAMESPACE, "--kubeconfig", kubeconfig, "--poll", "0.5")
    assert logs.returncode == 0, logs.stderr
    assert "[fruitlens]" in logs.stdout + logs.stderr and "succeeded" in logs.stderr


# -- 3. a bad INPUT -----------------------------------------------------------------------------------------------

def test_bad_input_fails_the_job_with_the_real_reason(chart_run, runner, image, data, tmp_path):
    values = _values(image, runner, data, "/data/in/no-such-folder", "/data/out/bad")
    _install(runner, "bad", values)
    job = wait_for(lambda: _job_done(runner, "bad-fruitlens"), 600, poll=2, what="the bad Job to end")
    assert job["status"]["failed"] == 1
    kubeconfig = str(runner.kubeconfig(tmp_path / "kubeconfig", NAMESPACE))
    status = _fruitlens("k8s", "status", "bad", "-n", NAMESPACE, "--kubeconfig", kubeconfig, "--json")
    info = json.loads(status.stdout)
    assert info["state"] == "failed" and info["exit_code"] != 0
    assert info["reason"].startswith("fruitlens: error:") and "no-such-folder" in info["reason"], info["reason"]
    # The driver wrote that line to its termination-message file: it does not depend on how much Spark
    # prints while it shuts down (a log tail of 2 KiB can miss it).
    (driver,) = runner.pods(NAMESPACE, "app.kubernetes.io/instance=bad,app.kubernetes.io/component=driver")
    message = driver["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert len(message.strip().splitlines()) == 1 and info["reason"].startswith(message.strip()), message
    wait_for(lambda: not runner.pods(NAMESPACE, "app.kubernetes.io/instance=bad,spark-role=executor"), 60,
             what="the bad run's executors to go")


# -- finding 7: the local base's entrypoint ----------------------------------------------------------------------

def test_entrypoint_executor_mode_passes_sparks_java_options(image, tmp_path):
    """The driver hands executors their JVM options (Java 17's --add-opens for Arrow) as SPARK_JAVA_OPT_<n>;
    the `executor` mode must put them on the java command line, in index order. Checked on the repository's
    docker/entrypoint.sh in the image, with a java that prints its arguments."""
    stub = tmp_path / "jdk"
    (stub / "bin").mkdir(parents=True)
    (stub / "bin" / "java").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (stub / "bin" / "java").chmod(0o755)
    stub.chmod(0o755)
    tmp_path.chmod(0o755)
    env = {"JAVA_HOME": "/jdk", "SPARK_JAVA_OPT_0": "-Dspark.driver.port=7078", "SPARK_JAVA_OPT_1":
           "--add-opens=java.base/java.nio=ALL-UNNAMED", "SPARK_JAVA_OPT_10": "-Dlast=1", "SPARK_EXECUTOR_MEMORY": "1g",
           "SPARK_DRIVER_URL": "spark://d:1", "SPARK_EXECUTOR_ID": "1", "SPARK_EXECUTOR_CORES": "1",
           "SPARK_APPLICATION_ID": "app", "SPARK_EXECUTOR_POD_IP": "10.0.0.9", "SPARK_EXECUTOR_POD_NAME": "p"}
    cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{REPO / 'docker' / 'entrypoint.sh'}:/opt/entrypoint.sh:ro",
           "-v", f"{stub}:/jdk:ro", *(a for k, v in env.items() for a in ("-e", f"{k}={v}")), image, "executor"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    args = done.stdout.split("\n")
    opts = args[: args.index("-Xms1g")]
    assert opts == ["-Dspark.driver.port=7078", "--add-opens=java.base/java.nio=ALL-UNNAMED", "-Dlast=1"]
    assert "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend" in args
    assert args[args.index("--hostname") + 1] == "10.0.0.9"
