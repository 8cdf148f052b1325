"""What Spark sends to Kubernetes when it is given the chart's settings.

NOT a cluster: the real spark-submit of the venv's PySpark (with its Kubernetes backend jars) talks to
tests/fakes/fake_k8s.py, a Python http.server on 127.0.0.1 that records requests and answers just enough for
Spark to create pods. No pod is scheduled and no container runs; what is checked is the pod specs Spark
builds from the chart's spark-submit arguments and pod template, i.e. what a real API server would receive.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes.fake_k8s import (
    FakeKubeServer,
    executor_template,
    one,
    pod,
    render,
    spark_confs,
)

PYSPARK = Path(sys.executable).parents[1] / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "pyspark"
SPARK_SUBMIT = PYSPARK / "bin" / "spark-submit"
JOB_SCRIPT = "local:///opt/fruitlens/job.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not any((PYSPARK / "jars").glob("spark-kubernetes_*.jar")),
                       reason="this PySpark has no Kubernetes backend jar"),
]

VALUES = {
    "image": {"repository": "registry.example.com/fruitlens", "tag": "9.9.9"},
    "job": {"input": "s3a://fruits/in", "output": "s3a://fruits/out"},
    "pipeline": {"pcaK": 20, "batchSize": 16},
    "s3": {"endpoint": "http://s3.fruitlens-s3.svc:8333",
           "credentials": {"existingSecret": "s3-creds"}},
    "executor": {"instances": 2, "cores": 1, "memory": "1g", "memoryOverhead": "512m",
                 "nodeSelector": {"karpenter.sh/capacity-type": "spot"},
                 "tolerations": [{"key": "fruitlens.io/spot", "operator": "Exists", "effect": "NoSchedule"}]},
    "driver": {"memory": "1g", "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"}},
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
    env.update(KUBECONFIG=str(tmp_path / "no-kubeconfig"), SPARK_LOCAL_IP="127.0.0.1",
               PYSPARK_PYTHON=sys.executable, SPARK_HOME=str(PYSPARK), HOME=str(tmp_path))
    return env


def _chart_job_args() -> tuple[list[str], dict]:
    docs, _ = render(VALUES, release="demo", namespace="jobs")
    container = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    return container["args"], executor_template(docs)


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


# -- cluster mode: the driver pod (the SparkApplication / operator path) ------------------------------------

@pytest.fixture(scope="module")
def cluster_mode_submission(tmp_path_factory):
    """spark-submit --deploy-mode cluster with the chart's image, settings, job arguments and pod template."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    args, template = _chart_job_args()
    conf = spark_confs(args)
    client_only = {"spark.driver.host", "spark.driver.bindAddress", "spark.kubernetes.driver.pod.name",
                   "spark.kubernetes.authenticate.caCertFile", "spark.kubernetes.authenticate.oauthTokenFile",
                   "spark.kubernetes.executor.podTemplateFile"}
    (tmp_path / "pod-template.yaml").write_text(yaml.safe_dump(template))
    conf = {k: v for k, v in conf.items() if k not in client_only}
    conf.update({
        "spark.kubernetes.submission.waitAppCompletion": "false",
        "spark.kubernetes.authenticate.driver.serviceAccountName": "demo-fruitlens",
        "spark.kubernetes.driver.podTemplateFile": str(tmp_path / "pod-template.yaml"),
        "spark.kubernetes.driver.podTemplateContainerName": "executor",
    })
    job = args[args.index(JOB_SCRIPT):]
    with FakeKubeServer() as kube:
        cmd = [str(SPARK_SUBMIT), "--master", f"k8s://{kube.url}", "--deploy-mode", "cluster", "--name", "demo"]
        for key, value in sorted(conf.items()):
            cmd += ["--conf", f"{key}={value}"]
        _run(cmd + job, tmp_path)
        yield kube


def _driver_pod(kube) -> dict:
    posts = kube.sent("POST", "/api/v1/namespaces/jobs/pods")
    assert len(posts) == 1, [r.path for r in kube.requests]
    return posts[0].body


def test_cluster_mode_creates_one_driver_pod_with_the_chart_image(cluster_mode_submission):
    pod_spec = _driver_pod(cluster_mode_submission)
    assert pod_spec["metadata"]["labels"]["spark-role"] == "driver"
    (container,) = pod_spec["spec"]["containers"]
    assert container["image"] == "registry.example.com/fruitlens:9.9.9"
    assert container["imagePullPolicy"] == "Always"  # a tag (issue 22, finding 2); a digest: IfNotPresent


def test_cluster_mode_driver_runs_the_job_script_with_the_pipeline_arguments(cluster_mode_submission):
    args = _driver_pod(cluster_mode_submission)["spec"]["containers"][0]["args"]
    assert args[0] == "driver"
    i = args.index(JOB_SCRIPT)
    # forwarded in the options table's order (fruitlens.config)
    assert args[i + 1:] == ["run", "s3a://fruits/in", "s3a://fruits/out", "--batch-size", "16", "--engine", "auto",
                            "--pca-k", "20", "--no-progress"]


