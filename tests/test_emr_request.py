"""Building the StartJobRun request, its validation and the IAM documents: pure functions, no AWS."""
from __future__ import annotations

import json

import pytest
from botocore.stub import Stubber

from fruitlens import emr
from fruitlens.cli import main
from fruitlens.emr_config import EmrProfile

ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:0.1.0"
VC = "abcdefghij0123456789klmno"


def profile(**overrides) -> EmrProfile:
    settings = dict(region="eu-west-1", virtual_cluster_id=VC, execution_role_arn=ROLE, image=IMAGE,
                    log_uri="s3://fruit-logs/emr", input="s3://fruit-data/fruits-360",
                    output="s3://fruit-out/run1")
    settings.update(overrides)
    return EmrProfile(**settings)


def build(p: EmrProfile | None = None, args=("--pca-k", "50"), **kw):
    p = p or profile()
    return emr.build_request(p, virtual_cluster_id=VC, input_uri=p.input, output_uri=p.output,
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
    assert request["releaseLabel"] == "emr-7.5.0-latest" and request["executionRoleArn"] == ROLE
    assert "tags" not in request


def test_explicit_overhead_and_cloudwatch_and_extra_spark_settings():
    request = build(profile(executor_memory_overhead="3g", log_group="/fruitlens/jobs", max_attempts=3,
                            spark_conf={"spark.executor.cores": "4", "spark.kubernetes.node.selector.x": "y"},
                            tags={"team": "ml"}))
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.executor.memoryOverhead"] == "3g" and "spark.executor.memoryOverheadFactor" not in props
    assert props["spark.executor.cores"] == "4"  # the profile's spark_conf wins
    assert request["configurationOverrides"]["monitoringConfiguration"]["cloudWatchMonitoringConfiguration"] == {
        "logGroupName": "/fruitlens/jobs", "logStreamNamePrefix": "fruitlens"}
    assert request["retryPolicyConfiguration"] == {"maxAttempts": 3} and request["tags"] == {"team": "ml"}


def test_client_token_is_a_deterministic_hash_of_the_request():
    a, b = build(), build()
    assert a["clientToken"] == b["clientToken"] and len(a["clientToken"]) == 64
    assert build(args=("--pca-k", "20"))["clientToken"] != a["clientToken"]
    assert build(run_key="again")["clientToken"] != a["clientToken"]
    assert emr.client_token(a) == a["clientToken"]  # the token does not hash itself


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
    (lambda r: r["jobDriver"]["sparkSubmitJobDriver"].update(sparkSubmitParameters="--conf a=b " * 100),
     r"sparkSubmitParameters: 1100 characters, keep it under 1024"),
    (lambda r: r["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"].append(" "),
     r"entryPointArguments\[6\]: ' ' does not match"),
    (lambda r: r["configurationOverrides"]["applicationConfiguration"][0]["properties"].update(
        {f"spark.x{i}": "1" for i in range(100)}), r"properties: 109 entries, the API allows 0 to 100"),
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
    with pytest.raises(emr.EmrRequestError, match=message):
        emr.validate_request(request)


def test_every_problem_is_reported_at_once():
    request = build()
    request.update(name="x" * 65, releaseLabel="emr 7")
    with pytest.raises(emr.EmrRequestError, match=r"name: 65.*; .*releaseLabel"):
        emr.validate_request(request)


def test_input_and_output_must_be_s3():
    with pytest.raises(emr.EmrRequestError, match="INPUT must be an S3 URI.*fruitlens data upload"):
        emr.job_arguments("data/fruits-360", "s3://b/out")


def test_dry_run_prints_the_exact_request_and_calls_nothing(monkeypatch, capsys):
    def no_aws(*a, **k):
        raise AssertionError("dry run must not create an AWS client")

    monkeypatch.setattr("boto3.client", no_aws)
    code = main(["emr", "submit", "s3://fruit-data/fruits-360", "s3://fruit-out/run1", "--dry-run",
                 "--virtual-cluster-id", VC, "--execution-role-arn", ROLE, "--image", IMAGE,
                 "--log-uri", "s3://fruit-logs/emr", "--region", "eu-west-1", "--pca-k", "50"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == build()


def test_dry_run_with_only_a_cluster_name_says_why_it_cannot(capsys):
    code = main(["emr", "submit", "s3://a/in", "s3://a/out", "--dry-run", "--virtual-cluster-name", "fruitlens",
                 "--execution-role-arn", ROLE, "--image", IMAGE])
    assert code == 2
    assert "cannot resolve a virtual cluster name" in capsys.readouterr().err


def test_pipeline_options_are_forwarded(capsys):
    code = main(["emr", "submit", "s3://a/in", "s3://a/out", "--dry-run", "--virtual-cluster-id", VC,
                 "--execution-role-arn", ROLE, "--image", IMAGE, "--batch-size", "64", "--engine", "onnx",
                 "--overwrite", "--conf", "spark.sql.shuffle.partitions=8", "--spark-default", "spark.foo=bar"])
    assert code == 0
    request = json.loads(capsys.readouterr().out)
    assert request["jobDriver"]["sparkSubmitJobDriver"]["entryPointArguments"] == [
        "run", "s3://a/in", "s3://a/out", "--batch-size", "64", "--engine", "onnx", "--overwrite",
        "--conf", "spark.sql.shuffle.partitions=8", "--no-progress"]
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert props["spark.foo"] == "bar"


def test_iam_policy_grants_the_prefixes_and_nothing_else():
    policy = emr.iam_policy(profile(entry_point="s3://fruit-code/job.py"))
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadInput"] == {"Sid": "ReadInput", "Effect": "Allow", "Action": ["s3:GetObject"],
                                   "Resource": ["arn:aws:s3:::fruit-data/fruits-360/*"]}
    assert by_sid["ReadInputList"]["Condition"] == {"StringLike": {"s3:prefix": ["fruits-360", "fruits-360/*"]}}
    assert by_sid["WriteOutput"]["Resource"] == ["arn:aws:s3:::fruit-out/run1/*"]
    assert "s3:PutObject" in by_sid["WriteOutput"]["Action"]
    assert by_sid["WriteLogs"]["Resource"] == ["arn:aws:s3:::fruit-logs/emr/*"]
    assert by_sid["ReadEntryPoint"]["Resource"] == ["arn:aws:s3:::fruit-code/job.py"]
    every_action = {a for s in policy["Statement"] for a in s["Action"]}
    assert every_action <= {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
                            "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
    assert all("*" != r for s in policy["Statement"] for r in s["Resource"])


def test_trust_policy_matches_what_the_aws_cli_writes():
    policy = emr.trust_policy(profile(oidc_provider="https://oidc.eks.eu-west-1.amazonaws.com/id/ABC123",
                                      namespace="fruitlens"))
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {
        "Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC123"}
    assert statement["Condition"]["StringLike"] == {
        "oidc.eks.eu-west-1.amazonaws.com/id/ABC123:sub":
            f"system:serviceaccount:fruitlens:emr-containers-sa-*-*-123456789012-{emr.base36('fruitlens-job')}"}
    assert emr.base36("a") == "2p"  # 0x61 = 97 = 2*36 + 25


def test_iam_commands_print_json(capsys, tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"execution_role_arn: {ROLE}\ninput: s3://d/in\noutput: s3://d/out\noidc_provider: oidc.x/id/1\n")
    assert main(["emr", "iam-policy", "--profile", str(prof)]) == 0
    assert json.loads(capsys.readouterr().out)["Version"] == "2012-10-17"
    assert main(["emr", "trust-policy", "--profile", str(prof), "--namespace", "ns1"]) == 0
    assert ":ns1:emr-containers-sa-" in capsys.readouterr().out
