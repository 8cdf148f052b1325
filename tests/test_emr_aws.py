"""`fruitlens emr` against moto's emr-containers (mock_aws) and botocore's Stubber.

What moto checks: the virtual cluster exists, the release label looks like emr-X.Y.0-latest|date, job
run ids; it keeps jobs RUNNING until cancelled. What it does not: clientToken (every start_job_run makes
a new job), roles, images, retry policies, field limits. So the idempotence of a repeated submit is
shown twice: fruitlens sends the same token (the real API's guarantee) and finds the unfinished job
run carrying it before starting another (which is what makes moto return the same job).
"""
from __future__ import annotations

import copy
import datetime as dt
import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from fruitlens import emr
from fruitlens.cli import main
from fruitlens.emr_config import load_profile

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:0.1.0"
JOB = "0000000abcdefghijkl"
VC = "abcdefghij0123456789klmno"
SUBMIT = ["emr", "submit", "s3://fruit-data/fruits-360", "s3://fruit-out/run1", "--region", REGION,
          "--execution-role-arn", ROLE, "--image", IMAGE, "--log-uri", "s3://fruit-logs/emr", "--pca-k", "50"]


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EMR_CONTAINERS", "AWS_PROFILE", "FRUITLENS_EMR_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def moto_emr(aws_env, monkeypatch):
    """A mocked account with one RUNNING virtual cluster named 'fruitlens'; yields (id, calls made)."""
    calls: list[tuple[str, dict]] = []
    real_client = emr.client

    def recording_client(region=None):
        client = real_client(region)
        client.meta.events.register("provide-client-params.emr-containers.*",
                                    lambda params, model, **_: calls.append((model.name, copy.deepcopy(params))))
        return client

    with mock_aws():
        setup = boto3.client("emr-containers", region_name=REGION)
        for name, namespace in (("fruitlens", "fruitlens"), ("other", "other")):
            vc = setup.create_virtual_cluster(name=name, containerProvider={
                "id": "eks-fruit", "type": "EKS", "info": {"eksInfo": {"namespace": namespace}}})
            if name == "fruitlens":
                vc_id = vc["id"]
        monkeypatch.setattr(emr, "client", recording_client)
        yield vc_id, calls


def named(calls, operation):
    return [params for name, params in calls if name == operation]


