"""The chart, production-shaped (issue 22): digests, pull policy, executor sizing per core, per-role
scheduling (driver on on-demand capacity, executors on spot), Karpenter, NetworkPolicy, spark.authenticate,
the entrypoint's pod-IP binding, decommissioning and the operator's fields. Rendered by the real helm
binary; every rendered manifest passes kubernetes-validate --strict (tests/deploy/test_helm_chart.py has the
validator; it is reused here on the production values).
"""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from fakes.fake_k8s import CHART, by_kind, executor_template, one, render, spark_confs

DIGEST = "sha256:" + "0123456789abcdef" * 4
#: A label value, as the API server checks it (apimachinery's IsValidLabelValue).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def driver_pod(docs) -> dict:
    return one(docs, "Job")["spec"]["template"]


def driver_container(docs) -> dict:
    return driver_pod(docs)["spec"]["containers"][0]


def conf_of(docs) -> dict[str, str]:
    return spark_confs(driver_container(docs)["args"])


def all_labels(docs):
    for doc in docs:
        yield from doc["metadata"].get("labels", {}).items()
        tpl = doc.get("spec", {}).get("template", {})
        yield from tpl.get("metadata", {}).get("labels", {}).items()
    yield from executor_template(docs)["metadata"]["labels"].items()


# -- 1. a digest deploys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("image, expected", [
    (f"registry.example.com:5000/ml/fruitlens@{DIGEST}", f"registry.example.com:5000/ml/fruitlens@{DIGEST}"),
    (f"registry.example.com/fruitlens:oss@{DIGEST}", f"registry.example.com/fruitlens:oss@{DIGEST}"),
])
def test_a_digest_from_k8s_submit_renders_a_valid_image_and_labels(image, expected):
    """Finding 1: `--image repo@sha256:…` rendered `repo@sha256:…:oss` (InvalidImageName), and a digest in the
    tag put `@` and `:` into the version label."""
    from fruitlens.deploy.k8s import chart_values

    docs, _ = render(chart_values(image=image))
    assert driver_container(docs)["image"] == expected
    assert conf_of(docs)["spark.kubernetes.container.image"] == expected
    for key, value in all_labels(docs):
        assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)


def test_a_digest_in_the_tag_is_refused_by_the_schema():
    _, done = render({"image": {"tag": f"oss@{DIGEST}"}}, check=False)
    assert done.returncode != 0 and "/image/tag" in done.stderr
    _, done = render({"image": {"digest": "sha256:abc"}}, check=False)
    assert done.returncode != 0 and "/image/digest" in done.stderr


# -- 2. a tag is pulled again, a digest is not ---------------------------------------------------------------

@pytest.mark.parametrize("values, policy", [
    ({}, "Always"),
    ({"image": {"digest": DIGEST}}, "IfNotPresent"),
    ({"image": {"pullPolicy": "IfNotPresent"}}, "IfNotPresent"),
    ({"sparkOperator": {"enabled": True}}, "Always"),
])
def test_a_mutable_tag_is_pulled_always_on_driver_and_executors(values, policy):
    """Finding 2: `:oss` pulled IfNotPresent stayed stale on nodes that had it."""
    docs, _ = render(values)
    app = by_kind(docs, "SparkApplication")
    if app:
        assert app[0]["spec"]["imagePullPolicy"] == policy
        assert app[0]["spec"]["sparkConf"]["spark.kubernetes.container.image.pullPolicy"] == policy
        return
    assert driver_container(docs)["imagePullPolicy"] == policy
    assert conf_of(docs)["spark.kubernetes.container.image.pullPolicy"] == policy


def test_the_local_cluster_targets_keep_the_loaded_image():
    """kind/minikube load the image into the node: with a tag's default (Always) they would try a registry."""
    text = (CHART.parents[1] / "mk" / "k8s.mk").read_text()
    assert "--pull-policy IfNotPresent" in text


# -- 3. executor cores raise the CPU request and the memory overhead -------------------------------------

@pytest.mark.parametrize("cores, cpu, overhead", [(1, "500m", "1500m"), (4, "2000m", "4800m")])
def test_executor_cores_raise_the_cpu_request_and_the_memory_overhead(cores, cpu, overhead):
    """Finding 3: `--executor-cores 4` kept a 500m request and 1500m overhead while each of the four Python
    workers takes ~1.1 GB: OOM-killed, and four task slots squeezed into half a core."""
    from fruitlens.deploy.k8s import chart_values

    docs, _ = render(chart_values(executor_cores=cores))
    conf = conf_of(docs)
    assert conf["spark.executor.cores"] == str(cores)
    assert conf["spark.kubernetes.executor.request.cores"] == cpu
    assert conf["spark.executor.memoryOverhead"] == overhead
    app = one(render({**chart_values(executor_cores=cores), "sparkOperator": {"enabled": True}})[0],
              "SparkApplication")["spec"]["executor"]
    assert (app["coreRequest"], app["memoryOverhead"]) == (cpu, overhead)


def test_explicit_executor_request_and_overhead_win():
    docs, _ = render({"executor": {"cores": 4, "requestCores": "3", "memoryOverhead": "6g"}})
    conf = conf_of(docs)
    assert (conf["spark.kubernetes.executor.request.cores"], conf["spark.executor.memoryOverhead"]) == ("3", "6g")
    docs, _ = render({"executor": {"cores": 2, "requestCoresPerCore": 1, "pythonWorkerMemory": "2g"}})
    conf = conf_of(docs)
    assert (conf["spark.kubernetes.executor.request.cores"], conf["spark.executor.memoryOverhead"]) == ("2000m", "4496m")
