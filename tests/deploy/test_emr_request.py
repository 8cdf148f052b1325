"""Building the StartJobRun request, its validation and the IAM documents: pure functions, no AWS."""
from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from fruitlens.cli import main
from fruitlens.config import ConfigError
from fruitlens.deploy.emr import errors as emr_errors
from fruitlens.deploy.emr import iam, validation
from fruitlens.deploy.emr import profile as emr_profile
from fruitlens.deploy.emr import request as emr_request
from fruitlens.deploy.emr.profile import EmrProfile

ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:0.1.0"
VC = "abcdefghij0123456789klmno"
IMAGE_SPARK = "4.0.2-amzn-0"  # the image's fruitlens.spark.version: built on emr-spark-8.0.0, the default release


def profile(**overrides) -> EmrProfile:
    settings = dict(region="eu-west-1", virtual_cluster_id=VC, execution_role_arn=ROLE, image=IMAGE,
                    log_uri="s3://fruit-logs/emr", input="s3://fruit-data/fruits-360",
                    output="s3://fruit-out/run1")
    settings.update(overrides)
    return EmrProfile(**settings)


def build(p: EmrProfile | None = None, args=("--pca-k", "50"), **kw):
    p = p or profile()
    return emr_request.build_request(p, virtual_cluster_id=VC, input_uri=p.input, output_uri=p.output,
                             pipeline_args=list(args), **kw)


def test_request_shape():
    request = build()
    driver = request["jobDriver"]["sparkSubmitJobDriver"]
    assert driver == {
        "entryPoint": "local:///opt/fruitlens/job.py",
        "entryPointArguments": ["run", "s3://fruit-data/fruits-360", "s3://fruit-out/run1", "--pca-k", "50",
                                "--no-progress"],
    }
    assert "sparkSubmitParameters" not in driver  # every setting goes to spark-defaults
    (defaults,) = request["configurationOverrides"]["applicationConfiguration"]
    assert defaults["classification"] == "spark-defaults"
    props = defaults["properties"]
    assert props["spark.kubernetes.container.image"] == IMAGE
    assert props["spark.executor.instances"] == "2"
    assert props["spark.executor.memoryOverheadFactor"] == "0.4"
    assert props["spark.dynamicAllocation.enabled"] == "false"
    assert request["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"] == {
        "logUri": "s3://fruit-logs/emr"}
    assert request["retryPolicyConfiguration"] == {"maxAttempts": 1}
    assert request["releaseLabel"] == "emr-spark-8.0.0-latest" and request["executionRoleArn"] == ROLE
    assert request["tags"] == {emr_request.REQUEST_TAG: emr_request.request_hash(request)}
    # The job's interpreter wins over whatever the base's spark-defaults or environment name (finding 10).
    assert props["spark.pyspark.python"] == props["spark.pyspark.driver.python"] == "/opt/fruitlens/venv/bin/python"
    # The image is amd64 only (finding 12); a tag is pulled on every pod start (finding 7).
    assert props["spark.kubernetes.node.selector.kubernetes.io/arch"] == "amd64"
    assert props["spark.kubernetes.container.image.pullPolicy"] == "Always"
    assert emr_request.POD_NAME_PREFIX not in props


def test_explicit_overhead_and_cloudwatch_and_extra_spark_settings():
    request = build(profile(executor_memory_overhead="3g", log_group="/fruitlens/jobs", max_attempts=3,
                            spark_conf={"spark.executor.cores": "4", "spark.kubernetes.node.selector.x": "y"},
                            tags={"team": "ml"}))
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.executor.memoryOverhead"] == "3g" and "spark.executor.memoryOverheadFactor" not in props
    assert props["spark.executor.cores"] == "4"  # the profile's spark_conf wins
    assert request["configurationOverrides"]["monitoringConfiguration"]["cloudWatchMonitoringConfiguration"] == {
        "logGroupName": "/fruitlens/jobs", "logStreamNamePrefix": "fruitlens"}
    assert request["retryPolicyConfiguration"] == {"maxAttempts": 3}
    assert request["tags"] == {"team": "ml", emr_request.REQUEST_TAG: emr_request.request_hash(request)}