def test_submit_sends_exactly_the_built_request(moto_emr, capsys):
    vc, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-name", "fruitlens"]) == 0
    job_id = capsys.readouterr().out.strip()

    expected = emr.build_request(
        load_profile({"region": REGION, "execution_role_arn": ROLE, "image": IMAGE, "log_uri": "s3://fruit-logs/emr"},
                     env={}),
        virtual_cluster_id=vc, input_uri="s3://fruit-data/fruits-360", output_uri="s3://fruit-out/run1",
        pipeline_args=["--pca-k", "50"])
    assert named(calls, "ListVirtualClusters") == [{"states": ["RUNNING"]}]
    assert named(calls, "StartJobRun") == [expected]
    sent = expected["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert sent["spark.kubernetes.container.image"] == IMAGE

    run = boto3.client("emr-containers", region_name=REGION).describe_job_run(virtualClusterId=vc, id=job_id)["jobRun"]
    assert run["state"] == "RUNNING" and run["releaseLabel"] == "emr-7.5.0-latest"
    assert run["jobDriver"] == expected["jobDriver"]
    assert emr.log_uri_of(run) == "s3://fruit-logs/emr"


def test_moto_ignores_the_client_token():
    """Documents the fake, not fruitlens: the real API returns the first job run for a repeated token."""
    with mock_aws():
        client = boto3.client("emr-containers", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        vc = client.create_virtual_cluster(name="v", containerProvider={
            "id": "c", "type": "EKS", "info": {"eksInfo": {"namespace": "n"}}})["id"]
        kwargs = dict(virtualClusterId=vc, clientToken="same", name="x", releaseLabel="emr-7.5.0-latest",
                      executionRoleArn=ROLE, jobDriver={"sparkSubmitJobDriver": {"entryPoint": "local:///x.py"}})
        assert client.start_job_run(**kwargs)["id"] != client.start_job_run(**kwargs)["id"]


def test_resubmitting_the_same_job_returns_the_same_job_run(moto_emr, capsys):
    vc, calls = moto_emr
    args = [*SUBMIT, "--virtual-cluster-id", vc]
    assert main(args) == 0
    first = capsys.readouterr().out.strip()
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.strip() == first
    assert "already job run" in out.err
    starts = named(calls, "StartJobRun")
    assert len(starts) == 1
    tokens = {p["clientToken"] for p in starts}
    assert len(tokens) == 1 and len(tokens.pop()) == 64

    assert main([*args, "--run-key", "2"]) == 0  # a deliberate re-run is a new token, a new job run
    assert capsys.readouterr().out.strip() != first
    assert len({p["clientToken"] for p in named(calls, "StartJobRun")}) == 2


def test_unknown_virtual_cluster_is_one_clear_line(moto_emr, capsys):
    _, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-id", "doesnotexist0000"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "StartJobRun virtual cluster doesnotexist0000" in err
    assert "ResourceNotFoundException" in err and "fruitlens emr clusters" in err


def test_unknown_cluster_name_lists_the_running_ones(moto_emr, capsys):
    _, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-name", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no RUNNING virtual cluster named 'nope'" in err and "running: fruitlens, other" in err
    assert not named(calls, "StartJobRun")


@pytest.mark.parametrize("extra, message", [
    (["--execution-role-arn", "arn:aws:iam::123456789012:user/bob"], "execution_role_arn must be an IAM role ARN"),
    (["--name", "n" * 65], "name: 65 characters, the API allows at most 64"),
    (["--spark-default", "spark.x=" + "v" * 1025], "1025 characters, the API allows at most 1024"),
    (["--release-label", "7.5"], "release_label must look like"),
])
def test_bad_requests_fail_before_any_call(moto_emr, capsys, extra, message):
    vc, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-id", vc, *extra]) == 2
    assert message in capsys.readouterr().err
    assert calls == []


def test_status_list_cancel_and_wait_on_a_cancelled_job(moto_emr, capsys):
    vc, _ = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-id", vc]) == 0
    job_id = capsys.readouterr().out.strip()
    base = ["--virtual-cluster-id", vc, "--region", REGION]

    assert main(["emr", "status", job_id, *base]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "RUNNING"
    assert main(["emr", "list", *base]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["emr", "cancel", job_id, *base]) == 0
    capsys.readouterr()
    assert main(["emr", "wait", job_id, *base, "--poll", "0"]) == 3
    out = capsys.readouterr()
    assert json.loads(out.out)["state"] == "CANCELLED"
    assert f"job run {job_id} CANCELLED" in out.err and "JobRun CANCELLED successfully" in out.err
    assert main(["emr", "clusters", "--region", REGION]) == 0
    assert "fruitlens" in capsys.readouterr().out


# --- Stubber: the states moto cannot produce -------------------------------------------------------

def job_run(state: str, **extra) -> dict:
    return {"jobRun": {"id": JOB, "name": "fruitlens", "virtualClusterId": VC, "state": state,
                       "createdAt": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), **extra}}


@pytest.fixture
def stubbed(aws_env, monkeypatch):
    client = boto3.client("emr-containers", region_name=REGION)
    monkeypatch.setattr(emr, "client", lambda region=None: client)
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def add_states(stub, *states, **last):
    for i, state in enumerate(states):
        extra = last if i == len(states) - 1 else {}
        stub.add_response("describe_job_run", job_run(state, **extra), {"virtualClusterId": VC, "id": JOB})


def test_wait_follows_the_states_to_success(stubbed, capsys):
    add_states(stubbed, "PENDING", "SUBMITTED", "SUBMITTED", "RUNNING", "RUNNING", "COMPLETED")
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--poll", "0", "--max-poll", "0"]) == 0
    out = capsys.readouterr()
    changes = [line.split(": ", 1)[1] for line in out.err.splitlines()]
    assert changes == ["submitted -> PENDING", "PENDING -> SUBMITTED", "SUBMITTED -> RUNNING", "RUNNING -> COMPLETED"]
    assert json.loads(out.out)["state"] == "COMPLETED"


def test_wait_exits_1_with_the_failure_reason_and_details(stubbed, capsys):
    add_states(stubbed, "RUNNING", "FAILED", failureReason="USER_ERROR",
               stateDetails="Jobs failed: driver exited with code 1")
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--poll", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"fruitlens: error: job run {JOB} FAILED: USER_ERROR: Jobs failed: driver exited with code 1; "
                   f"driver logs: `fruitlens emr logs {JOB}`")


def test_wait_backs_off_and_resets_on_a_change(stubbed):
    add_states(stubbed, "SUBMITTED", "SUBMITTED", "SUBMITTED", "SUBMITTED", "RUNNING", "RUNNING", "COMPLETED")
    slept: list[float] = []
    run = emr.wait(emr.client(), VC, JOB, poll=2, max_poll=4, backoff=1.5, sleep=slept.append, clock=lambda: 0.0)
    assert run["state"] == "COMPLETED"
    assert slept == [2, 3, 4, 4, 2, 3]


def test_wait_times_out(stubbed, capsys):
    clock = iter([0.0, 0.0, 20.0])
    add_states(stubbed, "RUNNING", "RUNNING")
    with pytest.raises(emr.WaitTimeout, match="still RUNNING after 10s"):
        emr.wait(emr.client(), VC, JOB, poll=5, timeout=10, sleep=lambda s: None, clock=lambda: next(clock))


@pytest.mark.parametrize("code, message, expect", [
    ("AccessDeniedException", "User is not authorized to perform: iam:PassRole", "iam:PassRole on the execution role"),
    ("ValidationException", "Role arn:aws:iam::123456789012:role/fruitlens-job is not assumable: check trust",
     "IRSA: `fruitlens emr trust-policy`"),
    ("ValidationException", "Virtual cluster abc is not in a valid state", "is RUNNING (`fruitlens emr clusters`)"),
])
def test_aws_errors_come_back_as_one_actionable_line(stubbed, capsys, code, message, expect):
    stubbed.add_response("list_job_runs", {"jobRuns": []})
    stubbed.add_client_error("start_job_run", service_error_code=code, service_message=message, http_status_code=400)
    assert main([*SUBMIT, "--virtual-cluster-id", VC]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"fruitlens: error: StartJobRun virtual cluster {VC} role {ROLE}: {code}: {message}")
    assert expect in err
