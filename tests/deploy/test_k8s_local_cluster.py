"""The local-cluster pieces (k8s/, mk/k8s.mk) that can be checked without kind, minikube or Docker — NOT a cluster.

Manifests are validated offline; the make targets run with recording stand-ins for kind/kubectl (so the
idempotence of `make kind-up` is checked on what would be called); the S3 uploader runs against moto's server.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes.fake_k8s import REPO

VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def _docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def test_local_s3_manifest_passes_kubernetes_validate_strict():
    done = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", "1.33.0", str(REPO / "k8s" / "s3.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_local_s3_secret_has_the_keys_the_chart_reads_and_the_server_accepts():
    docs = {d["kind"]: d for d in _docs("k8s/s3.yaml")}
    secret = docs["Secret"]["stringData"]
    identity = json.loads(secret["s3.json"])["identities"][0]["credentials"][0]
    assert (identity["accessKey"], identity["secretKey"]) == (secret["AWS_ACCESS_KEY_ID"],
                                                              secret["AWS_SECRET_ACCESS_KEY"])
    chart = yaml.safe_load((REPO / "helm" / "fruitlens" / "values.yaml").read_text())["s3"]["credentials"]
    assert {chart["accessKeyIdKey"], chart["secretAccessKeyKey"]} <= set(secret)
    assert docs["Secret"]["metadata"]["name"] == "fruitlens-s3"
    assert docs["Service"]["metadata"]["name"] == "s3"
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8333


def test_kind_cluster_config_names_the_cluster():
    (config,) = _docs("k8s/kind-cluster.yaml")
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["name"] == "fruitlens"


@pytest.fixture
def stand_ins(tmp_path):
    """kind and kubectl that only record their arguments; `kind get clusters` answers from a file."""
    log = tmp_path / "calls.log"
    clusters = tmp_path / "clusters"
    clusters.write_text("")
    for name in ("kind", "kubectl"):
        script = tmp_path / name
        script.write_text(f"""#!/usr/bin/env bash
echo "{name} $*" >> {log}
if [ "{name}" = kind ] && [ "$1 $2" = "get clusters" ]; then cat {clusters}; fi
if [ "{name}" = kind ] && [ "$1 $2" = "create cluster" ]; then echo fruitlens > {clusters}; fi
exit 0
""")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)

    def make(*targets):
        done = subprocess.run(["make", "--no-print-directory", *targets, f"KIND={tmp_path / 'kind'}",
                               f"KUBECTL={tmp_path / 'kubectl'}"], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "MAKEFLAGS": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        calls = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return calls
    return make


def test_make_kind_up_creates_the_cluster_once_then_only_checks(stand_ins):
    first = stand_ins("kind-up")
    assert any(c.startswith("kind create cluster --name fruitlens --config k8s/kind-cluster.yaml") for c in first)
    assert "kubectl --context kind-fruitlens -n fruitlens apply -f k8s/s3.yaml" in first
    second = stand_ins("kind-up")
    assert not any("create cluster" in c for c in second)
    assert "kubectl --context kind-fruitlens -n fruitlens apply -f k8s/s3.yaml" in second  # apply is idempotent


def test_local_s3_manifest_names_no_namespace_so_k8s_namespace_applies(stand_ins):
    """Issue 9, finding 10: k8s/s3.yaml hard-coded `fruitlens`; K8S_NAMESPACE must decide."""
    assert all("namespace" not in d["metadata"] and d["kind"] != "Namespace" for d in _docs("k8s/s3.yaml"))
    calls = stand_ins("s3-up", "K8S_CONTEXT=kind-x", "K8S_NAMESPACE=ml")
    assert "kubectl --context kind-x create namespace ml --dry-run=client -o yaml" in calls
    assert any(c.startswith("kubectl --context kind-x label namespace ml --overwrite "
                            "pod-security.kubernetes.io/enforce=restricted") for c in calls)
    assert "kubectl --context kind-x -n ml apply -f k8s/s3.yaml" in calls


def test_make_kind_run_submits_the_built_image_with_the_local_s3(tmp_path):
    done = subprocess.run(["make", "-n", "--no-print-directory", "kind-run", "IMAGE=reg/fl", "TAG=t1",
                           f"KIND={tmp_path}/kind", f"KUBECTL={tmp_path}/kubectl"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # Issue 9, finding 10: `kind load docker-image` fails under containerd's image store; an archive works.
    assert "docker save reg/fl:t1 -o build/kind-image.tar" in out
    assert f"{tmp_path}/kind load image-archive build/kind-image.tar --name fruitlens" in out
    assert "--build-arg WITH_S3A=true" in out  # the image gets the S3A connector (mk/docker.mk)
    submit = next(line for line in out.splitlines() if "fruitlens k8s submit" in line)
    for part in ('"s3a://fruitlens/fruits-360-sample" "s3a://fruitlens/output"', "--context kind-fruitlens",
                 "--image reg/fl:t1", "--s3-endpoint http://s3.fruitlens.svc:8333", "--s3-secret fruitlens-s3",
                 "--namespace fruitlens", "--replace"):
        assert part in submit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_upload_sends_a_folder_once(tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    folder = tmp_path / "sample" / "Training" / "Cherry"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8" + bytes([i]) * 10)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fruitlens")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fruitlens-local-only")
        sys.path.insert(0, str(REPO / "k8s"))
        try:
            import s3_upload
        finally:
            sys.path.pop(0)
        endpoint = f"http://127.0.0.1:{port}"
        args = ["--endpoint", endpoint, "--bucket", "fruitlens", "--prefix", "fruits-360-sample",
                str(tmp_path / "sample")]
        assert s3_upload.main(args) == 0
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="fruitlens")["Contents"])
        assert keys == [f"fruits-360-sample/Training/Cherry/{i}.jpg" for i in range(3)]
        assert s3_upload.main(args) == 0  # second run: all skipped
    finally:
        server.stop()


def test_make_kind_run_defaults_to_the_image_make_build_tags(tmp_path):
    """Issue 9, finding 10: `TAG ?= dev` in mk/k8s.mk never applied (mk/docker.mk sets TAG first)."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "kind-load", f"KIND={tmp_path}/kind"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    assert "docker save fruitlens:oss " in done.stdout
    assert "TAG ?= dev" not in (REPO / "mk" / "k8s.mk").read_text()