def test_each_build_gets_a_fresh_client_token_but_the_same_request_hash():
    """Finding 1: a token is per invocation; only the hash (a tag) says "the same job"."""
    a, b = build(), build()
    assert a["clientToken"] != b["clientToken"] and 1 <= len(a["clientToken"]) <= 64
    assert a["tags"][emr_request.REQUEST_TAG] == b["tags"][emr_request.REQUEST_TAG] == emr_request.request_hash(a) == emr_request.request_hash(b)
    assert len(a["tags"][emr_request.REQUEST_TAG]) == 64
    assert build(args=("--pca-k", "20"))["tags"][emr_request.REQUEST_TAG] != a["tags"][emr_request.REQUEST_TAG]
    assert build(run_key="again")["tags"][emr_request.REQUEST_TAG] != a["tags"][emr_request.REQUEST_TAG]
    assert build(client_token="ci-build-42")["clientToken"] == "ci-build-42"  # the caller's own, if given


def test_a_digest_pinned_image_is_not_pulled_again():
    pinned = IMAGE.split(":0.1.0")[0] + "@sha256:" + "a" * 64
    props = build(profile(image=pinned))["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.kubernetes.container.image"] == pinned
    assert props["spark.kubernetes.container.image.pullPolicy"] == "IfNotPresent"
    assert emr_request.request_notes(profile(image=pinned)) == []
    assert "pin the digest" in " ".join(emr_request.request_notes(profile()))


def test_arm_nodes_and_another_interpreter_are_one_setting_each():
    props = build(profile(node_arch="arm64", python="/usr/local/bin/python3.12"))[
        "configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.kubernetes.node.selector.kubernetes.io/arch"] == "arm64"
    assert props["spark.pyspark.driver.python"] == "/usr/local/bin/python3.12"
    with pytest.raises(Exception, match="node_arch must be amd64 or arm64"):
        profile(node_arch="x86")


@pytest.mark.parametrize("label", ["emr-spark-8.0.0-latest", "emr-spark-8.0.0-20260421", "emr-7.5.0-latest",
                                   "emr-7.2.0-20240610", "emr-7.0.0-spark-rapids-latest", "emr-7.13.0-latest"])
def test_every_release_label_of_a_supported_line_is_accepted(label):
    """Finding 14: the pattern and length come from botocore's model ([\\.\\-_/A-Za-z0-9]+, 1..64); the
    Spark line from fruitlens.deploy.emr.releases: emr-spark-8.0.x (Spark 4.0) and emr-7.x (Spark 3.5)."""
    assert build(profile(release_label=label))["releaseLabel"] == label


@pytest.mark.parametrize("label, message", [
    ("emr-6.12.0-java17-latest", "is an EMR 6.x release, whose images are Amazon Linux 2: no dnf and no Python 3.11"),
    ("emr-6.15.0-java11-20240112", "is an EMR 6.x release"),
    ("emr-5.36.0-latest", "is an EMR 5.x release"),
    ("emr-spark-8.1.0-latest", "it supports Spark 3.5 and 4.0 (pyspark>=3.5,<4.1)"),
    ("notebook-spark/emr-7.0.0-latest", "is not an EMR on EKS Spark release label fruitlens knows"),
])
def test_releases_fruitlens_cannot_run_on_are_refused_saying_which_to_use(label, message):
    with pytest.raises(ConfigError) as caught:
        profile(release_label=label)
    text = str(caught.value)
    assert f"release_label is refused: release {label} " in text and message in text
    assert "use emr-spark-8.0.0-latest (Spark 4.0) or an emr-7.x release such as emr-7.5.0-latest (Spark 3.5)" in text


def test_each_release_maps_to_its_spark_line_and_base_image():
    from fruitlens.deploy.emr import releases

    spark8 = releases.release("emr-spark-8.0.0-20260421")
    assert (spark8.spark_line, spark8.base_image) == (
        "4.0", "public.ecr.aws/emr-on-eks/spark/emr-spark-8.0.0:20260421")
    emr7 = releases.release("emr-7.5.0-latest")
    assert (emr7.spark_line, emr7.base_image) == ("3.5", "public.ecr.aws/emr-on-eks/spark/emr-7.5.0:latest")
    assert releases.spark_line("3.5.2-amzn-1") == "3.5" and releases.spark_line("4.0.2") == "4.0"
    assert releases.image_mismatch("emr-7.5.0-latest", "x/y:z", "3.5.6-amzn-2") is None
    assert releases.image_mismatch("emr-spark-8.0.0-latest", "x/y:z", "4.0.1") is None


