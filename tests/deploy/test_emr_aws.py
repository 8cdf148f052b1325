"""`fruitlens emr` against moto's emr-containers (mock_aws) and botocore's Stubber.

What moto checks: the virtual cluster exists, the release label looks like emr-X.Y.0-latest|date, job
run ids; it keeps jobs RUNNING until cancelled, and keeps their tags. What it does not: clientToken
(every start_job_run makes a new job), roles, images, retry policies, field limits. EMR's own answer to
a repeated clientToken (the old job run, even a FAILED one) is played by the Stubber.
"""
from __future__ import annotations

import copy
import datetime as dt
import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from fruitlens.cli import main
from fruitlens.deploy.emr import client as emr
from fruitlens.deploy.emr import errors as emr_errors
from fruitlens.deploy.emr import request as emr_request
from fruitlens.deploy.emr.profile import load_profile

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/fruitlens-job"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:0.1.0"
JOB = "0000000abcdefghijkl"
VC = "abcdefghij0123456789klmno"
# moto knows only release labels of the emr-X.Y.0 form, not emr-spark-8.0.0 (the default): these runs use an
# emr-7.x release, so the image is one built on Spark 3.5.
RELEASE, IMAGE_SPARK = "emr-7.5.0-latest", "3.5.2-amzn-1"
SUBMIT = ["emr", "submit", "s3://fruit-data/fruits-360", "s3://fruit-out/run1", "--region", REGION,
          "--execution-role-arn", ROLE, "--image", IMAGE, "--release-label", RELEASE, "--image-spark", IMAGE_SPARK,
          "--log-uri", "s3://fruit-logs/emr", "--pca-k", "50"]


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


def error_line(err: str) -> str:
    """The one error line (notes about the request come before it on their own lines)."""
    (line,) = [x for x in err.splitlines() if x.startswith("fruitlens: error:")]
    return line


def named(calls, operation):
    return [params for name, params in calls if name == operation]


def test_submit_sends_exactly_the_built_request(moto_emr, capsys):
    vc, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-name", "fruitlens"]) == 0
    job_id = capsys.readouterr().out.strip()

    expected = emr_request.build_request(
        load_profile({"region": REGION, "execution_role_arn": ROLE, "image": IMAGE, "log_uri": "s3://fruit-logs/emr",
                      "release_label": RELEASE, "image_spark": IMAGE_SPARK}, env={}),
        virtual_cluster_id=vc, input_uri="s3://fruit-data/fruits-360", output_uri="s3://fruit-out/run1",
        pipeline_args=["--pca-k", "50"])
    assert named(calls, "ListVirtualClusters") == [{"states": ["RUNNING"]}]
    (sent,) = named(calls, "StartJobRun")
    assert sent.pop("clientToken") != expected.pop("clientToken")  # fresh per invocation
    assert sent == expected
    assert named(calls, "DescribeJobRun") == [{"virtualClusterId": vc, "id": job_id}]  # checked not finished
    sent = expected["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    assert sent["spark.kubernetes.container.image"] == IMAGE

    run = boto3.client("emr-containers", region_name=REGION).describe_job_run(virtualClusterId=vc, id=job_id)["jobRun"]
    assert run["state"] == "RUNNING" and run["releaseLabel"] == RELEASE
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


def test_resubmitting_while_the_same_job_is_active_returns_it(moto_emr, capsys):
    vc, calls = moto_emr
    args = [*SUBMIT, "--virtual-cluster-id", vc]
    assert main(args) == 0
    first = capsys.readouterr().out.strip()
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.strip() == first
    assert f"an identical job run {first} is still RUNNING: nothing new started" in out.err
    assert len(named(calls, "StartJobRun")) == 1

    assert main([*args, "--run-key", "2"]) == 0  # a deliberate second run beside it
    assert capsys.readouterr().out.strip() != first
    assert len(named(calls, "StartJobRun")) == 2


def test_resubmitting_after_the_run_ended_sends_a_new_token_and_starts_again(moto_emr, capsys):
    """Finding 1: after a FAILED/CANCELLED run (IAM fixed, image re-pushed) `make run` must start anew."""
    vc, calls = moto_emr
    args = [*SUBMIT, "--virtual-cluster-id", vc]
    assert main(args) == 0
    first = capsys.readouterr().out.strip()
    assert main(["emr", "cancel", first, "--virtual-cluster-id", vc, "--region", REGION]) == 0
    assert main(args) == 0
    second = capsys.readouterr().out.strip().splitlines()[-1]
    assert second != first
    tokens = [p["clientToken"] for p in named(calls, "StartJobRun")]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    hashes = {p["tags"][emr_request.REQUEST_TAG] for p in named(calls, "StartJobRun")}
    assert len(hashes) == 1  # the same request, deliberately not matched once it has ended


def test_unknown_virtual_cluster_is_one_clear_line(moto_emr, capsys):
    _, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-id", "doesnotexist0000"]) == 1
    err = error_line(capsys.readouterr().err)
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
    (["--release-label", "emr 7.5"], "release_label must match the StartJobRun API pattern"),
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
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    add_states(stubbed, "RUNNING", "RUNNING")
    with pytest.raises(emr_errors.WaitTimeout, match="still RUNNING after 9s"):
        emr.wait(emr.client(), VC, JOB, poll=5, backoff=1, timeout=9, sleep=sleep, clock=lambda: now[0])


@pytest.mark.parametrize("code, message, expect", [
    ("AccessDeniedException", "User is not authorized to perform: emr-containers:StartJobRun",
     "emr-containers:ExecutionRoleArn condition key"),
    ("ValidationException", "Role arn:aws:iam::123456789012:role/fruitlens-job is not assumable: check trust",
     "IRSA: `fruitlens emr trust-policy`"),
    ("ValidationException", "Virtual cluster abc is not in a valid state", "is RUNNING (`fruitlens emr clusters`)"),
])
def test_aws_errors_come_back_as_one_actionable_line(stubbed, capsys, code, message, expect):
    stubbed.add_response("list_job_runs", {"jobRuns": []})
    stubbed.add_client_error("start_job_run", service_error_code=code, service_message=message, http_status_code=400)
    assert main([*SUBMIT, "--virtual-cluster-id", VC]) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f"fruitlens: error: StartJobRun virtual cluster {VC} role {ROLE}: {code}: {message}")
    assert expect in err


