"""EmrProfile: one typed object from YAML < FRUITLENS_EMR_* < flags, validated once."""
from __future__ import annotations

import pytest

from fruitlens.config import ConfigError
from fruitlens.deploy.emr.profile import DEFAULT_ENTRY_POINT, EmrProfile, load_profile

ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"


def write(tmp_path, text: str):
    path = tmp_path / "emr.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_point_at_the_image_entry_point():
    profile = EmrProfile()
    assert profile.entry_point == DEFAULT_ENTRY_POINT == "local:///opt/fruitlens/job.py"
    assert profile.memory_overhead_factor == 0.4


def test_yaml_then_env_then_flags(tmp_path):
    path = write(tmp_path, f"""
region: eu-west-1
virtual-cluster-id: fromyaml
execution_role_arn: {ROLE}
executor_instances: 3
tags: {{team: ml, env: dev}}
spark_conf: {{spark.a: "1"}}
""")
    env = {"FRUITLENS_EMR_EXECUTOR_INSTANCES": "5", "FRUITLENS_EMR_REGION": "us-west-2",
           "FRUITLENS_EMR_TAGS": "env=prod"}
    profile = load_profile({"region": "ap-south-1", "spark_conf": {"spark.b": "2"}}, env=env, profile_file=path)
    assert profile.region == "ap-south-1"             # flag beats env beats YAML
    assert profile.executor_instances == 5            # env beats YAML, typed
    assert profile.virtual_cluster_id == "fromyaml"
    assert profile.tags == {"team": "ml", "env": "prod"}  # maps merge key by key
    assert profile.spark_conf == {"spark.a": "1", "spark.b": "2"}


def test_profile_file_from_env(tmp_path):
    path = write(tmp_path, "release_label: emr-7.2.0-latest\n")
    assert load_profile(env={"FRUITLENS_EMR_PROFILE": str(path)}).release_label == "emr-7.2.0-latest"


def test_a_cluster_name_on_the_command_line_replaces_an_id_from_the_profile(tmp_path):
    path = write(tmp_path, "virtual_cluster_id: abc\n")
    profile = load_profile({"virtual_cluster_name": "fruitlens"}, env={}, profile_file=path)
    assert profile.virtual_cluster_id is None and profile.virtual_cluster_name == "fruitlens"


@pytest.mark.parametrize("settings, message", [
    ({"execution_role_arn": "arn:aws:iam::12:role/x"}, "execution_role_arn must be an IAM role ARN"),
    ({"execution_role_arn": "fruitlens-job"}, "FRUITLENS_EMR_EXECUTION_ROLE_ARN"),
    ({"release_label": "emr 7.5.0"}, "release_label must match the StartJobRun API pattern"),
    ({"virtual_cluster_id": "My Cluster"}, "virtual_cluster_id must be 1-64 lower-case"),
    ({"image": "not an image"}, "image must be a container image URI"),
    ({"entry_point": "/opt/x.py"}, "entry_point must be local:///"),
    ({"executor_instances": 0}, "executor_instances must be a positive integer"),
    ({"executor_memory": "4 GB"}, "executor_memory must be a JVM size"),
    ({"memory_overhead_factor": 0.0}, "memory_overhead_factor must be in"),
    ({"log_uri": "/var/log"}, "log_uri must be an s3:// URI"),
    ({"input": "data/fruits-360"}, "input must be an s3:// URI"),
    ({"region": "Europe"}, "region must look like us-east-1"),
    ({"identity": "oidc"}, "identity must be one of irsa, pod-identity"),
    ({"log_retention_days": 10}, "log_retention_days must be one of CloudWatch's values"),
    ({"python": "python3"}, "python must be an absolute path"),
    ({"output": "s3://b/runs/r1", "output_grant": "s3://b/other"}, "output_grant must contain output"),
])
def test_bad_settings_fail_with_the_setting_and_where_to_fix_it(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(settings, env={})


def test_bad_yaml_values_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"emr.yaml:executor_cores: expected int"):
        load_profile(env={}, profile_file=write(tmp_path, "executor_cores: many\n"))
    with pytest.raises(ConfigError, match=r"unknown settings \['executors'\]"):
        load_profile(env={}, profile_file=write(tmp_path, "executors: 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(env={}, profile_file=tmp_path / "missing.yaml")


def test_require_names_every_missing_setting_and_how_to_give_it():
    with pytest.raises(ConfigError) as info:
        EmrProfile().require("execution_role_arn", "image")
    text = str(info.value)
    assert "execution_role_arn, image" in text and "--image or FRUITLENS_EMR_IMAGE" in text


def test_pod_identity_trust_and_service_accounts():
    from fruitlens.deploy.emr import iam

    profile = load_profile({"execution_role_arn": "arn:aws:iam::123456789012:role/fruitlens-job",
                            "identity": "pod-identity"}, env={})
    (statement,) = iam.trust_policy(profile)["Statement"]  # no OIDC provider needed
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert iam.service_accounts(profile)[1] == f"emr-containers-sa-spark-driver-123456789012-{iam.base36('fruitlens-job')}"
