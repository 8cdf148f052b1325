"""The Helm chart (helm/fruitlens), rendered by the real helm binary: lint, schema, what each template renders,
and offline validation of every manifest against Kubernetes' OpenAPI schemas (kubernetes-validate --strict).
No cluster is involved; see tests/deploy/test_k8s_spark_submit.py for what Spark makes of the rendered settings.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakes.fake_k8s import (
    CHART,
    REPO,
    by_kind,
    executor_template,
    helm,
    one,
    render,
    spark_confs,
)

K8S_VERSION = "1.33.0"  # the kubectl shipped beside helm is v1.33; kubernetes-validate bundles it
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")

NON_DEFAULT = {
    "fullnameOverride": "fl-nightly",
    "image": {"repository": "registry.example.com:5000/ml/fruitlens", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "job": {"command": "run", "input": "s3a://fruits/in", "output": "s3a://fruits/out", "backoffLimit": 1,
            "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600, "annotations": {"team": "ml"}},
    "pipeline": {"pcaK": 50, "pcaStandardize": True, "batchSize": 64, "commitSize": 128, "partitions": 8,
                 "limit": 1000, "engine": "onnx", "weights": "s3a://fruits/w.h5", "overwrite": True,
                 "extraArgs": ["--conf", "spark.sql.shuffle.partitions=8"]},
    "s3": {"endpoint": "http://s3.fruitlens-s3.svc:8333", "region": "us-east-1",
           "credentials": {"existingSecret": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}},
    "spark": {"conf": {"spark.network.timeout": "300s", "spark.driver.memory": "3g"}},
    "driver": {"memory": "2500m"},
    "executor": {"instances": 4, "cores": 2, "memory": "3g", "memoryOverhead": "1g", "requestCores": "1500m",
                 "limitCores": "2", "deleteOnTermination": False},
    "serviceAccount": {"create": True, "name": "fruitlens-driver",
                       "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/fl"}},
    "extraEnv": [{"name": "KERAS_HOME", "value": "/opt/fruitlens/keras"}],
    "podAnnotations": {"prometheus.io/scrape": "false"},
    "podLabels": {"cost-center": "ml"},
    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "tolerations": [{"key": "spark", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["batch"]}]}]}}},
}
OPERATOR = {**NON_DEFAULT, "sparkOperator": {"enabled": True, "sparkVersion": "4.0.1"}}


def driver_container(docs):
    return one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]


def job_args(docs):
    """The job's own arguments: everything after the job script."""
    args = driver_container(docs)["args"]
    return args[args.index("local:///opt/fruitlens/job.py") + 1:]


@pytest.fixture(scope="module")
def default_docs():
    return render()[0]


@pytest.fixture(scope="module")
def custom_docs():
    return render(NON_DEFAULT)[0]