def test_a_start_answered_with_an_old_finished_run_is_an_error(stubbed, capsys):
    """Finding 1: EMR answers a clientToken it has seen with that token's job run, however old."""
    stubbed.add_response("list_job_runs", {"jobRuns": []})
    stubbed.add_response("start_job_run", {"id": JOB, "virtualClusterId": VC})
    add_states(stubbed, "FAILED", failureReason="USER_ERROR", stateDetails="exit 1",
               finishedAt=dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone.utc))
    assert main([*SUBMIT, "--virtual-cluster-id", VC, "--client-token", "ci-build-41"]) == 1
    err = capsys.readouterr().err
    assert f"StartJobRun answered with job run {JOB}, which already ended FAILED at 2026-01-01T01:00:00+00:00" in err
    assert "nothing new was started" in err and "ci-build-41" in err


def test_wait_hints_at_kubectl_events_when_submitted_too_long(stubbed, capsys):
    """Finding 13: a run stuck in SUBMITTED (pods unschedulable, image not pullable) gets one hint."""
    add_states(stubbed, "SUBMITTED", "SUBMITTED", "SUBMITTED", "SUBMITTED", "RUNNING", "COMPLETED")
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    hints = []
    run = emr.wait(emr.client(), VC, JOB, poll=120, max_poll=120, backoff=1, stuck_after=300,
                   on_stuck=lambda r, s: hints.append((r["state"], s)), sleep=sleep, clock=lambda: now[0])
    assert run["state"] == "COMPLETED"
    assert hints == [("SUBMITTED", 360.0)]  # once (at the first poll past 300 s), not on every poll


def test_wait_cli_prints_the_stuck_hint_with_the_namespace(stubbed, capsys):
    add_states(stubbed, "SUBMITTED", "SUBMITTED", "COMPLETED")
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--poll", "0", "--max-poll", "0",
                 "--stuck-hint-after", "0", "--namespace", "spark-jobs"]) == 0
    err = capsys.readouterr().err
    assert err.count("kubectl get events -n spark-jobs --sort-by=.lastTimestamp") == 1


def test_timeout_with_cancel_on_timeout_cancels_the_run(stubbed, capsys):
    add_states(stubbed, "RUNNING")
    stubbed.add_response("cancel_job_run", {"id": JOB, "virtualClusterId": VC}, {"virtualClusterId": VC, "id": JOB})
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--poll", "5", "--timeout", "1",
                 "--cancel-on-timeout"]) == 124
    err = capsys.readouterr().err
    assert f"timeout after 1s: cancel requested for job run {JOB}" in err