@pytest.mark.parametrize("label, message", [("emr 7", "API pattern"), ("e" * 65, "1 to 64 characters")])
def test_release_labels_the_api_refuses_are_refused(label, message):
    with pytest.raises(Exception, match=f"release_label must .*{message}"):
        profile(release_label=label)


def test_the_spark_submit_parameters_limit_is_the_models():
    """Finding 15: 102,400 characters (botocore's model), not 1,024."""
    import botocore.session

    limit = botocore.session.get_session().get_service_model("emr-containers").shape_for(
        "SparkSubmitParameters").metadata["max"]
    assert limit == 102400
    request = build()
    request["jobDriver"]["sparkSubmitJobDriver"]["sparkSubmitParameters"] = "--conf a=b " * 1000
    validation.validate_request(request)  # 11,000 characters: fine
    request["jobDriver"]["sparkSubmitJobDriver"]["sparkSubmitParameters"] = "x" * (limit + 1)
    with pytest.raises(emr_errors.EmrRequestError, match=f"{limit + 1} characters, the API allows at most {limit}.*spark_conf"):
        validation.validate_request(request)


def test_overwrite_is_refused_with_a_retry_policy_and_never_added():
    """Finding 5: a retry re-runs the same arguments; with --overwrite attempt 2 would delete attempt 1's work."""
    args = build(profile(max_attempts=3), args=())["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"]
    assert "--overwrite" not in args  # a retry then continues the interrupted OUTPUT (`fruitlens run` resumes)
    with pytest.raises(emr_errors.EmrRequestError, match="--overwrite with max_attempts=3.*attempt 2 would delete"):
        build(profile(max_attempts=3), args=("--overwrite",))
    assert "--overwrite" in build(profile(max_attempts=1), args=("--overwrite",))[
        "jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"]


def test_a_retry_attempts_driver_waits_for_the_dead_attempts_lock():
    """Attempt 2 starts while attempt 1's OUTPUT lock is still fresh: it waits for it to go stale, then
    continues the run (tests/unit/test_ledger.py shows the wait), instead of failing on it."""
    def props(p):
        return build(p)["configurationOverrides"]["applicationConfiguration"][0]["properties"]

    assert props(profile(max_attempts=3))["spark.kubernetes.driverEnv.FRUITLENS_LOCK_WAIT"] == "120"
    assert "spark.kubernetes.driverEnv.FRUITLENS_LOCK_WAIT" not in props(profile(max_attempts=1))


def test_the_request_is_what_botocore_would_send():
    import boto3

    client = boto3.client("emr-containers", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    request = build()
    with Stubber(client) as stub:
        stub.add_response("start_job_run", {"id": "0000000abcdefghijkl", "virtualClusterId": VC}, request)
        assert client.start_job_run(**request)["id"] == "0000000abcdefghijkl"
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(name="x" * 65), r"\.name: 65 characters, the API allows at most 64"),
    (lambda r: r.update(name="my job"), r"\.name: 'my job' does not match"),
    (lambda r: r.update(clientToken="t" * 65), r"clientToken: 65 characters"),
    (lambda r: r.update(executionRoleArn="arn:aws:iam::123:user/bob"), r"executionRoleArn.*an IAM role ARN"),
    (lambda r: r.update(releaseLabel="emr 7"), r"releaseLabel: 'emr 7' does not match"),
    (lambda r: r["jobDriver"]["sparkSubmitJobDriver"].update(entryPoint="s3://b/" + "k" * 256),
     r"entryPoint: 263 characters, the API allows at most 256"),
    (lambda r: r["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"].append(" "),
     r"entryPointArguments\[6\]: ' ' does not match"),
    (lambda r: r["configurationOverrides"]["applicationConfiguration"][0]["properties"].update(
        {f"spark.x{i}": "1" for i in range(100)}), r"properties: 11\d entries, the API allows 0 to 100"),
    (lambda r: r["configurationOverrides"]["applicationConfiguration"][0]["properties"].update(
        {"spark.long": "v" * 1025}), r"\['spark.long'\]: 1025 characters, the API allows at most 1024"),
    (lambda r: r.update(tags={"k": "v" * 257}), r"tags\['k'\]: 257 characters"),
    (lambda r: r.update(virtualClusterId="Bad-Id"), r"virtualClusterId: 'Bad-Id' does not match"),
    (lambda r: r.update(retryPolicyConfiguration={"maxAttempts": "2"}), r"maxAttempts: expected an integer"),
    (lambda r: r.update(jobDriver={"sparkSubmitJobDriver": {"entryPointArguments": []}}), r"entryPoint is required"),
])
def test_requests_over_the_api_limits_are_refused_before_any_call(mutate, message):
    request = build()
    mutate(request)
    with pytest.raises(emr_errors.EmrRequestError, match=message):
        validation.validate_request(request)