# -- lint and schema --------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, NON_DEFAULT, OPERATOR], ids=["default", "non-default", "operator"])
def test_lint_passes_strict(values, tmp_path):
    args = ["lint", "--strict", str(CHART)]
    if values:
        (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "v.yaml")]
    done = helm(*args)
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values, message", [
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"executor": {"gpus": 1}}, "additional properties 'gpus' not allowed"),
    ({"s3": {"credentials": {"secretName": "x"}}}, "additional properties 'secretName' not allowed"),
    ({"executor": {"instances": "two"}}, "/executor/instances"),
    ({"pipeline": {"pcaVariance": "0.9"}}, "/pipeline/pcaVariance"),
    ({"pipeline": {"pcaK": 5000}}, "/pipeline/pcaK"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"pipeline": {"engine": "torch"}}, "/pipeline/engine"),
    ({"job": {"command": "train"}}, "/job/command"),
    ({"executor": {"memory": "lots"}}, "/executor/memory"),
    ({"tolerations": [{"key": "a", "operator": "Maybe"}]}, "/tolerations/0/operator"),
    ({"job": {"input": ""}}, "/job/input"),
    ({"s3": {"endpoint": "s3.local:8333"}}, "/s3/endpoint"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_schema_rejects_bad_values(values, message):
    docs, done = render(values, check=False)
    assert done.returncode != 0 and not docs
    assert message in done.stderr


def test_pca_k_and_pca_variance_together_fail_with_a_clear_message():
    _, done = render({"pipeline": {"pcaK": 5, "pcaVariance": 0.9}}, check=False)
    assert done.returncode != 0
    assert "pipeline.pcaK and pipeline.pcaVariance are exclusive" in done.stderr


def test_schema_has_a_description_on_every_leaf_and_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing, open_objects = [], []

    def walk(node, path):
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties", True) is True and path != "/global":
                open_objects.append(path)
            for key, child in node.get("properties", {}).items():
                walk(child, f"{path}/{key}")
        elif "description" not in node:
            missing.append(path)
        if isinstance(node.get("items"), dict) and "properties" in node["items"]:
            walk(node["items"], path + "[]")
    walk(schema, "")
    assert not missing, f"leaves without description: {missing}"
    assert not open_objects, f"objects without additionalProperties: false: {open_objects}"


def test_every_value_in_values_yaml_is_documented_and_in_the_schema():
    text = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load("\n".join(text))
    # Each leaf key line is preceded by a `# --` comment block (helm-docs), possibly with `# @default --`.
    undocumented, covered_below = [], None  # a `# --` on a map documents the whole map (helm-docs)
    for i, line in enumerate(text):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        j = i - 1
        while j >= 0 and text[j].strip().startswith("#") and not text[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and text[j].strip().startswith("# --")
        if m.group(3).strip() == "":
            if documented:
                covered_below = indent
            continue  # a group, documented by its leaves
        if not documented:
            undocumented.append(m.group(2))
    assert not undocumented, f"values without a `# --` comment: {undocumented}"

    def walk(vals, sch, path):
        for key, val in vals.items():
            assert key in sch["properties"], f"{path}/{key} is in values.yaml but not in the schema"
            child = sch["properties"][key]
            if isinstance(val, dict) and "properties" in child and child["properties"]:
                walk(val, child, f"{path}/{key}")
    walk(values, schema, "")


# -- offline validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, NON_DEFAULT, OPERATOR], ids=["default", "non-default", "operator"])
def test_every_rendered_manifest_passes_kubernetes_validate_strict(values, tmp_path):
    docs, _ = render(values)
    files = []
    for i, doc in enumerate(docs):
        if doc["kind"] == "SparkApplication":
            continue  # a CRD: kubernetes-validate has no schema for it (checked structurally below)
        files.append(tmp_path / f"{i}-{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
        if doc["kind"] == "ConfigMap" and "executor.yaml" in doc.get("data", {}):
            pod = yaml.safe_load(doc["data"]["executor.yaml"])
            pod["metadata"]["name"] = "executor-template"  # Spark names the pods; the validator wants one
            files.append(tmp_path / f"{i}-executor-pod.yaml")
            files[-1].write_text(yaml.safe_dump(pod))
    assert files
    done = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


# -- what is rendered -----------------------------------------------------------------------------------

def test_renders_the_default_objects(default_docs):
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == ["ConfigMap", "Job", "Role", "RoleBinding", "Service", "ServiceAccount"]


def test_renders_the_specified_image(custom_docs):
    c = driver_container(custom_docs)
    assert c["image"] == "registry.example.com:5000/ml/fruitlens:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    conf = spark_confs(c["args"])
    assert conf["spark.kubernetes.container.image"] == "registry.example.com:5000/ml/fruitlens:1.2.3"
    assert conf["spark.kubernetes.container.image.pullPolicy"] == "Always"
    pod = one(custom_docs, "Job")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert executor_template(custom_docs)["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


def test_default_image_is_the_one_make_build_tags(default_docs):
    """Finding 10: the chart's default image must be one the Makefile builds (`make build`: IMAGE:TAG)."""
    done = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-image: ; @echo $(IMAGE):$(TAG)",
                           "print-image"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    assert driver_container(default_docs)["image"] == done.stdout.strip() == "fruitlens:oss"


def test_image_tag_falls_back_to_the_chart_app_version():
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    docs, _ = render({"image": {"tag": ""}})
    assert driver_container(docs)["image"] == f"fruitlens:{app_version}"


def test_runs_spark_submit_in_client_mode_through_the_image_entrypoint(default_docs):
    c = driver_container(default_docs)
    assert "command" not in c  # /opt/entrypoint.sh stays the entrypoint
    args = c["args"]
    # `driver`: the entrypoint runs spark-submit --deploy-mode client under tini (finding 10: any other first
    # argument is exec'd by apache/spark's entrypoint, the JVM then being PID 1).
    assert args[:3] == ["driver", "--master", "k8s://https://kubernetes.default.svc:443"]
    conf = spark_confs(args)
    assert conf["spark.driver.host"] == "demo-fruitlens-driver.jobs.svc"
    assert conf["spark.kubernetes.driver.pod.name"] == "$(SPARK_DRIVER_POD_NAME)"
    env = {e["name"]: e for e in c["env"]}
    assert env["SPARK_DRIVER_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert conf["spark.kubernetes.namespace"] == "jobs"
    assert conf["spark.kubernetes.executor.podTemplateFile"] == "/etc/fruitlens/pod-template/executor.yaml"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["executor-template"] == "/etc/fruitlens/pod-template"


def test_headless_service_selects_the_driver_pod_on_the_driver_ports(default_docs):
    svc = one(default_docs, "Service")
    assert svc["metadata"]["name"] == "demo-fruitlens-driver"
    assert svc["spec"]["clusterIP"] == "None"
    labels = one(default_docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert {p["port"] for p in svc["spec"]["ports"]} == {7078, 7079}
    conf = spark_confs(driver_container(default_docs)["args"])
    assert (conf["spark.driver.port"], conf["spark.driver.blockManager.port"]) == ("7078", "7079")


def test_renders_the_job_arguments_from_the_pipeline_values(custom_docs):
    assert job_args(custom_docs) == [
        "run", "s3a://fruits/in", "s3a://fruits/out", "--batch-size", "64", "--commit-size", "128",
        "--engine", "onnx", "--limit", "1000", "--overwrite", "--partitions", "8", "--pca-k", "50",
        "--pca-standardize", "--weights", "s3a://fruits/w.h5", "--no-progress",
        "--conf", "spark.sql.shuffle.partitions=8"]


def test_default_job_arguments_leave_fruitlens_defaults_alone(default_docs):
    assert job_args(default_docs) == ["run", "s3a://fruitlens/fruits-360-sample", "s3a://fruitlens/output",
                                      "--engine", "auto", "--no-progress"]


def test_extract_passes_no_pca_option():
    docs, _ = render({"job": {"command": "extract"}, "pipeline": {"pcaK": 5, "pcaStandardize": True}})
    args = job_args(docs)
    assert args[0] == "extract" and "--pca-k" not in args and "--pca-standardize" not in args


def test_pca_variance_keeps_its_decimal():
    docs, _ = render({"pipeline": {"pcaVariance": 0.9}})
    args = job_args(docs)
    assert args[args.index("--pca-variance") + 1] == "0.9"


def test_renders_executor_sizing_and_driver_resources(custom_docs):
    c = driver_container(custom_docs)
    conf = spark_confs(c["args"])
    assert conf["spark.executor.instances"] == "4"
    assert conf["spark.executor.cores"] == "2"
    assert conf["spark.executor.memory"] == "3g"
    assert conf["spark.executor.memoryOverhead"] == "1g"
    assert conf["spark.kubernetes.executor.request.cores"] == "1500m"
    assert conf["spark.kubernetes.executor.limit.cores"] == "2"
    assert conf["spark.kubernetes.executor.deleteOnTermination"] == "false"
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi"},
                              "limits": {"cpu": "2", "memory": "4Gi"}}  # explicit memory wins


def test_spark_conf_values_override_the_charts_settings(custom_docs):
    conf = spark_confs(driver_container(custom_docs)["args"])
    assert conf["spark.driver.memory"] == "3g"  # spark.conf wins over driver.memory
    assert conf["spark.network.timeout"] == "300s"
    assert list(driver_container(custom_docs)["args"]).count("spark.driver.memory=3g") == 1


def test_renders_a_hardened_driver_pod(default_docs):
    pod = one(default_docs, "Job")["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 185
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/data/spark-local", "/opt/spark/work-dir"):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be a writable emptyDir"
    conf = spark_confs(pod["containers"][0]["args"])
    assert conf["spark.local.dir"] == "/var/data/spark-local"


def test_executor_pod_template_carries_the_same_hardening(default_docs):
    tpl = executor_template(default_docs)
    pod_sc = one(default_docs, "Job")["spec"]["template"]["spec"]["securityContext"]
    assert tpl["spec"]["securityContext"] == pod_sc
    container = tpl["spec"]["containers"][0]
    assert container["name"] == "executor"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert tpl["spec"]["automountServiceAccountToken"] is False
    assert tpl["metadata"]["labels"]["app.kubernetes.io/component"] == "executor"
    assert tpl["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"


def test_uses_the_service_account_bound_to_a_role_for_executors(custom_docs):
    sa = one(custom_docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "fruitlens-driver"
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/fl")
    assert one(custom_docs, "Job")["spec"]["template"]["spec"]["serviceAccountName"] == "fruitlens-driver"
    role = one(custom_docs, "Role")
    core = next(r for r in role["rules"] if "pods" in r["resources"])
    assert set(core["resources"]) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert {"create", "get", "list", "watch", "delete", "deletecollection"} <= set(core["verbs"])
    binding = one(custom_docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fruitlens-driver", "namespace": "jobs"}]


def test_renders_no_service_account_or_rbac_when_not_created():
    docs, _ = render({"serviceAccount": {"create": False, "name": "existing"}, "rbac": {"create": False}})
    assert not by_kind(docs, "ServiceAccount") and not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert one(docs, "Job")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_references_the_existing_credentials_secret_on_driver_and_executors(custom_docs):
    for env in (driver_container(custom_docs)["env"], executor_template(custom_docs)["spec"]["containers"][0]["env"]):
        by_name = {e["name"]: e for e in env}
        assert by_name["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "id"}
        assert by_name["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "secret"}
        assert by_name["KERAS_HOME"]["value"] == "/opt/fruitlens/keras"
    conf = spark_confs(driver_container(custom_docs)["args"])
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://s3.fruitlens-s3.svc:8333"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"


def test_renders_no_credentials_without_a_secret(default_docs):
    names = {e["name"] for e in driver_container(default_docs)["env"]}
    assert "AWS_ACCESS_KEY_ID" not in names and "AWS_SECRET_ACCESS_KEY" not in names


def test_schedules_driver_and_executors_with_the_same_constraints(custom_docs):
    pod = one(custom_docs, "Job")["spec"]["template"]["spec"]
    tpl = executor_template(custom_docs)["spec"]
    for key in ("nodeSelector", "tolerations", "affinity"):
        assert pod[key] == tpl[key] == NON_DEFAULT[key]


def test_omits_empty_optional_fields(default_docs):
    pod = one(default_docs, "Job")["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        assert key not in pod and key not in executor_template(default_docs)["spec"]
    assert one(default_docs, "Job")["spec"]["activeDeadlineSeconds"] == 86400  # issue 22: no endless wait
    docs, _ = render({"job": {"activeDeadlineSeconds": 0}})
    assert "activeDeadlineSeconds" not in one(docs, "Job")["spec"]


def test_job_settings(custom_docs):
    job = one(custom_docs, "Job")
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["metadata"]["annotations"] == {"team": "ml"}
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["cost-center"] == "ml"
    assert meta["annotations"]["prometheus.io/scrape"] == "false"


def test_a_retried_driver_pod_waits_for_its_predecessors_lock(custom_docs, default_docs):
    """backoffLimit > 0, or disruptions retried (podFailurePolicy, the default): the next pod continues the
    OUTPUT, waiting for the dead pod's lock to go stale."""
    env = {e["name"]: e.get("value") for e in driver_container(custom_docs).get("env", [])}
    assert env["FRUITLENS_LOCK_WAIT"] == "120"
    env = {e["name"]: e.get("value") for e in driver_container(default_docs).get("env", [])}
    assert env["FRUITLENS_LOCK_WAIT"] == "120"
    docs, _ = render({"job": {"podFailurePolicy": {"enabled": False}}})
    assert "FRUITLENS_LOCK_WAIT" not in {e["name"] for e in driver_container(docs).get("env", [])}


def test_names_are_truncated_to_63_characters():
    docs, _ = render(release="r" * 53)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63
    prefix = spark_confs(driver_container(docs)["args"])["spark.kubernetes.executor.podNamePrefix"]
    assert len(prefix) <= 47  # Spark's own limit for executor pod names


def test_release_name_containing_the_chart_name_is_not_repeated():
    docs, _ = render(release="fruitlens-nightly")
    assert one(docs, "Job")["metadata"]["name"] == "fruitlens-nightly"


def test_renders_nothing_for_spark_application_when_disabled(default_docs):
    assert by_kind(default_docs, "SparkApplication") == []


def test_renders_a_spark_application_instead_of_the_job_when_the_operator_is_enabled():
    docs, _ = render(OPERATOR)
    assert not by_kind(docs, "Job") and not by_kind(docs, "Service") and not by_kind(docs, "ConfigMap")
    app = one(docs, "SparkApplication")
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["image"] == "registry.example.com:5000/ml/fruitlens:1.2.3"
    assert spec["mainApplicationFile"] == "local:///opt/fruitlens/job.py"
    assert spec["arguments"][:3] == ["run", "s3a://fruits/in", "s3a://fruits/out"]
    assert spec["driver"]["serviceAccount"] == "fruitlens-driver"
    assert spec["executor"]["instances"] == 4
    for role in ("driver", "executor"):
        assert spec[role]["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec[role]["podSecurityContext"]["runAsUser"] == 185
        env = {e["name"]: e for e in spec[role]["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert spec["sparkConf"]["spark.hadoop.fs.s3a.endpoint"] == "http://s3.fruitlens-s3.svc:8333"
    assert "spark.driver.host" not in spec["sparkConf"]  # client-mode only
    assert one(docs, "Role") and one(docs, "ServiceAccount")


def test_notes_give_numbered_commands_to_follow_the_job(tmp_path):
    done = helm("install", "demo", str(CHART), "--namespace", "jobs", "--dry-run=client")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "1. Follow the whole job" in notes
    assert "fruitlens k8s logs demo -n jobs" in notes
    assert "kubectl -n jobs logs -f job/demo-fruitlens" in notes
    assert re.search(r"^4\. Clean up", notes, re.M)


# -- what a real cluster would have broken (issue 9) ------------------------------------------------------

def test_executor_pod_template_mounts_a_writable_working_dir(default_docs):
    """Finding 1: addFile puts the model in the executor's working dir, /opt/spark/work-dir (read-only root)."""
    tpl = executor_template(default_docs)["spec"]
    mounts = {m["mountPath"]: m["name"] for m in tpl["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in tpl["volumes"]}
    assert "emptyDir" in volumes[mounts["/opt/spark/work-dir"]]
    assert volumes[mounts["/opt/spark/work-dir"]]["emptyDir"]["sizeLimit"] == "1Gi"


def test_executors_run_as_the_release_service_account(custom_docs):
    """Finding 2: the IRSA annotation is on the chart's ServiceAccount; executors must run as it too."""
    sa = one(custom_docs, "ServiceAccount")["metadata"]["name"]
    assert executor_template(custom_docs)["spec"]["serviceAccountName"] == sa
    app = one(render(OPERATOR)[0], "SparkApplication")["spec"]
    assert app["executor"]["serviceAccount"] == app["driver"]["serviceAccount"] == sa


def test_without_a_secret_s3a_uses_the_aws_sdk_default_chain(default_docs, custom_docs):
    """Finding 3: hadoop-aws 3.4's default chain has no web-identity provider; IRSA needs the SDK's chain."""
    key = "spark.hadoop.fs.s3a.aws.credentials.provider"
    conf = spark_confs(driver_container(default_docs)["args"])
    assert conf[key] == "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
    assert key not in spark_confs(driver_container(custom_docs)["args"])  # keys from the Secret: S3A's env provider


def test_driver_memory_limit_follows_the_heap_and_overhead():
    """Finding 8: `k8s submit --driver-memory 4g` must raise the container's limit with the heap."""
    from fruitlens.deploy.k8s import chart_values

    docs, _ = render(chart_values(driver_memory="4g"))
    resources = driver_container(docs)["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "5120Mi"  # 4g + 1g overhead
    assert spark_confs(driver_container(docs)["args"])["spark.driver.memory"] == "4g"
    docs, _ = render({"driver": {"memory": "2500m", "memoryOverhead": "512m"}})
    assert driver_container(docs)["resources"]["limits"]["memory"] == "3012Mi"


def test_no_token_file_setting_so_rotated_tokens_are_reread(default_docs):
    """Finding 10: oauthTokenFile makes Spark read the projected token once; it rotates."""
    conf = spark_confs(driver_container(default_docs)["args"])
    assert not [k for k in conf if "oauthToken" in k]
    assert conf["spark.kubernetes.authenticate.caCertFile"].endswith("/serviceaccount/ca.crt")


def test_driver_and_executors_report_their_log_tail_on_error(default_docs):
    """Finding 10: without FallbackToLogsOnError the reason is only "Error: exit code 1"."""
    assert driver_container(default_docs)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert executor_template(default_docs)["spec"]["containers"][0]["terminationMessagePolicy"] == \
        "FallbackToLogsOnError"


def test_driver_is_started_through_the_entrypoints_driver_mode_with_its_pod_ip(default_docs):
    """Finding 10: `driver` runs spark-submit under tini in both bases (a pass-through argument is exec'd
    by apache/spark's entrypoint: the JVM would be PID 1, reaping no Python worker)."""
    c = driver_container(default_docs)
    assert c["args"][0] == "driver" and "--deploy-mode" not in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SPARK_DRIVER_BIND_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def _mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "m": 1, "g": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise ValueError(quantity)


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_default_sizing_fits_a_laptop_kind_node(default_docs):
    """Finding 10: the defaults asked for 3 CPU and 11Gi; a kind node on a laptop (Docker Desktop: 2+ CPU,
    8 GiB) must hold the driver and both executors, or they stay Pending."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    driver = driver_container(default_docs)["resources"]["requests"]
    conf = spark_confs(driver_container(default_docs)["args"])
    n = int(conf["spark.executor.instances"])
    memory = _mib(driver["memory"]) + n * (_mib(conf["spark.executor.memory"]) + _mib(conf["spark.executor.memoryOverhead"]))
    cpu = _cpu(driver["cpu"]) + n * _cpu(conf["spark.kubernetes.executor.request.cores"])
    assert n == values["executor"]["instances"] == 2
    assert memory <= 7 * 1024, f"{memory} MiB requested"
    assert cpu <= 2, f"{cpu} CPU requested"


def test_default_parallelism_is_set_from_the_executors(default_docs, custom_docs):
    """Finding 10: the job reads defaultParallelism before executors register; the setting makes it right."""
    assert spark_confs(driver_container(default_docs)["args"])["spark.default.parallelism"] == "2"
    assert spark_confs(driver_container(custom_docs)["args"])["spark.default.parallelism"] == "8"  # 4 × 2


def test_extra_volumes_reach_driver_and_executors():
    values = {"extraVolumes": [{"name": "data", "hostPath": {"path": "/srv/fruits", "type": "Directory"}}],
              "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}]}
    docs, _ = render(values)
    for spec in (one(docs, "Job")["spec"]["template"]["spec"], executor_template(docs)["spec"]):
        assert {"name": "data", "mountPath": "/data"} in spec["containers"][0]["volumeMounts"]
        assert {"name": "data", "hostPath": {"path": "/srv/fruits", "type": "Directory"}} in spec["volumes"]


def test_notes_say_a_job_cannot_be_upgraded_in_place():
    """Finding 10: a second `helm upgrade --install` with new values hits the Job's immutable template."""
    done = helm("install", "demo", str(CHART), "--namespace", "jobs", "--dry-run=client")
    assert "field is immutable" in done.stdout and "--replace" in done.stdout


# -- the Spark operator (v2.5.2) path: its webhook's rules, applied to the rendered SparkApplication --------
# From kubeflow/spark-operator v2.5.2: internal/webhook/sparkconf_validator.go (deniedSparkConfKeys,
# validateSparkConf), internal/webhook/sparkpod_defaulter.go (addVolumes skips mounts named spark-local-dir-*),
# internal/controller/sparkapplication/submission.go (spark-local-dir-* volumes become Spark volume settings).
OPERATOR_DENIED_CONF = {
    "spark.kubernetes.authenticate.driver.serviceAccountName", "spark.kubernetes.authenticate.executor.serviceAccountName",
    "spark.kubernetes.authenticate.oauthTokenFile", "spark.kubernetes.authenticate.oauthToken",
    "spark.kubernetes.authenticate.driver.oauthTokenFile", "spark.kubernetes.authenticate.driver.oauthToken",
    "spark.kubernetes.authenticate.executor.oauthTokenFile", "spark.kubernetes.authenticate.executor.oauthToken",
    "spark.master", "spark.kubernetes.driver.master", "spark.kubernetes.container.image",
    "spark.kubernetes.driver.container.image", "spark.kubernetes.executor.container.image",
}


def operator_denials(app: dict, namespace: str) -> list[str]:
    """What validateSparkConf of operator v2.5.2 refuses in this SparkApplication."""
    denied = [f"sparkConf key {k!r} is not allowed" for k in app["spec"].get("sparkConf", {}) if k in OPERATOR_DENIED_CONF]
    ns = app["spec"].get("sparkConf", {}).get("spark.kubernetes.namespace", namespace)
    if ns != namespace:
        denied.append(f"spark.kubernetes.namespace must equal {namespace!r}")
    return denied


def operator_pod_mounts(app: dict, role: str) -> list[str]:
    """The mount paths of the Spark container the API server receives for `role`: Spark's own
    (LocalDirsFeatureStep: the spark-local-dir-* volumes the operator passes as settings, else one emptyDir
    at spark.local.dir), then the webhook's (addVolumes: every other mount of the role with a volume)."""
    spec = app["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    mounts = spec[role].get("volumeMounts", [])
    local = [m["mountPath"] for m in mounts if m["name"].startswith("spark-local-dir-") and m["name"] in volumes]
    spark = local or [spec.get("sparkConf", {}).get("spark.local.dir", "/var/data/spark-local")]
    webhook = [m["mountPath"] for m in mounts if not m["name"].startswith("spark-local-dir-") and m["name"] in volumes]
    return spark + webhook


@pytest.mark.parametrize("values", [OPERATOR, {"sparkOperator": {"enabled": True}}], ids=["non-default", "default"])
def test_operator_webhook_admits_the_spark_application(values):
    """Findings 4 and 5: the webhook denied the image in sparkConf, and the pods it patched had two mounts
    at spark.local.dir ("mountPath must be unique")."""
    docs, _ = render(values)
    app = one(docs, "SparkApplication")
    assert operator_denials(app, "jobs") == []
    for role in ("driver", "executor"):
        paths = operator_pod_mounts(app, role)
        assert len(paths) == len(set(paths)), f"{role}: {paths}"
        assert {"/tmp", "/opt/spark/work-dir", "/var/data/spark-local"} <= set(paths)


def test_operator_rules_catch_what_the_old_chart_rendered():
    """The two checks above fail on the chart's former SparkApplication (so they can fail)."""
    old = {"spec": {"sparkConf": {"spark.kubernetes.container.image": "fruitlens:oss",
                                  "spark.local.dir": "/var/data/spark-local"},
                    "volumes": [{"name": "spark-local", "emptyDir": {}}],
                    "driver": {"volumeMounts": [{"name": "spark-local", "mountPath": "/var/data/spark-local"}]}}}
    assert operator_denials(old, "jobs")
    paths = operator_pod_mounts(old, "driver")
    assert len(paths) != len(set(paths))


def test_notes_say_the_operator_must_watch_the_namespace():
    """Finding 6: the operator reconciles only the namespaces in its spark.jobNamespaces (default [default])."""
    done = helm("install", "demo", str(CHART), "--namespace", "jobs", "--dry-run=client",
                "--set", "sparkOperator.enabled=true")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "spark.jobNamespaces" in notes and "jobs" in notes


# -- the chart against the options table (fruitlens.config.OPTIONS) ----------------------------------------

def _chart_options():
    from fruitlens.config import OPTIONS

    return [o for o in OPTIONS.values() if o.forward and o.chart]


def _kebab(name):
    return re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)


def test_every_chart_pipeline_value_is_an_option_of_the_table_and_back():
    from fruitlens.deploy.k8s.chart import PIPELINE_VALUES

    values = yaml.safe_load((CHART / "values.yaml").read_text())["pipeline"]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["pipeline"]["properties"]
    charted = {o.chart for o in _chart_options()}
    assert set(values) - {"extraArgs"} == charted == set(schema) - {"extraArgs"}
    assert set(PIPELINE_VALUES.values()) == charted
    for o in _chart_options():  # the template turns the value's name into the flag (kebabcase)
        assert f"--{_kebab(o.chart)}" == o.flag, o.name


def test_the_chart_knows_which_options_extract_does_not_take():
    from fruitlens.cli_options import SCOPES

    tpl = (CHART / "templates" / "_helpers.tpl").read_text()
    run_only = re.search(r'\$runOnly := list ((?:"\w+" ?)+)', tpl).group(1).split()
    assert {s.strip('"') for s in run_only} == {o.chart for o in _chart_options()
                                                if o.scope not in SCOPES["extract"]}


def test_the_charts_documented_defaults_and_types_are_fruitlens_own():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)["pipeline"]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["pipeline"]["properties"]
    kinds = {int: "integer", float: "number", bool: "boolean", str: "string"}
    for o in _chart_options():
        types = schema[o.chart]["type"]
        assert kinds[o.type] in ([types] if isinstance(types, str) else types), o.chart
        if o.choices:
            assert [c for c in schema[o.chart]["enum"] if c is not None] == list(o.choices), o.chart
        value = values[o.chart]
        if value not in (None, "", False):
            assert value == o.default, o.chart
            continue
        if o.default in (None, False):
            continue  # an unset value is fruitlens' default already
        shown = re.search(rf"# @default -- \S+ \(([^)]*)\)\n  {o.chart}:", text)
        assert shown, f"pipeline.{o.chart}: no `# @default -- null (...)` line"
        expected = f"{o.default:g}" if isinstance(o.default, float) else str(o.default)
        assert shown.group(1) == expected, f"pipeline.{o.chart} documents {shown.group(1)}, fruitlens says {expected}"


def test_every_chart_value_reaches_the_job_as_its_option():
    from fruitlens.cli import build_parser
    from fruitlens.cli_options import config_from_args

    samples = {int: 7, float: 0.25, str: "x"}
    pipeline = {}
    for o in _chart_options():
        if o.name == "pca_variance":
            continue  # exclusive with pca_k
        pipeline[o.chart] = True if o.type is bool else (o.choices[-1] if o.choices else samples[o.type])
    docs, _ = render({"pipeline": pipeline})
    config = config_from_args(build_parser().parse_args(job_args(docs)))
    for o in _chart_options():
        if o.chart in pipeline:
            assert getattr(config, o.name) == pipeline[o.chart], o.name