def test_timeout_without_it_says_the_run_goes_on(stubbed, capsys):
    add_states(stubbed, "RUNNING")
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--poll", "5", "--timeout", "1"]) == 124
    err = capsys.readouterr().err
    assert f"job run {JOB} goes on running (and billing) on EMR: `fruitlens emr cancel {JOB}`" in err


def _patch_sleep(monkeypatch, sleep) -> None:
    """Replace ``time.sleep`` as the emr module sees it, not for every thread (py4j's threads sleep too)."""
    import time as real_time
    import types

    fake = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("_")})
    fake.sleep = sleep
    monkeypatch.setattr(emr, "time", fake)


def _interrupt_on_first_sleep(monkeypatch):
    def sleep(seconds):
        raise KeyboardInterrupt

    _patch_sleep(monkeypatch, sleep)


@pytest.mark.parametrize("tty, answer, cancels", [(True, "y", True), (True, "n", False), (False, None, False)])
def test_ctrl_c_asks_in_a_terminal_and_otherwise_leaves_the_run(stubbed, capsys, monkeypatch, tty, answer, cancels):
    _interrupt_on_first_sleep(monkeypatch)
    monkeypatch.setattr("sys.stdin.isatty", lambda: tty)
    asked = []
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or answer)
    add_states(stubbed, "RUNNING")
    if cancels:
        stubbed.add_response("cancel_job_run", {"id": JOB, "virtualClusterId": VC}, {"virtualClusterId": VC, "id": JOB})
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC]) == 130
    err = capsys.readouterr().err
    assert bool(asked) == tty
    assert (f"interrupted: cancel requested for job run {JOB}" in err) == cancels
    assert (f"interrupted: stopped waiting, but job run {JOB} goes on running" in err) == (not cancels)


def test_ctrl_c_with_cancel_on_timeout_cancels_without_asking(stubbed, capsys, monkeypatch):
    _interrupt_on_first_sleep(monkeypatch)
    monkeypatch.setattr("builtins.input", lambda q: pytest.fail("must not ask"))
    add_states(stubbed, "RUNNING")
    stubbed.add_response("cancel_job_run", {"id": JOB, "virtualClusterId": VC}, {"virtualClusterId": VC, "id": JOB})
    assert main(["emr", "wait", JOB, "--virtual-cluster-id", VC, "--cancel-on-timeout"]) == 130
    assert f"interrupted: cancel requested for job run {JOB}" in capsys.readouterr().err


# --- CloudWatch logs (moto's logs) ------------------------------------------------------------------

def test_emr_logs_reads_cloudwatch_streams_including_a_retried_driver(aws_env, capsys):
    """Findings 13 and 4: CloudWatch is read too; a retry's driver pod `...-driver-<suffix>` is a driver."""
    group, prefix, vc, job, app = "/fruitlens/emr", "fruitlens", VC, JOB, "spark-" + JOB
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) - 60_000  # moto drops events > 14 days old
    with mock_aws():
        logs = boto3.client("logs", region_name=REGION)
        logs.create_log_group(logGroupName=group)
        base = f"{prefix}/{vc}/jobs/{job}/containers"
        streams = {
            f"{base}/{job}-runner-abcde/stdout": ["spark-submit said hello"],
            f"{base}/{app}/{app}-driver/stdout": ["attempt 1 started"],
            f"{base}/{app}/{app}-driver-7f2k9/stdout": ['{"counts": {"images": 4367}}'],
            f"{base}/{app}/fruitlens-1a2b-exec-1/stderr": ["INFO Executor: started"],
            f"{prefix}/{vc}/jobs/0000000otherjob0000/containers/{app}/x-driver/stdout": ["not this job"],
        }
        for i, (name, lines) in enumerate(streams.items()):
            logs.create_log_stream(logGroupName=group, logStreamName=name)
            logs.put_log_events(logGroupName=group, logStreamName=name, logEvents=[
                {"timestamp": now_ms + i * 1000 + k, "message": line} for k, line in enumerate(lines)])
        args = ["emr", "logs", job, "--virtual-cluster-id", vc, "--log-group", group, "--region", REGION]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "attempt 1 started" in out and '"counts": {"images": 4367}' in out
        assert "said hello" not in out and "Executor: started" not in out and "not this job" not in out
        assert main([*args, "--component", "executor"]) == 0
        assert "Executor: started" in capsys.readouterr().out
        assert main(["emr", "logs", "0000000nologs000000", "--virtual-cluster-id", vc, "--log-group", group,
                     "--region", REGION]) == 1
        assert "no driver logs yet under CloudWatch /fruitlens/emr:fruitlens/" in capsys.readouterr().err
        assert main([*args[:-4], "--log-group", "/no/such/group", "--region", REGION]) == 1
        assert "ResourceNotFoundException" in capsys.readouterr().err


