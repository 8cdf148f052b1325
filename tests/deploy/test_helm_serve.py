"""The chart's serving part (`serve.enabled`), rendered by the real helm binary: lint, schema, offline validation
against Kubernetes' OpenAPI schemas (kubernetes-validate --strict), and what each object says: the Deployment
hardened like the job, ready on /readyz and alive on /healthz, the model from S3 or a volume, the Service,
HorizontalPodAutoscaler and PodDisruptionBudget selecting only the serving pods. That the rendered pod runs
and answers: tests/deploy/test_k8s_serve_pod.py.
"""
from __future__ import annotations

import argparse
import subprocess

import pytest
import yaml
from fakes.fake_k8s import CHART, by_kind, helm, one, render
from test_helm_chart import K8S_VERSION, VALIDATE

from fruitlens.serve import cli as serve_cli

SERVE = {"serve": {"enabled": True}}
S3 = {
    "serve": {"enabled": True, "model": {"output": "s3://fruits/model-out"}, "keepUploads": "s3://fruits/uploads",
              "batching": {"maxBatch": 16, "batchWaitMs": 3, "maxQueue": 64}, "threads": 2,
              "extraArgs": ["--max-body-bytes", "10485760"], "podAnnotations": {"prometheus.io/scrape": "true"},
              "service": {"type": "LoadBalancer", "port": 8080, "annotations": {"team": "app"}},
              "autoscaling": {"minReplicas": 3, "maxReplicas": 9, "targetCPUUtilizationPercentage": 60},
              "podDisruptionBudget": {"minAvailable": "50%"},
              "nodeSelector": {"pool": "serving"}},
    "s3": {"endpoint": "http://s3.fruitlens-s3.svc:8333", "region": "eu-west-1",
           "credentials": {"existingSecret": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/fl"}},
}
VOLUME = {"serve": {"enabled": True, "replicas": 1, "autoscaling": {"enabled": False},
                    "podDisruptionBudget": {"enabled": False}, "serviceAccountName": "fruitlens-serve",
                    "model": {"volume": {"persistentVolumeClaim": {"claimName": "fruits-output", "readOnly": True}},
                              "mountPath": "/models/out"}}}
HOSTPATH = {"serve": {"enabled": True, "model": {"volume": {"hostPath": {"path": "/srv/out", "type": "Directory"}}}}}
CASES = {"defaults": SERVE, "s3": S3, "pvc": VOLUME, "hostpath": HOSTPATH}
SERVE_KINDS = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def serving(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "serve"]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[dict]) -> dict:
    spec = pod_spec(docs)
    assert len(spec["containers"]) == 1
    return spec["containers"][0]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values)[0] for name, values in CASES.items()}


@pytest.mark.parametrize("case", CASES)
def test_lint_passes_strict(case, tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(CASES[case]))
    done = helm("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", CASES)
