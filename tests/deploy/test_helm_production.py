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


# -- 4, 5. per-role scheduling, the driver kept off disruption ---------------------------------------------

ROLES = {
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "spark", "effect": "NoSchedule"}],
    "driver": {"nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}, "priorityClassName": "batch-high",
               "podAnnotations": {"team": "ml"}},
    "executor": {"nodeSelector": {"karpenter.sh/capacity-type": "spot"}, "priorityClassName": "batch-low",
                 "tolerations": [{"key": "fruitlens.io/spot", "operator": "Exists", "effect": "NoSchedule"}],
                 "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                     {"weight": 50, "preference": {"matchExpressions": [
                         {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m"]}]}}]}},
                 "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "node.kubernetes.io/instance-type",
                                                "whenUnsatisfiable": "ScheduleAnyway"}]},
}


def test_driver_on_on_demand_executors_on_spot_each_with_its_own_scheduling():
    """Finding 4: one nodeSelector/tolerations/affinity for both roles put the driver on spot with the
    executors, and the schema refused per-role settings, priorityClassName and topologySpreadConstraints."""
    docs, _ = render(ROLES)
    drv = driver_pod(docs)["spec"]
    exe = executor_template(docs)["spec"]
    assert drv["nodeSelector"] == {"kubernetes.io/arch": "amd64", "karpenter.sh/capacity-type": "on-demand"}
    assert exe["nodeSelector"] == {"kubernetes.io/arch": "amd64", "karpenter.sh/capacity-type": "spot"}
    assert drv["tolerations"] == ROLES["tolerations"]
    assert exe["tolerations"] == ROLES["tolerations"] + ROLES["executor"]["tolerations"]
    assert "affinity" not in drv and exe["affinity"] == ROLES["executor"]["affinity"]
    assert (drv["priorityClassName"], exe["priorityClassName"]) == ("batch-high", "batch-low")
    assert "topologySpreadConstraints" not in drv
    (spread,) = exe["topologySpreadConstraints"]
    assert spread["topologyKey"] == "node.kubernetes.io/instance-type"
    assert spread["labelSelector"]["matchLabels"] == {  # this release's executors, not every pod
        "app.kubernetes.io/name": "fruitlens", "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "executor"}
    assert driver_pod(docs)["metadata"]["annotations"]["team"] == "ml"
    assert "team" not in executor_template(docs)["metadata"].get("annotations", {})


def test_the_operator_gets_the_same_per_role_scheduling():
    docs, _ = render({**{k: v for k, v in ROLES.items() if k != "executor"},
                      "executor": {k: v for k, v in ROLES["executor"].items() if k != "topologySpreadConstraints"},
                      "sparkOperator": {"enabled": True}})
    spec = one(docs, "SparkApplication")["spec"]
    assert spec["driver"]["nodeSelector"]["karpenter.sh/capacity-type"] == "on-demand"
    assert spec["executor"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    assert spec["driver"]["priorityClassName"] == "batch-high" and spec["executor"]["priorityClassName"] == "batch-low"
    assert spec["executor"]["tolerations"][-1]["key"] == "fruitlens.io/spot"
    assert spec["driver"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


def test_the_operator_refuses_topology_spread_it_has_no_field_for():
    _, done = render({"executor": {"topologySpreadConstraints": ROLES["executor"]["topologySpreadConstraints"]},
                      "sparkOperator": {"enabled": True}}, check=False)
    assert done.returncode != 0 and "executor.topologySpreadConstraints: a SparkApplication" in done.stderr


def test_the_driver_is_marked_do_not_disrupt_for_karpenter():
    """Finding 5: Karpenter's consolidation could evict a running driver (losing the job)."""
    docs, _ = render()
    assert driver_pod(docs)["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert "karpenter.sh/do-not-disrupt" not in executor_template(docs)["metadata"].get("annotations", {})
    docs, _ = render({"driver": {"doNotDisrupt": False}})
    assert "karpenter.sh/do-not-disrupt" not in driver_pod(docs)["metadata"]["annotations"]


# -- 8. the operator no longer drops settings silently ------------------------------------------------------

def test_the_operator_carries_retries_expiry_and_the_driver_cpu():
    """Finding 8: backoffLimit, ttlSecondsAfterFinished and resources.requests.cpu were dropped."""
    docs, _ = render({"sparkOperator": {"enabled": True}, "job": {"backoffLimit": 2, "ttlSecondsAfterFinished": 600},
                      "resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": "2"}}})
    spec = one(docs, "SparkApplication")["spec"]
    assert spec["restartPolicy"]["type"] == "OnFailure" and spec["restartPolicy"]["onFailureRetries"] == 2
    assert spec["timeToLiveSeconds"] == 600
    assert (spec["driver"]["coreRequest"], spec["driver"]["coreLimit"]) == ("1500m", "2")
    assert {"name": "FRUITLENS_LOCK_WAIT", "value": "120"} in spec["driver"]["env"]
    spec = one(render({"sparkOperator": {"enabled": True}})[0], "SparkApplication")["spec"]
    assert spec["restartPolicy"] == {"type": "Never"} and spec["timeToLiveSeconds"] == 86400


def test_the_operator_notes_name_what_it_cannot_apply():
    from fakes.fake_k8s import helm

    done = helm("install", "demo", str(CHART), "--namespace", "jobs", "--dry-run=client",
                "--set", "sparkOperator.enabled=true", "--set", "job.activeDeadlineSeconds=3600")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "Not applied through the operator" in notes
    assert "job.activeDeadlineSeconds" in notes and "scratch.ephemeralStorageRequest" in notes


# -- 9. network policy and spark.authenticate -------------------------------------------------------------

def test_spark_authenticate_on_and_ui_kill_links_off():
    """Finding 9: the driver's RPC ports and its UI (kill links on) were open to every pod."""
    docs, _ = render()
    conf = conf_of(docs)
    assert conf["spark.authenticate"] == "true" and conf["spark.ui.killEnabled"] == "false"
    app = one(render({"sparkOperator": {"enabled": True}})[0], "SparkApplication")["spec"]["sparkConf"]
    assert app["spark.authenticate"] == "true"


def test_network_policy_lets_the_release_pods_reach_each_other_and_nothing_else_in():
    """Finding 9: in a default-deny namespace the executors could not reach the driver at all."""
    assert not by_kind(render()[0], "NetworkPolicy")
    docs, _ = render({"networkPolicy": {"enabled": True}, "s3": {"endpoint": "http://s3.fruitlens-s3.svc:8333"}})
    pol = one(docs, "NetworkPolicy")["spec"]
    release = {"app.kubernetes.io/name": "fruitlens", "app.kubernetes.io/instance": "demo"}
    assert pol["podSelector"]["matchLabels"] == release
    assert pol["policyTypes"] == ["Ingress", "Egress"]
    assert pol["ingress"] == [{"from": [{"podSelector": {"matchLabels": release}}]}]
    # both roles carry the selected labels: the driver pod and the executor template
    for labels in (driver_pod(docs)["metadata"]["labels"], executor_template(docs)["metadata"]["labels"]):
        assert release.items() <= labels.items()
    ports = {(p["port"], p.get("protocol")) for rule in pol["egress"] for p in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (8333, "TCP")} <= ports
    assert {"to": [{"podSelector": {"matchLabels": release}}]} in pol["egress"]


# -- 12. the driver binds where the entrypoint binds it ------------------------------------------------------

def test_the_driver_binds_to_its_pod_ip_through_the_entrypoint():
    """Finding 12: `spark.driver.bindAddress=0.0.0.0` overrode the entrypoint's pod-IP binding (apache/spark's
    entrypoint.sh: `--conf spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS` before the user's arguments,
    which would win). The pod IP is the one address that is right on IPv4 and IPv6-only clusters alike."""
    docs, _ = render()
    assert "spark.driver.bindAddress" not in conf_of(docs)
    env = {e["name"]: e for e in driver_container(docs)["env"]}
    assert env["SPARK_DRIVER_BIND_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    entrypoint = (CHART.parents[1] / "docker" / "entrypoint.sh").read_text()
    assert '--conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS' in entrypoint


def test_the_local_entrypoint_passes_an_ipv6_pod_ip_to_spark_submit(tmp_path):
    """The local base's entrypoint, run with a stand-in spark-submit and tini: an IPv6 pod IP reaches
    spark.driver.bindAddress untouched, and the chart's arguments follow it."""
    bin_dir = tmp_path / "spark" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "spark-submit").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (bin_dir / "spark-submit").chmod(0o755)
    tini = tmp_path / "tini"
    tini.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')  # `tini -s -- CMD...`
    tini.chmod(0o755)
    script = (CHART.parents[1] / "docker" / "entrypoint.sh").read_text().replace("/usr/bin/tini", str(tini))
    (tmp_path / "entrypoint.sh").write_text(script)
    docs, _ = render()
    args = driver_container(docs)["args"]
    done = subprocess.run(["bash", str(tmp_path / "entrypoint.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SPARK_HOME": str(tmp_path / "spark"),
                               "SPARK_DRIVER_BIND_ADDRESS": "fd00:10:244::5"}, timeout=30)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    binds = [a for a in out if a.startswith("spark.driver.bindAddress=")]
    assert binds == ["spark.driver.bindAddress=fd00:10:244::5"]
    assert out[out.index("--deploy-mode") + 1] == "client" and "--master" in out


# -- 13. decommissioning ---------------------------------------------------------------------------------------

def test_decommissioning_is_on_with_a_grace_period_for_the_prestop_hook():
    """Finding 13: decommissioning was off; a spot notice lost the executor's work and blocks."""
    docs, _ = render()
    conf = conf_of(docs)
    for key in ("spark.decommission.enabled", "spark.storage.decommission.enabled",
                "spark.storage.decommission.shuffleBlocks.enabled", "spark.storage.decommission.rddBlocks.enabled"):
        assert conf[key] == "true", key
    assert conf["spark.executor.decommission.forceKillTimeout"] == "75s"
    assert "spark.kubernetes.decommission.script" not in conf  # Spark's default, /opt/decom.sh
    assert executor_template(docs)["spec"]["terminationGracePeriodSeconds"] == 90
    docs, _ = render({"decommission": {"enabled": False}})
    assert "spark.decommission.enabled" not in conf_of(docs)
    assert "terminationGracePeriodSeconds" not in executor_template(docs)["spec"]


# -- the documented production values ------------------------------------------------------------------------

def test_the_production_values_render_and_validate(tmp_path):
    """k8s/values-production.yaml (docs/kubernetes.md, "Production") renders, every manifest passes
    kubernetes-validate --strict, and it is what the doc says: driver on-demand, executors on spot."""
    from test_helm_chart import K8S_VERSION, VALIDATE

    values = yaml.safe_load((CHART.parents[1] / "k8s" / "values-production.yaml").read_text())
    values["image"]["digest"] = DIGEST
    docs, _ = render(values)
    files = []
    for i, doc in enumerate(docs):
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    pod = executor_template(docs)
    pod["metadata"]["name"] = "executor-template"
    files.append(tmp_path / "executor.yaml")
    files[-1].write_text(yaml.safe_dump(pod))
    done = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert driver_pod(docs)["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "on-demand"
    assert pod["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    assert driver_container(docs)["imagePullPolicy"] == "IfNotPresent"
    assert one(docs, "NetworkPolicy")