@pytest.mark.parametrize("key, expected", [
    ("spark-0000000abcdefghijkl/spark-0000000abcdefghijkl-driver/stdout.gz", "driver"),
    ("spark-0000000abcdefghijkl/spark-0000000abcdefghijkl-driver-x7k2p/stderr.gz", "driver"),
    ("spark-0000000abcdefghijkl/fruitlens-8c1d-exec-12/stderr.gz.1", "executor"),
    ("spark-0000000abcdefghijkl/spark-0000000abcdefghijkl-driver-svc/stdout", "driver"),
    ("spark-0000000abcdefghijkl/some-sidecar/stdout", "other"),
    ("0000000abcdefghijkl-runner-x7k2p/stdout.gz", "job-runner"),
])
def test_log_keys_are_classified_by_pod_name(key, expected):
    from fruitlens.deploy.s3data.staging import classify_log_key

    assert classify_log_key(key)[0] == expected


def test_a_uri_outside_the_grant_is_refused_before_any_call(moto_emr, capsys, tmp_path):
    _, calls = moto_emr
    prof = tmp_path / "p.yaml"
    prof.write_text("input: s3://fruit-data/fruits-360\noutput: s3://fruit-out/runs/latest\n")
    assert main([*SUBMIT, "--virtual-cluster-name", "fruitlens", "--profile", str(prof)]) == 2
    assert "OUTPUT s3://fruit-out/run1 is outside s3://fruit-out/runs/latest" in capsys.readouterr().err
    assert calls == []