def test_every_serving_manifest_passes_kubernetes_validate_strict(case, rendered, tmp_path):
    files = []
    for i, doc in enumerate(serving(rendered[case])):
        files.append(tmp_path / f"{i}-{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    assert len(files) >= 2
    done = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", K8S_VERSION, *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_off_by_default_and_the_job_is_unchanged_when_on(rendered):
    off = render()[0]
    assert not serving(off)
    assert sorted(d["kind"] for d in serving(rendered["defaults"])) == SERVE_KINDS
    job_objects = [d for d in rendered["defaults"] if d not in serving(rendered["defaults"])]
    assert job_objects == off


@pytest.mark.parametrize("values, message", [
    ({"serve": {"port": 0}}, "port"),
    ({"serve": {"model": {"output": "gs://bucket/out"}}}, "output"),
    ({"serve": {"service": {"type": "ExternalName"}}}, "type"),
    ({"serve": {"batching": {"maxBatch": 0}}}, "maxBatch"),
    ({"serve": {"podDisruptionBudget": {"minAvailable": "most"}}}, "minAvailable"),
    ({"serve": {"replicaz": 2}}, "replicaz"),
])
def test_schema_rejects_bad_serving_values(values, message):
    _, done = render({"serve": {"enabled": True, **values["serve"]}}, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_template_checks_fail_with_clear_messages():
    _, done = render({"serve": {"enabled": True, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, check=False)
    assert done.returncode != 0 and "minReplicas must not exceed" in done.stderr
    _, done = render({"serve": {"enabled": True, "resources": {"requests": {"cpu": None}}}}, check=False)  # null unsets
    assert done.returncode != 0 and "needs serve.resources.requests.cpu" in done.stderr


# -- the Deployment -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_the_serving_pod_is_hardened_like_the_job(case, rendered):
    docs = rendered[case]
    spec, c = pod_spec(docs), container(docs)
    job_pod = one(docs, "Job")["spec"]["template"]["spec"]
    assert spec["securityContext"] == job_pod["securityContext"]
    assert spec["securityContext"]["runAsUser"] == 185 and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc == job_pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] == 185
    assert spec["automountServiceAccountToken"] is False  # the service never calls the API
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    # the only writable place is the /tmp emptyDir (a model is staged there while loading)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"]["name"])
    assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp")


@pytest.mark.parametrize("case", CASES)
def test_ready_on_readyz_alive_on_healthz_and_rolled_without_losing_capacity(case, rendered):
    docs = rendered[case]
    c = container(docs)
    port = CASES[case]["serve"].get("port", 8080)
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert c["image"] == "fruitlens:serve"  # what `make build-serve` tags


def _serve_args(c: dict) -> argparse.Namespace:
    """The container's arguments as `python -m fruitlens.serve` (the image's entry point) parses them."""
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(c["args"])


def test_the_model_comes_from_the_jobs_output_by_default(rendered):
    docs = rendered["defaults"]
    ns = _serve_args(container(docs))
    job_args = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ns.output == "s3a://fruitlens/output" and ns.output in job_args
    assert ns.host == "0.0.0.0" and ns.port == 8080 and ns.threads == 0 and ns.keep_uploads is None
    assert pod_spec(docs)["serviceAccountName"] == "demo-fruitlens"


def test_the_model_from_s3_with_the_charts_credentials_and_role(rendered):
    docs = rendered["s3"]
    c = container(docs)
    ns = _serve_args(c)
    assert ns.output == "s3://fruits/model-out" and ns.keep_uploads == "s3://fruits/uploads"
    assert (ns.max_batch, ns.batch_wait_ms, ns.max_queue, ns.threads, ns.max_body_bytes) == (16, 3, 64, 2, 10485760)
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "secret"}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://s3.fruitlens-s3.svc:8333"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    sa = one(docs, "ServiceAccount")
    assert pod_spec(docs)["serviceAccountName"] == sa["metadata"]["name"]  # IRSA: the role annotated there
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    assert pod_spec(docs)["nodeSelector"] == {"pool": "serving"}
    assert one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


@pytest.mark.parametrize("case, source", [("pvc", {"persistentVolumeClaim": {"claimName": "fruits-output",
                                                                              "readOnly": True}}),
                                          ("hostpath", {"hostPath": {"path": "/srv/out", "type": "Directory"}})])
def test_the_model_from_a_volume_mounted_read_only(case, source, rendered):
    docs = rendered[case]
    c, spec = container(docs), pod_spec(docs)
    path = CASES[case]["serve"]["model"].get("mountPath", "/var/lib/fruitlens/output")
    assert _serve_args(c).output == path
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == path)
    assert mount["readOnly"] is True
    assert next(v for v in spec["volumes"] if v["name"] == mount["name"]) == {"name": mount["name"], **source}
    assert not any(e["name"].startswith("AWS_") for e in c["env"])


def test_a_separate_service_account_may_be_named(rendered):
    assert pod_spec(rendered["pvc"])["serviceAccountName"] == "fruitlens-serve"


# -- Service, HorizontalPodAutoscaler, PodDisruptionBudget -----------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_service_autoscaler_and_budget_select_only_the_serving_pods(case, rendered):
    docs = rendered[case]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items() and selector["app.kubernetes.io/component"] == "serve"
    service = next(s for s in by_kind(docs, "Service") if s in serving(docs))
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    driver_service = next(s for s in by_kind(docs, "Service") if s not in serving(docs))
    assert driver_service["spec"]["selector"]["app.kubernetes.io/component"] == "driver"
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": deployment["metadata"]["name"]}


def test_autoscaling_on_cpu_owns_the_replica_count(rendered):
    docs = rendered["s3"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # else every upgrade would reset the HPA's count
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    service = next(s for s in by_kind(docs, "Service") if s in serving(docs))
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["ports"][0]["port"] == 8080


def test_without_autoscaling_the_replicas_are_fixed_and_the_budget_optional(rendered):
    docs = rendered["pvc"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "PodDisruptionBudget")
    pdb = one(rendered["defaults"], "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