def test_every_problem_is_reported_at_once():
    request = build()
    request.update(name="x" * 65, releaseLabel="emr 7")
    with pytest.raises(emr_errors.EmrRequestError, match=r"name: 65.*; .*releaseLabel"):
        validation.validate_request(request)


def test_input_and_output_must_be_s3():
    with pytest.raises(emr_errors.EmrRequestError, match="INPUT must be an S3 URI.*fruitlens data upload"):
        emr_request.job_arguments("data/fruits-360", "s3://b/out")


def test_dry_run_prints_the_exact_request_and_calls_nothing(monkeypatch, capsys):
    def no_aws(*a, **k):
        raise AssertionError("dry run must not create an AWS client")

    monkeypatch.setattr("boto3.client", no_aws)
    code = main(["emr", "submit", "s3://fruit-data/fruits-360", "s3://fruit-out/run1", "--dry-run",
                 "--virtual-cluster-id", VC, "--execution-role-arn", ROLE, "--image", IMAGE,
                 "--image-spark", IMAGE_SPARK, "--log-uri", "s3://fruit-logs/emr", "--region", "eu-west-1", "--pca-k", "50"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = build()
    assert printed.pop("clientToken") != expected.pop("clientToken")  # fresh per invocation
    assert printed == expected


def test_dry_run_with_only_a_cluster_name_says_why_it_cannot(capsys):
    code = main(["emr", "submit", "s3://a/in", "s3://a/out", "--dry-run", "--virtual-cluster-name", "fruitlens",
                 "--execution-role-arn", ROLE, "--image", IMAGE, "--image-spark", IMAGE_SPARK])
    assert code == 2
    assert "cannot resolve a virtual cluster name" in capsys.readouterr().err


def test_pipeline_options_are_forwarded(capsys):
    code = main(["emr", "submit", "s3://a/in", "s3://a/out", "--dry-run", "--virtual-cluster-id", VC,
                 "--execution-role-arn", ROLE, "--image", IMAGE, "--image-spark", IMAGE_SPARK, "--batch-size", "64",
                 "--engine", "onnx", "--overwrite", "--conf", "spark.sql.shuffle.partitions=8", "--spark-default", "spark.foo=bar"])
    assert code == 0
    request = json.loads(capsys.readouterr().out)
    assert request["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"] == [
        "run", "s3://a/in", "s3://a/out", "--batch-size", "64", "--overwrite", "--engine", "onnx",
        "--conf", "spark.sql.shuffle.partitions=8", "--no-progress"]
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.foo"] == "bar"


def test_iam_policy_grants_the_prefixes_and_nothing_else():
    policy = iam.iam_policy(profile(entry_point="s3://fruit-code/job.py"))
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    # Finding 2: Hadoop's first look at s3://b/p HEADs the bare key p and EMRFS's p_$folder$ marker.
    assert by_sid["ReadInput"] == {"Sid": "ReadInput", "Effect": "Allow", "Action": ["s3:GetObject"],
                                   "Resource": ["arn:aws:s3:::fruit-data/fruits-360",
                                                "arn:aws:s3:::fruit-data/fruits-360/*",
                                                "arn:aws:s3:::fruit-data/fruits-360_$folder$"]}
    assert by_sid["ReadInputList"]["Condition"] == {"StringLikeIfExists": {
        "s3:prefix": ["fruits-360", "fruits-360/*", "fruits-360_$folder$"]}}
    assert by_sid["WriteOutput"]["Resource"] == ["arn:aws:s3:::fruit-out/run1", "arn:aws:s3:::fruit-out/run1/*",
                                                 "arn:aws:s3:::fruit-out/run1_$folder$"]
    assert "s3:PutObject" in by_sid["WriteOutput"]["Action"]
    assert "arn:aws:s3:::fruit-logs/emr/*" in by_sid["WriteLogs"]["Resource"]
    assert "ReadInputParents" not in by_sid  # fruits-360 sits at the bucket's root
    assert by_sid["ReadEntryPoint"]["Resource"] == ["arn:aws:s3:::fruit-code/job.py"]
    every_action = {a for s in policy["Statement"] for a in s["Action"]}
    assert every_action <= {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
                            "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
    assert all("*" != r for s in policy["Statement"] for r in s["Resource"])


def test_iam_policy_lets_a_mkdirs_walk_up_the_output_path():
    """S3A's mkdirs HEADs every parent of OUTPUT; EMRFS removes its parents' _$folder$ markers."""
    by_sid = {s["Sid"]: s for s in iam.iam_policy(profile(output="s3://fruit-out/team/runs/r1"))["Statement"]}
    assert by_sid["WriteOutputParents"] == {
        "Sid": "WriteOutputParents", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": ["arn:aws:s3:::fruit-out/team", "arn:aws:s3:::fruit-out/team_$folder$",
                     "arn:aws:s3:::fruit-out/team/runs", "arn:aws:s3:::fruit-out/team/runs_$folder$"]}
    assert by_sid["WriteOutputParentMarkers"]["Action"] == ["s3:DeleteObject"]
    assert by_sid["WriteOutputParentMarkers"]["Resource"] == ["arn:aws:s3:::fruit-out/team_$folder$",
                                                              "arn:aws:s3:::fruit-out/team/runs_$folder$"]


def test_trust_policy_matches_what_the_aws_cli_writes():
    policy = iam.trust_policy(profile(oidc_provider="https://oidc.eks.eu-west-1.amazonaws.com/id/ABC123",
                                      namespace="fruitlens"))
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {
        "Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC123"}
    assert statement["Condition"]["StringLike"] == {
        "oidc.eks.eu-west-1.amazonaws.com/id/ABC123:sub":
            f"system:serviceaccount:fruitlens:emr-containers-sa-*-*-123456789012-{iam.base36('fruitlens-job')}"}
    assert iam.base36("a") == "2p"  # 0x61 = 97 = 2*36 + 25


def test_iam_commands_print_json(capsys, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"execution_role_arn: {ROLE}\ninput: s3://d/in\noutput: s3://d/out\noidc_provider: oidc.x/id/1\n")
    assert main(["emr", "iam-policy", "--profile", str(prof)]) == 0
    assert json.loads(capsys.readouterr().out)["Version"] == "2012-10-17"
    assert main(["emr", "trust-policy", "--profile", str(prof), "--namespace", "ns1"]) == 0
    assert ":ns1:emr-containers-sa-" in capsys.readouterr().out


DRY = ["emr", "submit", "--dry-run", "--virtual-cluster-id", VC, "--execution-role-arn", ROLE, "--image", IMAGE,
       "--image-spark", IMAGE_SPARK]


def test_submit_refuses_an_image_of_another_spark_line_naming_both(capsys):
    assert main([*DRY, "s3://a/in", "s3://a/out", "--release-label", "emr-7.5.0-latest"]) == 2
    err = capsys.readouterr().err
    assert (f"release emr-7.5.0-latest runs Spark 3.5, but the image {IMAGE} was built on Spark {IMAGE_SPARK}" in err
            and "Submit it with emr-spark-8.0.0-latest" in err
            and "make build FLAVOUR=emr EMR_BASE=public.ecr.aws/emr-on-eks/spark/emr-7.5.0:latest" in err)
    assert main([*DRY, "s3://a/in", "s3://a/out", "--release-label", "emr-7.5.0-latest",
                 "--image-spark", "3.5.2-amzn-1"]) == 0


def test_submit_without_the_images_spark_says_how_to_give_it(capsys):
    """The image is not on this machine (a CI-built digest): the profile must say what it was built on."""
    args = [a for a in DRY if a not in ("--image-spark", IMAGE_SPARK)]
    assert main([*args, "s3://a/in", "s3://a/out"]) == 2
    err = capsys.readouterr().err
    assert f"which Spark the image {IMAGE} was built on is not known here" in err
    assert "release emr-spark-8.0.0-latest (Spark 4.0)" in err and "set image_spark in the EMR profile" in err
    assert "which `make push` prints" in err


def test_submit_refuses_uris_outside_the_granted_prefixes(tmp_path, capsys):
    """Finding 3: the policy grants the profile's input/output; a URI outside them would get 403 on AWS."""
    prof = tmp_path / "p.yaml"
    prof.write_text("input: s3://fruit-data/fruits-360\noutput: s3://fruit-out/runs/latest\noutput_grant: s3://fruit-out/runs\n")
    ok = main([*DRY, "--profile", str(prof), "s3://fruit-data/fruits-360/Test", "s3://fruit-out/runs/r1"])
    assert ok == 0
    capsys.readouterr()
    assert main([*DRY, "--profile", str(prof), "s3://fruit-data/fruits-360", "s3://fruit-out/runs2"]) == 2
    err = capsys.readouterr().err
    assert ("OUTPUT s3://fruit-out/runs2 is outside s3://fruit-out/runs, the prefix the job role's policy grants "
            "(the profile's `output_grant:`)") in err and "403" in err
    assert "INPUT" not in err.split("outside")[0].split("error:")[1]
    assert main([*DRY, "--profile", str(prof), "s3a://other/x", "s3://fruit-out/runs/r1"]) == 2
    assert "INPUT s3a://other/x is outside" in capsys.readouterr().err
    assert main([*DRY, "--profile", str(prof), "s3://other/x", "s3://fruit-out/x", "--outside-grant"]) == 0
    assert main([*DRY, "s3://any/in", "s3://any/out"]) == 0  # no profile prefixes: said, not refused
    assert "not checked here" in capsys.readouterr().err


def test_within_prefix():
    assert emr_profile.within_prefix("s3://b/runs/r1", "s3://b/runs") and emr_profile.within_prefix("s3a://b/runs", "s3://b/runs/")
    assert emr_profile.within_prefix("s3://b/anything", "s3://b")
    assert not emr_profile.within_prefix("s3://b/runs2", "s3://b/runs") and not emr_profile.within_prefix("s3://c/runs", "s3://b/runs")


def test_a_fixed_executor_pod_name_prefix_is_warned_about(capsys):
    """Finding 6: two runs in one namespace would both name their executors fruitlens-exec-1."""
    assert main([*DRY, "s3://a/in", "s3://a/out", "--spark-default", f"{emr_request.POD_NAME_PREFIX}=fruitlens"]) == 0
    assert f"spark_conf sets {emr_request.POD_NAME_PREFIX}=fruitlens: two job runs in one namespace" in capsys.readouterr().err


def test_the_example_profile_has_no_fixed_pod_name_prefix():
    from pathlib import Path

    import yaml

    example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "emr-profile.yaml").read_text())
    assert emr_request.POD_NAME_PREFIX not in (example.get("spark_conf") or {})