def test_a_release_of_another_spark_line_than_the_image_is_refused_before_any_call(moto_emr, capsys):
    """The issue's job: extraction billed on an EMR 7.x release, then a failure. An image built on Spark 3.5
    under emr-spark-8.0.0 (Spark 4.0) is refused naming both, and emr-6.x at once, with no AWS call."""
    _, calls = moto_emr
    assert main([*SUBMIT, "--virtual-cluster-name", "fruitlens", "--release-label", "emr-spark-8.0.0-latest"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "release emr-spark-8.0.0-latest runs Spark 4.0, but the image " + IMAGE in err
    assert f"was built on Spark {IMAGE_SPARK}" in err and "Submit it with an emr-7.x release" in err
    assert main([*SUBMIT, "--virtual-cluster-name", "fruitlens", "--release-label", "emr-6.15.0-latest"]) == 2
    assert "emr-6.15.0-latest is an EMR 6.x release, whose images are Amazon Linux 2" in capsys.readouterr().err
    assert calls == []


# --- IAM's policy simulator (Stubber) -----------------------------------------------------------------

def test_check_access_asks_for_the_bare_key_the_marker_and_the_listing(aws_env, monkeypatch, capsys):
    """Finding 2 on a real account: SimulatePrincipalPolicy for the job's first S3 calls."""
    from fruitlens.deploy.emr import access as emr_access

    iam = boto3.client("iam", region_name=REGION)
    monkeypatch.setattr(emr_access, "client", lambda region=None: iam)

    def answer(params, decisions):
        return {"EvaluationResults": [
            {"EvalActionName": action, "EvalResourceName": resource, "EvalDecision": decisions.get(resource, "allowed")}
            for action in params["ActionNames"] for resource in params["ResourceArns"]], "IsTruncated": False}

    expected = [*emr_access.access_checks("aws", "s3://fruit-data/fruits-360", False),
                *emr_access.access_checks("aws", "s3://fruit-out/runs/r1", True)]
    assert expected[0]["ResourceArns"] == ["arn:aws:s3:::fruit-data/fruits-360",
                                           "arn:aws:s3:::fruit-data/fruits-360_$folder$",
                                           "arn:aws:s3:::fruit-data/fruits-360/fruitlens-access-check"]
    assert expected[1]["ContextEntries"][0]["ContextKeyValues"] == ["fruits-360/"]
    args = ["emr", "check-access", "s3://fruit-data/fruits-360", "s3://fruit-out/runs/r1",
            "--execution-role-arn", ROLE, "--region", REGION]
    with Stubber(iam) as stub:
        for check in expected:  # a policy granting only fruits-360/*: the bare key is an implicit deny
            stub.add_response("simulate_principal_policy", answer(check, {
                "arn:aws:s3:::fruit-data/fruits-360": "implicitDeny"}), {"PolicySourceArn": ROLE, **check})
        assert main(args) == 1
        out = capsys.readouterr()
        assert "implicitDeny\ts3:GetObject\tarn:aws:s3:::fruit-data/fruits-360\n" in out.out
        assert "may not make 1 of the job's first S3 calls (s3:GetObject arn:aws:s3:::fruit-data/fruits-360)" in out.err
        for check in expected:
            stub.add_response("simulate_principal_policy", answer(check, {}), {"PolicySourceArn": ROLE, **check})
        assert main(args) == 0
        assert "allow the job's first S3 calls" in capsys.readouterr().err
        stub.assert_no_pending_responses()


def test_logs_of_a_run_submitted_without_log_settings_say_what_to_pass(moto_emr, capsys):
    vc, _ = moto_emr
    args = [a for a in SUBMIT if a not in ("--log-uri", "s3://fruit-logs/emr")]
    assert main([*args, "--virtual-cluster-id", vc]) == 0
    job = capsys.readouterr().out.strip()
    assert main(["emr", "logs", job, "--virtual-cluster-id", vc, "--region", REGION]) == 2
    err = error_line(capsys.readouterr().err)
    assert f"job run {job} was submitted without logs and none is given: pass --log-uri or --log-group" in err
    assert main(["emr", "logs", job, "--virtual-cluster-id", vc, "--region", REGION, "--source", "cloudwatch"]) == 2
    assert "submitted without a CloudWatch log group" in capsys.readouterr().err


# --- emr ui: EMR's persistent application UI (botocore Stubber for both APIs) -------------------------

def test_emr_ui_prints_the_persistent_spark_ui_link_once_ready(aws_env, monkeypatch, capsys):
    containers = boto3.client("emr-containers", region_name=REGION)
    api = boto3.client("emr", region_name=REGION)
    arn = f"arn:aws:emr-containers:{REGION}:123456789012:/virtualclusters/{VC}"
    url = "https://p-abc.emrappui-prod.eu-west-1.amazonaws.com/shs/?authToken=x"
    with Stubber(containers) as cs, Stubber(api) as es:
        cs.add_response("describe_virtual_cluster", {"virtualCluster": {"id": VC, "arn": arn}}, {"id": VC})
        cs.add_response("describe_job_run", {"jobRun": {"id": JOB, "virtualClusterId": VC, "state": "COMPLETED"}},
                        {"id": JOB, "virtualClusterId": VC})
        es.add_response("create_persistent_app_ui", {"PersistentAppUIId": "p-abc"},
                        {"TargetResourceArn": arn, "EMRContainersConfig": {"JobRunId": JOB}})
        es.add_response("get_persistent_app_ui_presigned_url", {"PresignedURLReady": False},
                        {"PersistentAppUIId": "p-abc", "PersistentAppUIType": "SHS"})
        es.add_response("get_persistent_app_ui_presigned_url", {"PresignedURLReady": True, "PresignedURL": url},
                        {"PersistentAppUIId": "p-abc", "PersistentAppUIType": "SHS"})
        monkeypatch.setattr(emr, "client", lambda region=None: containers)
        monkeypatch.setattr(emr, "ui_client", lambda region=None: api)
        _patch_sleep(monkeypatch, lambda s: None)
        assert main(["emr", "ui", JOB, "--virtual-cluster-id", VC, "--region", REGION]) == 0
        cs.assert_no_pending_responses()
        es.assert_no_pending_responses()
    assert capsys.readouterr().out.strip() == url


def test_emr_ui_of_an_unknown_job_says_so_before_creating_a_ui(aws_env, monkeypatch, capsys):
    containers = boto3.client("emr-containers", region_name=REGION)
    api = boto3.client("emr", region_name=REGION)
    with Stubber(containers) as cs, Stubber(api):
        arn = f"arn:aws:emr-containers:{REGION}:123456789012:/virtualclusters/{VC}"
        cs.add_response("describe_virtual_cluster", {"virtualCluster": {"id": VC, "arn": arn}}, {"id": VC})
        cs.add_client_error("describe_job_run", "ResourceNotFoundException", "Job run not found")
        monkeypatch.setattr(emr, "client", lambda region=None: containers)
        monkeypatch.setattr(emr, "ui_client", lambda region=None: api)
        assert main(["emr", "ui", JOB, "--virtual-cluster-id", VC, "--region", REGION]) != 0
    err = capsys.readouterr().err
    assert "DescribeJobRun" in err and JOB in err