def test_cluster_mode_driver_uses_the_service_account(cluster_mode_submission):
    assert _driver_pod(cluster_mode_submission)["spec"]["serviceAccountName"] == "demo-fruitlens"


def test_cluster_mode_driver_memory_includes_the_overhead(cluster_mode_submission):
    resources = _driver_pod(cluster_mode_submission)["spec"]["containers"][0]["resources"]
    # 1g heap + max(384m, 10% of heap) overhead (Spark's default for JVM jobs; 40% for Python in 4.x: check ≥)
    limit = int(resources["limits"]["memory"].removesuffix("Mi"))
    assert limit >= 1024 + 384
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert resources["requests"]["cpu"] == "1"


def test_cluster_mode_driver_gets_the_template_hardening_and_secret_env(cluster_mode_submission):
    spec = _driver_pod(cluster_mode_submission)["spec"]
    assert spec["securityContext"]["runAsUser"] == 185 and spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["SPARK_DRIVER_BIND_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_cluster_mode_ships_the_chart_settings_in_the_driver_configmap(cluster_mode_submission):
    kube = cluster_mode_submission
    (cm,) = [o for o in kube.of("configmaps") if o["metadata"]["name"].startswith("spark-drv-")]
    props = cm["data"]["spark.properties"]
    assert "spark.hadoop.fs.s3a.endpoint=http\\://s3.fruitlens-s3.svc\\:8333" in props
    assert "spark.executor.instances=2" in props
    assert "spark.kubernetes.container.image=registry.example.com/fruitlens\\:9.9.9" in props


# -- client mode: the executor pods the Job's driver creates ---------------------------------------------

TINY_JOB = """\
import time
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
time.sleep(2)  # the allocator posts the executor pods meanwhile
spark.stop()
"""


@pytest.fixture(scope="module")
def client_mode_run(tmp_path_factory):
    """The chart's own spark-submit arguments (client mode), run here with a tiny script in place of
    job.py; only what cannot exist outside a pod is replaced: the driver's address and pod name (normally
    the headless Service and the downward API), the service-account token files, and file paths."""
    tmp_path = tmp_path_factory.mktemp("client")
    args, template = _chart_job_args()
    (tmp_path / "executor.yaml").write_text(yaml.safe_dump(template))
    (tmp_path / "job.py").write_text(TINY_JOB)
    replaced = {
        "spark.driver.host": "127.0.0.1",
        "spark.kubernetes.driver.pod.name": "demo-fruitlens-x7k2p",
        "spark.kubernetes.executor.podTemplateFile": str(tmp_path / "executor.yaml"),
        "spark.local.dir": str(tmp_path / "local"),
    }
    dropped = {"spark.kubernetes.authenticate.caCertFile", "spark.kubernetes.authenticate.oauthTokenFile"}
    with FakeKubeServer() as kube:
        driver = kube.put("pods", pod("demo-fruitlens-x7k2p", "demo", "driver", "Running", namespace="jobs"))
        cmd: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--conf":
                key, value = args[i + 1].split("=", 1)
                if key not in dropped:
                    cmd += ["--conf", f"{key}={replaced.get(key, value)}"]
                i += 2
                continue
            if arg == JOB_SCRIPT:
                break
            cmd.append(arg.replace("k8s://https://kubernetes.default.svc:443", f"k8s://{kube.url}"))
            i += 1
        # The image's entrypoint turns `driver ARGS` into `spark-submit --deploy-mode client ARGS`.
        assert cmd[:3] == ["driver", "--master", f"k8s://{kube.url}"]
        # (and binds it to the pod's IP: SPARK_DRIVER_BIND_ADDRESS, here 127.0.0.1)
        assert not any(a.startswith("spark.driver.bindAddress=") for a in cmd)
        cmd = [str(SPARK_SUBMIT), "--conf", "spark.driver.bindAddress=127.0.0.1", "--deploy-mode", "client", *cmd[1:]]
        cmd += ["--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=1s", str(tmp_path / "job.py")]
        _run(cmd, tmp_path)
        yield kube, driver


def _executor_pods(kube) -> list[dict]:
    return [r.body for r in kube.sent("POST", "/api/v1/namespaces/jobs/pods")]


def test_client_mode_driver_asks_for_the_configured_number_of_executor_pods(client_mode_run):
    kube, _ = client_mode_run
    pods = _executor_pods(kube)
    assert len(pods) == 2
    assert sorted(p["metadata"]["name"] for p in pods) == ["demo-fruitlens-exec-1", "demo-fruitlens-exec-2"]


def test_client_mode_executors_are_owned_by_the_driver_pod(client_mode_run):
    kube, driver = client_mode_run
    for p in _executor_pods(kube):
        (owner,) = p["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", driver["metadata"]["name"],
                                                                driver["metadata"]["uid"])


def test_client_mode_executors_use_the_image_and_sizing(client_mode_run):
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        (c,) = p["spec"]["containers"]
        assert c["name"] == "executor"
        assert c["image"] == "registry.example.com/fruitlens:9.9.9"
        assert c["resources"]["limits"]["memory"] == "1536Mi"  # 1g heap + 512m overhead
        assert c["resources"]["requests"]["cpu"] == "500m"  # executor.requestCores
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SPARK_DRIVER_URL"] == "spark://CoarseGrainedScheduler@127.0.0.1:7078"


def test_client_mode_executors_get_the_pod_template_hardening(client_mode_run):
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        spec = p["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 185
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        c = spec["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        local = [m for m in c["volumeMounts"] if m["name"].startswith("spark-local-dir-")]
        assert local and "emptyDir" in volumes[local[0]["name"]]  # Spark's local dir: writable scratch


def test_client_mode_executors_carry_the_release_labels_and_secret_env(client_mode_run):
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        labels = p["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/component"] == "executor"
        assert labels["spark-role"] == "executor"
        env = {e["name"]: e for e in p["spec"]["containers"][0]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"


def test_client_mode_driver_removes_its_executors_when_it_stops(client_mode_run):
    kube, _ = client_mode_run
    deletes = [r for r in kube.sent("DELETE", "/api/v1/namespaces/jobs/pods") if "labelSelector" in r.query]
    assert deletes and "spark-role=executor" in deletes[0].query["labelSelector"][0]


def test_client_mode_executors_run_as_the_release_service_account(client_mode_run):
    """Finding 2: without it executors run as `default`, and an IRSA / Pod Identity role never reaches them."""
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        assert p["spec"]["serviceAccountName"] == "demo-fruitlens"


def test_client_mode_executors_have_a_writable_working_dir(client_mode_run):
    """Finding 1: SparkContext.addFile lands in the executor's working dir, the image's WORKDIR
    /opt/spark/work-dir, on a read-only root filesystem unless an emptyDir is mounted there."""
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        c = p["spec"]["containers"][0]
        assert c.get("workingDir") in (None, "/opt/spark/work-dir")
        volumes = {v["name"]: v for v in p["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/opt/spark/work-dir"]]


def test_client_mode_executor_local_dir_is_the_templates_sized_volume(client_mode_run):
    """Finding 10: Spark uses the template's spark-local-dir-1 (size-limited) instead of adding its own
    unlimited emptyDir; mount paths stay unique; the ephemeral-storage request survives Spark's edits."""
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        c = p["spec"]["containers"][0]
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        assert len(paths) == len(set(paths)), paths
        names = [v["name"] for v in p["spec"]["volumes"]]
        assert len(names) == len(set(names)), names
        local = [m for m in c["volumeMounts"] if m["name"].startswith("spark-local-dir-")]
        assert [m["mountPath"] for m in local] == ["/var/data/spark-local"]
        volumes = {v["name"]: v for v in p["spec"]["volumes"]}
        assert volumes["spark-local-dir-1"]["emptyDir"]["sizeLimit"] == "10Gi"
        assert c["resources"]["requests"]["ephemeral-storage"] == "1Gi"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SPARK_LOCAL_DIRS"] == "/var/data/spark-local"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


# -- issue 22: what Spark makes of the production settings ---------------------------------------------------

def test_client_mode_executors_get_the_decommission_prestop_hook_and_grace(client_mode_run):
    """Finding 13: with spark.decommission.enabled Spark gives each executor container a preStop hook running
    spark.kubernetes.decommission.script (/opt/decom.sh, which the image must have); the template's grace
    period leaves it time."""
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        c = p["spec"]["containers"][0]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == ["/opt/decom.sh"]
        assert p["spec"]["terminationGracePeriodSeconds"] == 90


def test_client_mode_executors_get_the_applications_auth_secret(client_mode_run):
    """Finding 9: with spark.authenticate Spark hands each executor the application's secret; without it
    any pod could speak to the driver's RPC port."""
    kube, _ = client_mode_run
    secrets = set()
    for p in _executor_pods(kube):
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        # SecurityManager.ENV_AUTH_SECRET, `_SPARK_AUTH_SECRET` in Spark 4.0.1
        assert env.get("_SPARK_AUTH_SECRET"), " ".join(sorted(env))
        secrets.add(env["_SPARK_AUTH_SECRET"])
    assert len(secrets) == 1


def test_client_mode_executors_are_scheduled_as_executors_not_as_the_driver(client_mode_run):
    """Finding 4: the executors' own nodeSelector and tolerations reach the pods Spark creates."""
    kube, _ = client_mode_run
    for p in _executor_pods(kube):
        assert p["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
        assert p["spec"]["tolerations"] == VALUES["executor"]["tolerations"]
        assert "karpenter.sh/do-not-disrupt" not in p["metadata"].get("annotations", {})