def test_trust_policy_is_merged_into_a_shared_roles_existing_trust():
    """Finding 9: setup.sh appends, as `aws emr-containers update-role-trust-policy` does."""
    ours = iam.trust_policy(profile(oidc_provider="oidc.eks.eu-west-1.amazonaws.com/id/ABC", namespace="fruitlens"))
    other = {"Effect": "Allow", "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/x/id/OTHER"},
             "Action": "sts:AssumeRoleWithWebIdentity", "Condition": {"StringLike": {"x/id/OTHER:sub": "sa"}}}
    existing = {"Version": "2012-10-17", "Statement": [other]}
    merged = iam.merge_trust_policy(existing, ours)
    assert merged["Statement"] == [other, *ours["Statement"]]
    assert iam.merge_trust_policy(merged, ours) == merged  # idempotent: a re-run adds nothing
    single = {"Version": "2012-10-17", "Statement": {**ours["Statement"][0], "Sid": "X"}}
    assert iam.merge_trust_policy(single, ours)["Statement"] == [single["Statement"]]
    assert iam.merge_trust_policy(None, ours) == ours


def test_trust_policy_merge_with_on_the_command_line(tmp_path, capsys):
    current = tmp_path / "current.json"
    current.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {
        "Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    base = ["emr", "trust-policy", "--execution-role-arn", ROLE, "--oidc-provider", "oidc.x/id/1"]
    assert main([*base, "--merge-with", str(current)]) == 0
    statements = json.loads(capsys.readouterr().out)["Statement"]
    assert [s["Action"] for s in statements] == ["sts:AssumeRole", "sts:AssumeRoleWithWebIdentity"]
    current.write_text("not json")
    assert main([*base, "--merge-with", str(current)]) == 2
    assert "not a readable JSON policy" in capsys.readouterr().err


def test_access_denied_points_at_the_execution_role_condition_key():
    from botocore.exceptions import ClientError

    error = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "StartJobRun")
    assert "emr-containers:ExecutionRoleArn condition key" in str(emr_errors.explain(error, "StartJobRun", "vc"))
