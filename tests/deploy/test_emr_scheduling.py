"""Issue 22 on the EMR on EKS path: per-role scheduling (driver on on-demand capacity, executors on spot),
Karpenter's do-not-disrupt on the driver, and the pod templates for what Spark has no setting for.
Pure functions (no AWS); the pod templates pass kubernetes-validate --strict as Pods."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fruitlens.config import ConfigError
from fruitlens.deploy.emr import iam
from fruitlens.deploy.emr import request as emr_request
from fruitlens.deploy.emr.profile import EmrProfile, load_profile

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "deploy" / "emr-on-eks" / "pod-templates"
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:0.1.0"

SPOT = dict(driver_node_selector={"karpenter.sh/capacity-type": "on-demand"},
            executor_node_selector={"karpenter.sh/capacity-type": "spot"},
            driver_pod_template="s3://fruit-conf/pod-templates/driver.yaml",
            executor_pod_template="s3://fruit-conf/pod-templates/executor.yaml")


def profile(**overrides) -> EmrProfile:
    settings = dict(region="eu-west-1", virtual_cluster_id="abcdefghij0123456789klmno", execution_role_arn=ROLE,
                    image=IMAGE, input="s3://fruit-data/in", output="s3://fruit-out/run1")
    settings.update(overrides)
    return EmrProfile(**settings)


def test_driver_on_on_demand_executors_on_spot_with_their_templates():
    props = emr_request.spark_defaults(profile(**SPOT))
    assert props["spark.kubernetes.driver.node.selector.karpenter.sh/capacity-type"] == "on-demand"
    assert props["spark.kubernetes.executor.node.selector.karpenter.sh/capacity-type"] == "spot"
    assert props["spark.kubernetes.driver.podTemplateFile"] == SPOT["driver_pod_template"]
    assert props["spark.kubernetes.executor.podTemplateFile"] == SPOT["executor_pod_template"]
    assert props["spark.kubernetes.node.selector.kubernetes.io/arch"] == "amd64"  # both roles, as before
    p = profile(**SPOT)
    request = emr_request.build_request(p, virtual_cluster_id=p.virtual_cluster_id, input_uri=p.input,
                                        output_uri=p.output)  # within the API's limits (validated)
    assert request["configurationOverrides"]["applicationConfiguration"][0]["properties"] == props


def test_the_driver_is_marked_do_not_disrupt_unless_turned_off():
    assert emr_request.spark_defaults(profile())[
        "spark.kubernetes.driver.annotation.karpenter.sh/do-not-disrupt"] == "true"
    props = emr_request.spark_defaults(profile(driver_do_not_disrupt=False))
    assert not [k for k in props if "do-not-disrupt" in k]
    assert not [k for k in emr_request.spark_defaults(profile()) if ".node.selector.karpenter" in k]


def test_the_job_role_may_read_the_pod_templates_and_nothing_more():
    policy = iam.iam_policy(profile(**SPOT))
    (stmt,) = [s for s in policy["Statement"] if s["Sid"] == "ReadPodTemplates"]
    assert stmt["Action"] == ["s3:GetObject"]
    assert stmt["Resource"] == ["arn:aws:s3:::fruit-conf/pod-templates/driver.yaml",
                                "arn:aws:s3:::fruit-conf/pod-templates/executor.yaml"]
    assert not [s for s in iam.iam_policy(profile())["Statement"] if s["Sid"] == "ReadPodTemplates"]


@pytest.mark.parametrize("overrides, message", [
    ({"executor_node_selector": {"karpenter.sh/capacity-type": "spot instances"}}, "executor_node_selector"),
    ({"driver_node_selector": {"-bad": "x"}}, "driver_node_selector"),
    ({"driver_pod_template": "/local/driver.yaml"}, "driver_pod_template must be the s3:// URI"),
])
def test_bad_scheduling_settings_are_refused_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        profile(**overrides)


def test_node_selectors_merge_across_profile_and_environment(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"executor_node_selector": {"karpenter.sh/capacity-type": "spot"},
                                                     "driver_do_not_disrupt": False}))
    p = load_profile(env={"FRUITLENS_EMR_EXECUTOR_NODE_SELECTOR": "kubernetes.io/arch=amd64"},
                     profile_file=tmp_path / "p.yaml")
    assert p.executor_node_selector == {"karpenter.sh/capacity-type": "spot", "kubernetes.io/arch": "amd64"}
    assert p.driver_do_not_disrupt is False


def test_the_pod_templates_are_valid_pods_with_emrs_container_names(tmp_path):
    files = []
    for role, container in (("driver", "spark-kubernetes-driver"), ("executor", "spark-kubernetes-executor")):
        pod = yaml.safe_load((TEMPLATES / f"{role}.yaml").read_text())
        assert [c["name"] for c in pod["spec"]["containers"]] == [container]
        pod["metadata"] = {"name": role}
        pod["spec"]["containers"][0]["image"] = IMAGE  # EMR fills it in; the validator wants one
        files.append(tmp_path / f"{role}.yaml")
        files[-1].write_text(yaml.safe_dump(pod))
    done = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", "1.33.0", *map(str, files)],
                          capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stdout + done.stderr
    executor = yaml.safe_load((TEMPLATES / "executor.yaml").read_text())["spec"]
    assert executor["tolerations"][0]["key"] == "fruitlens.io/spot"
    assert executor["topologySpreadConstraints"][0]["topologyKey"] == "node.kubernetes.io/instance-type"


def test_the_karpenter_nodepools_match_what_the_pods_ask_for():
    docs = [d for d in yaml.safe_load_all((REPO / "k8s" / "karpenter-nodepools.yaml").read_text()) if d]
    pools = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "NodePool"}
    capacity = {name: next(r["values"] for r in spec["requirements"] if r["key"] == "karpenter.sh/capacity-type")
                for name, spec in pools.items()}
    assert capacity == {"fruitlens-on-demand": ["on-demand"], "fruitlens-spot": ["spot"]}
    (taint,) = pools["fruitlens-spot"]["taints"]
    toleration = yaml.safe_load((TEMPLATES / "executor.yaml").read_text())["spec"]["tolerations"][0]
    assert (taint["key"], taint["value"], taint["effect"]) == (toleration["key"], toleration["value"],
                                                               toleration["effect"])
    classes = {d["metadata"]["name"] for d in docs if d["kind"] == "PriorityClass"}
    assert classes == {"fruitlens-driver", "fruitlens-executor"}
