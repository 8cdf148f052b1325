"""fruitlens.deploy.k8s and `fruitlens k8s ...` against tests/fakes/fake_k8s.py — NOT a cluster.

The fake is a Python http.server on 127.0.0.1 speaking enough of the Kubernetes API for the kubernetes
Python client (list/get/delete jobs and pods, pod logs with follow). Pod and Job statuses are set by the
tests as a cluster would report them; helm is either a recording stand-in script or, for the values
round-trip, the real binary rendering offline.
"""
from __future__ import annotations

import io
import json
import stat
import sys

import pytest
import yaml
from fakes.fake_k8s import CHART, FakeKubeServer, job, one, pod, render

from fruitlens.cli import build_parser, main
from fruitlens.cli_options import FORWARDED
from fruitlens.deploy.k8s import (
    PIPELINE_VALUES,
    Helm,
    JobClient,
    JobFailed,
    K8sError,
    api_client,
    chart_values,
    split_image,
)
from fruitlens.deploy.k8s.cli import submit_values


@pytest.fixture
def kube():
    with FakeKubeServer() as state:
        yield state


@pytest.fixture
def jobs(kube):
    return JobClient(api_client(host=kube.url), "default", sleep=lambda s: None)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


# -- values (pure) --------------------------------------------------------------------------------------

def test_every_pipeline_flag_reaches_the_chart():
    # a flag missing here would otherwise be forwarded through pipeline.extraArgs: both are fine, none is lost
    ns = build_parser().parse_args(["k8s", "submit", "--partitions", "7", "--limit", "9", "--weights", "w.h5",
                                    "--arrow-batch-size", "64", "--pca-standardize", "--engine", "onnx"])
    values = submit_values(ns)
    assert values["pipeline"] == {"partitions": 7, "limit": 9, "weights": "w.h5", "commitSize": 64,
                                  "pcaStandardize": True, "engine": "onnx"}
    assert set(FORWARDED) - {"spark_conf"} <= set(PIPELINE_VALUES)  # spark_conf: the chart's spark.conf


def test_submit_flags_become_chart_values():
    ns = build_parser().parse_args([
        "k8s", "submit", "s3a://b/in", "s3a://b/out", "--image", "localhost:5000/fruitlens:dev", "--executors", "3",
        "--executor-memory", "3g", "--s3-endpoint", "http://s3:8333", "--s3-secret", "creds", "--pca-variance",
        "0.9", "--batch-size", "16", "--overwrite", "--conf", "spark.sql.shuffle.partitions=4", "--extract"])
    assert submit_values(ns) == {
        "job": {"command": "extract", "input": "s3a://b/in", "output": "s3a://b/out"},
        "image": {"repository": "localhost:5000/fruitlens", "tag": "dev"},
        "executor": {"instances": 3, "memory": "3g"},
        "s3": {"endpoint": "http://s3:8333", "credentials": {"existingSecret": "creds"}},
        "pipeline": {"pcaVariance": 0.9, "batchSize": 16, "overwrite": True},
        "spark": {"conf": {"spark.sql.shuffle.partitions": "4"}},
    }


def test_submit_refuses_options_the_cluster_cannot_use(capsys):
    assert main(["k8s", "submit", "--config", "local.yaml", "--server", "http://127.0.0.1:9"]) == 2
    assert "--config is a local file" in capsys.readouterr().err
    assert main(["k8s", "submit", "--master", "local[2]", "--server", "http://127.0.0.1:9"]) == 2


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("image, expected", [
    ("fruitlens", ("fruitlens", None, None)),
    ("fruitlens:1.0", ("fruitlens", "1.0", None)),
    ("localhost:5000/fruitlens", ("localhost:5000/fruitlens", None, None)),
    ("localhost:5000/ml/fruitlens:dev", ("localhost:5000/ml/fruitlens", "dev", None)),
    (f"fruitlens@{DIGEST}", ("fruitlens", None, DIGEST)),
    (f"localhost:5000/fruitlens:oss@{DIGEST}", ("localhost:5000/fruitlens", "oss", DIGEST)),
])
def test_split_image(image, expected):
    assert split_image(image) == expected


def test_split_image_refuses_a_malformed_digest():
    with pytest.raises(K8sError, match="not an image digest"):
        split_image("fruitlens@sha256:abc")


def test_submit_values_render_with_the_real_chart():
    values = chart_values(input="s3a://b/in", output="s3a://b/out", image="reg/fl:2", executors=3,
                          pipeline={"pca_variance": 0.8, "batch_size": 8}, spark_conf={"spark.x": "1"},
                          s3_secret="creds")
    docs, _ = render(values)
    args = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "spark.x=1" in args and "spark.executor.instances=3" in args
    assert args[args.index("--pca-variance") + 1] == "0.8"


# -- status ---------------------------------------------------------------------------------------------

def test_status_of_a_running_job_lists_driver_and_executors(kube, jobs):
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.put("pods", pod("demo-fruitlens-exec-2", "demo", "executor", "Pending", container="executor"))
    kube.put("pods", pod("demo-fruitlens-exec-1", "demo", "executor", "Running", container="executor"))
    kube.put("pods", pod("other-exec-1", "other", "executor", "Running", container="executor"))
    status = jobs.status("demo")
    assert (status.state, status.job, status.exit_code) == ("running", "demo-fruitlens", 0)
    assert status.driver.name == "demo-fruitlens-abc" and status.driver.detail == "running"
    assert [(e.name, e.phase) for e in status.executors] == [("demo-fruitlens-exec-1", "Running"),
                                                            ("demo-fruitlens-exec-2", "Pending")]
    text = "\n".join(status.lines())
    assert "job/demo-fruitlens  running" in text and "executors: 2" in text


def test_status_of_a_succeeded_job_exits_zero(kube, jobs):
    kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded", terminated=(0, "Completed", "")))
    status = jobs.status("demo")
    assert (status.state, status.exit_code) == ("succeeded", 0)


def test_failed_job_reports_the_driver_exit_code_and_termination_message(kube, jobs):
    kube.put("jobs", job("demo", failed=1, condition=("Failed", "BackoffLimitExceeded", "Job has reached the "
                                                      "specified backoff limit")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed",
                         terminated=(2, "Error", "fruitlens: error: INPUT s3a://b/in does not exist\n")))
    status = jobs.status("demo")
    assert (status.state, status.exit_code) == ("failed", 2)
    assert status.reason.startswith("fruitlens: error: INPUT s3a://b/in does not exist")
    assert "BackoffLimitExceeded" in status.reason


def test_oom_killed_driver_is_reported_with_its_reason(kube, jobs):
    kube.put("jobs", job("demo", failed=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(137, "OOMKilled", "")))
    status = jobs.status("demo")
    assert status.exit_code == 137
    assert "OOMKilled" in status.reason


def test_evicted_driver_is_reported_from_the_pod_status(kube, jobs):
    kube.put("jobs", job("demo", active=1))
    evicted = pod("demo-fruitlens-abc", "demo", "driver", "Failed", reason="Evicted",
                  message="The node was low on resource: ephemeral-storage.")
    evicted["status"]["containerStatuses"] = []
    kube.put("pods", evicted)
    status = jobs.status("demo")
    assert status.state == "failed" and status.exit_code == 1
    assert status.reason == "Evicted: The node was low on resource: ephemeral-storage."


def test_a_disrupted_driver_is_not_a_failed_job_under_the_failure_policy(kube, jobs):
    """The chart's podFailurePolicy replaces a drained driver without counting it (finding 6 of issue 22)."""
    kube.put("jobs", job("demo", active=0))
    drained = pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(143, "Error", ""))
    drained["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]
    kube.put("pods", drained)
    status = jobs.status("demo")
    assert status.state == "pending" and "the Job replaces it" in status.reason
    kube.put("jobs", job("demo", failed=1, condition=("Failed", "BackoffLimitExceeded", "limit")))
    assert jobs.status("demo").state == "failed"  # the Job's own verdict comes first


def test_status_of_an_unknown_release_is_a_clear_error(jobs):
    with pytest.raises(K8sError, match="no fruitlens job for release 'nope' in namespace default"):
        jobs.status("nope")


def test_unreachable_api_server_is_a_clear_error():
    jobs = JobClient(api_client(host="http://127.0.0.1:9"), "default")
    with pytest.raises(K8sError, match="cannot reach the API server"):
        jobs.status("demo")


# -- follow: wait, stream, result ---------------------------------------------------------------------------

def test_follow_streams_the_driver_log_and_returns_success(kube):
    clock = FakeClock()
    jobs = JobClient(api_client(host=kube.url), "default", sleep=clock.sleep, clock=clock)
    kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded", terminated=(0, "Completed", "")))
    kube.logs[("default", "demo-fruitlens-abc")] = ["starting\n", "stage 1/3 ", "done\n", '{"output": "s3a://b"}\n']
    out = io.StringIO()
    status = jobs.follow("demo", out)
    assert status.state == "succeeded"
    assert out.getvalue() == 'starting\nstage 1/3 done\n{"output": "s3a://b"}\n'
    (req,) = kube.sent("GET", "/log")
    assert req.query["follow"] == ["true"] and req.query["container"] == ["driver"]


def test_follow_raises_job_failed_with_the_driver_exit_code(kube):
    jobs = JobClient(api_client(host=kube.url), "default", sleep=lambda s: None)
    kube.put("jobs", job("demo", failed=1, condition=("Failed", "BackoffLimitExceeded", "")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(3, "Error", "boom")))
    kube.logs[("default", "demo-fruitlens-abc")] = ["Traceback ...\n"]
    with pytest.raises(JobFailed, match="job demo-fruitlens failed: boom") as info:
        jobs.follow("demo", io.StringIO())
    assert info.value.exit_code == 3


def test_follow_waits_for_the_driver_then_for_the_job_condition(kube):
    """The driver goes Pending → Running; after its log ends the Job controller sets Complete a poll later."""
    clock = FakeClock()
    seen: list[str] = []
    driver = pod("demo-fruitlens-abc", "demo", "driver", "Pending")
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", driver)
    kube.logs[("default", "demo-fruitlens-abc")] = ["hello\n"]
    polls = {"n": 0}

    def sleep(seconds):
        clock.sleep(seconds)
        polls["n"] += 1
        if polls["n"] == 2:
            kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
        if polls["n"] == 3:
            kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded", terminated=(0, "Completed", "")))
            kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))

    jobs = JobClient(api_client(host=kube.url), "default", sleep=sleep, clock=clock)
    out = io.StringIO()
    status = jobs.follow("demo", out, progress=seen.append)
    assert status.state == "succeeded" and out.getvalue() == "hello\n"
    assert any("waiting: ContainerCreating" in line for line in seen)


def test_follow_fails_fast_on_a_driver_that_cannot_start(kube, jobs):
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Pending",
                         waiting=("CreateContainerConfigError", 'secret "s3-creds" not found')))
    with pytest.raises(JobFailed, match='cannot start: CreateContainerConfigError: secret "s3-creds" not found'):
        jobs.follow("demo", io.StringIO())


def test_follow_gives_up_on_an_image_that_cannot_be_pulled_after_a_grace_period(kube):
    clock = FakeClock()
    jobs = JobClient(api_client(host=kube.url), "default", sleep=clock.sleep, clock=clock)
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Pending",
                         waiting=("ImagePullBackOff", 'Back-off pulling image "fruitlens:nope"')))
    with pytest.raises(JobFailed, match="cannot pull its image: ImagePullBackOff"):
        jobs.wait_for_driver("demo", timeout=3600, pull_grace=30, poll=5)
    assert 30 < clock.now <= 40


def test_follow_times_out_when_the_driver_never_starts(kube):
    clock = FakeClock()
    jobs = JobClient(api_client(host=kube.url), "default", sleep=clock.sleep, clock=clock)
    kube.put("jobs", job("demo", active=1))
    with pytest.raises(K8sError, match="did not start within 60s"):
        jobs.wait_for_driver("demo", timeout=60, poll=10)


# -- delete ---------------------------------------------------------------------------------------------

def test_delete_removes_the_job_and_leftover_pods_of_the_release_only(kube, jobs):
    kube.put("jobs", job("demo", failed=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(1, "Error", "")))
    kube.put("pods", pod("demo-fruitlens-exec-1", "demo", "executor", "Running", container="executor"))
    kube.put("pods", pod("other-exec-1", "other", "executor", "Running", container="executor"))
    gone = jobs.delete("demo")
    assert gone == ["job/demo-fruitlens", "pod/demo-fruitlens-abc", "pod/demo-fruitlens-exec-1"]
    assert [o["metadata"]["name"] for o in kube.of("pods")] == ["other-exec-1"]
    (req,) = kube.sent("DELETE", "/jobs/")
    assert req.body["propagationPolicy"] == "Background"


# -- the command line ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_helm(tmp_path, monkeypatch):
    """A stand-in helm that records its arguments and the values file it was given."""
    log = tmp_path / "helm-calls.jsonl"
    script = tmp_path / "helm"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
values = None
if "--values" in args:
    values = open(args[args.index("--values") + 1]).read()
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps({{"args": args, "values": values}}) + "\\n")
if args[0] == "uninstall" and "missing" in args:
    sys.stderr.write("Error: uninstall: Release not loaded: missing: release: not found\\n")
    sys.exit(1)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("HELM", str(script))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return calls


def test_cli_submit_installs_the_chart_with_values_then_follows_to_success(kube, fake_helm, capsys):
    # The "cluster" already shows the finished job once helm has run (the fake has no controller).
    def after_install():
        kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))
        kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded", terminated=(0, "Completed", "")))
        kube.logs[("default", "demo-fruitlens-abc")] = ['{"output": "s3a://b/out"}\n']
    original = Helm.upgrade_install

    def upgrade_install(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        after_install()
        return result
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Helm, "upgrade_install", upgrade_install)
        code = main(["k8s", "submit", "s3a://b/in", "s3a://b/out", "--release", "demo", "--server", kube.url,
                     "--image", "fruitlens:dev", "--executors", "2", "--pca-k", "10", "--poll", "0"])
    assert code == 0
    out = capsys.readouterr()
    assert '{"output": "s3a://b/out"}' in out.out
    assert "job/demo-fruitlens  succeeded" in out.err
    (call,) = fake_helm()
    args = call["args"]
    assert args[:4] == ["upgrade", "--install", "demo", str(CHART)]
    assert args[args.index("--namespace") + 1] == "default"
    values = yaml.safe_load(call["values"])
    assert values["image"] == {"repository": "fruitlens", "tag": "dev"}
    assert values["pipeline"] == {"pcaK": 10}
    assert values["executor"] == {"instances": 2}


def test_cli_submit_refuses_to_replace_a_running_job(kube, fake_helm, capsys):
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    assert main(["k8s", "submit", "--release", "demo", "--server", kube.url]) == 1
    assert "already has a running job" in capsys.readouterr().err
    assert fake_helm() == []


def test_cli_submit_replace_uninstalls_a_finished_release_first(kube, fake_helm, capsys):
    kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))
    assert main(["k8s", "submit", "--release", "demo", "--server", kube.url, "--no-follow"]) == 1
    assert "add --replace" in capsys.readouterr().err
    assert main(["k8s", "submit", "--release", "demo", "--server", kube.url, "--no-follow", "--replace"]) == 0
    assert [c["args"][0] for c in fake_helm()] == ["uninstall", "upgrade"]
    assert kube.of("jobs") == []


def test_cli_status_prints_json(kube, capsys):
    kube.put("jobs", job("demo", failed=1, condition=("Failed", "DeadlineExceeded", "too long")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(143, "Error", "")))
    assert main(["k8s", "status", "demo", "--server", kube.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "failed" and data["exit_code"] == 143
    assert "DeadlineExceeded: too long" in data["reason"]


def test_cli_logs_exits_with_the_jobs_result(kube, capsys):
    kube.put("jobs", job("demo", failed=1, condition=("Failed", "BackoffLimitExceeded", "")))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed",
                         terminated=(2, "Error", "fruitlens: error: OUTPUT exists; add --overwrite")))
    kube.logs[("default", "demo-fruitlens-abc")] = ["spark says hi\n"]
    assert main(["k8s", "logs", "demo", "--server", kube.url, "--poll", "0"]) == 2
    out = capsys.readouterr()
    assert out.out == "spark says hi\n"
    err = out.err.strip().splitlines()
    assert err[-1].startswith("fruitlens: error: job demo-fruitlens failed: fruitlens: error: OUTPUT exists")


def test_cli_logs_no_follow_prints_the_log_so_far(kube, capsys):
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.logs[("default", "demo-fruitlens-abc")] = ["line 1\n", "line 2\n"]
    assert main(["k8s", "logs", "demo", "--server", kube.url, "--no-follow"]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"
    assert kube.sent("GET", "/log")[0].query["follow"] == ["false"]


def test_cli_delete_uninstalls_and_cleans_up(kube, fake_helm, capsys):
    kube.put("jobs", job("demo", succeeded=1))
    kube.put("pods", pod("demo-fruitlens-exec-1", "demo", "executor", "Running", container="executor"))
    assert main(["k8s", "delete", "demo", "--server", kube.url, "-n", "default"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"release": "demo", "uninstalled": True,
                      "deleted": ["job/demo-fruitlens", "pod/demo-fruitlens-exec-1"]}
    assert fake_helm()[0]["args"][:2] == ["uninstall", "demo"]


def test_cli_delete_of_nothing_is_an_error(kube, fake_helm, capsys):
    assert main(["k8s", "delete", "missing", "--server", kube.url]) == 1
    assert "nothing to delete" in capsys.readouterr().err


def test_missing_helm_is_a_clear_error(kube, monkeypatch, capsys):
    monkeypatch.setenv("HELM", "/nonexistent/helm")
    assert main(["k8s", "delete", "demo", "--server", kube.url]) == 1
    assert "helm not found at /nonexistent/helm" in capsys.readouterr().err


def test_cli_submit_with_the_spark_operator_installs_and_does_not_follow_a_job(kube, fake_helm, capsys):
    assert main(["k8s", "submit", "--release", "demo", "--server", kube.url,
                 "--set", "sparkOperator.enabled=true"]) == 0
    (call,) = fake_helm()
    assert call["args"][call["args"].index("--set") + 1] == "sparkOperator.enabled=true"
    assert "as a SparkApplication" in capsys.readouterr().err
    assert kube.requests == []  # nothing to follow through the API


def test_a_log_tail_termination_message_gives_the_error_line_not_the_shutdown_noise(kube, jobs):
    """Issue 9, finding 10: with FallbackToLogsOnError the message is the log's tail; its last lines are
    Spark's shutdown hooks, the error is above them."""
    tail = ("25/11/25 07:00:01 INFO SparkContext: Successfully stopped SparkContext\n"
            "fruitlens: error: INPUT /data/in/nope does not exist: check the path\n"
            "25/11/25 07:00:02 INFO ShutdownHookManager: Shutdown hook called\n"
            "25/11/25 07:00:02 INFO ShutdownHookManager: Deleting directory /tmp/spark-1234\n")
    kube.put("jobs", job("demo", failed=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Failed", terminated=(2, "Error", tail)))
    assert jobs.status("demo").reason == "fruitlens: error: INPUT /data/in/nope does not exist: check the path"


def test_error_line_falls_back_to_exceptions_then_the_last_line():
    from fruitlens.deploy.k8s import error_line

    assert error_line("a\njava.lang.OutOfMemoryError: Java heap space\nShutdown hook called\n") == \
        "java.lang.OutOfMemoryError: Java heap space"
    assert error_line("one\ntwo\n") == "two"
    assert error_line("") == ""


def test_unschedulable_executors_show_why(kube, jobs):
    """Issue 9, finding 10: a pod too big for the node stays Pending; status says why, not just "Pending"."""
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    pending = pod("demo-fruitlens-exec-1", "demo", "executor", "Pending", container="executor")
    pending["status"] = {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available."}]}
    kube.put("pods", pending)
    (executor,) = jobs.status("demo").executors
    assert executor.reason == ("Unschedulable: 0/1 nodes are available: 1 Insufficient memory. "
                               "preemption: 0/1 nodes are available.")
    assert "Unschedulable" in executor.line() and "Insufficient memory" in executor.line()


def test_upgrading_a_release_with_a_job_says_what_to_do():
    """Issue 9, finding 10: a second `helm upgrade --install` with new values hits the Job's immutable template."""
    import subprocess as sp

    from fruitlens.deploy.k8s import Helm, K8sError

    def run(cmd, **kwargs):
        return sp.CompletedProcess(cmd, 1, "", 'Error: UPGRADE FAILED: cannot patch "demo-fruitlens" with kind Job: '
                                   'Job.batch "demo-fruitlens" is invalid: spec.template: Invalid value: ...: '
                                   "field is immutable\n")
    with pytest.raises(K8sError, match=r"field is immutable; release demo already has a Job.*k8s delete demo"):
        Helm(binary="helm", run=run).upgrade_install("demo", "chart", {})


# -- k8s ui: the driver found through the fake API server; kubectl is a recording stand-in -------------

@pytest.fixture
def recording_kubectl(tmp_path, monkeypatch):
    """A stand-in for kubectl (NOT the real one): records its arguments, prints what port-forward prints."""
    record = tmp_path / "kubectl-args"
    script = tmp_path / "kubectl"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\n"
                      "echo 'Forwarding from 127.0.0.1:4041 -> 4040'\n")
    script.chmod(0o755)
    monkeypatch.setenv("KUBECTL", str(script))
    return record


def test_ui_forwards_the_running_driver_pods_port_4040(kube, recording_kubectl, capsys):
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.put("pods", pod("demo-fruitlens-exec-1", "demo", "executor", "Running", container="executor"))
    code = main(["k8s", "ui", "demo", "--server", kube.url, "--port", "4041", "--context", "kind-fruitlens"])
    assert code == 0
    args = recording_kubectl.read_text().split()
    assert args == ["port-forward", "-n", "default", "pod/demo-fruitlens-abc", "4041:4040",
                    "--address", "127.0.0.1", "--context", "kind-fruitlens"]
    assert "http://127.0.0.1:4041" in capsys.readouterr().err


def test_ui_of_a_finished_driver_says_the_ui_is_gone_and_where_the_log_is(kube, recording_kubectl, capsys):
    kube.put("jobs", job("demo", succeeded=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded"))
    assert main(["k8s", "ui", "demo", "--server", kube.url]) != 0
    err = capsys.readouterr().err
    assert "is Succeeded" in err and "fruitlens k8s logs demo" in err
    assert not recording_kubectl.exists()


def test_ui_of_an_unknown_release_names_it(kube, recording_kubectl, capsys):
    assert main(["k8s", "ui", "nope", "--server", kube.url]) != 0
    assert "release nope has no driver pod" in capsys.readouterr().err


# -- issue 22, finding 7: no endless wait on executors that can never be scheduled --------------------------

def _unschedulable(name: str) -> dict:
    p = pod(name, "demo", "executor", "Pending", container="executor")
    p["status"]["containerStatuses"] = []
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/3 nodes are available: 3 Insufficient memory."}]
    return p


def test_follow_fails_when_no_executor_can_ever_be_scheduled(kube):
    """Finding 7: executors Pending Unschedulable hung the job (and `k8s submit`) forever."""
    clock = FakeClock()
    jobs = JobClient(api_client(host=kube.url), "default", sleep=clock.sleep, clock=clock)
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.put("pods", _unschedulable("demo-fruitlens-exec-1"))
    kube.put("pods", _unschedulable("demo-fruitlens-exec-2"))
    kube.logs[("default", "demo-fruitlens-abc")] = ["waiting for executors\n"]
    with pytest.raises(JobFailed, match=r"no executor could be scheduled for 600s \(demo-fruitlens-exec-1: "
                                        r"Unschedulable: 0/3 nodes are available: 3 Insufficient memory\.\)"):
        jobs.follow("demo", io.StringIO(), poll=10, executor_timeout=600)
    assert 600 <= clock.now <= 620
    text = "\n".join(jobs.status("demo").lines())
    assert "no executor can be scheduled" in text


def test_follow_keeps_waiting_while_some_executor_runs(kube):
    clock = FakeClock()
    polls = {"n": 0}

    def sleep(seconds):
        clock.sleep(seconds)
        polls["n"] += 1
        if polls["n"] == 100:  # long after executor_timeout: one executor runs, the other waits for capacity
            kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Succeeded", terminated=(0, "Completed", "")))
            kube.put("jobs", job("demo", succeeded=1, condition=("Complete", "", "")))

    jobs = JobClient(api_client(host=kube.url), "default", sleep=sleep, clock=clock)
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.put("pods", pod("demo-fruitlens-exec-1", "demo", "executor", "Running", container="executor"))
    kube.put("pods", _unschedulable("demo-fruitlens-exec-2"))
    kube.logs[("default", "demo-fruitlens-abc")] = ["done\n"]
    assert jobs.follow("demo", io.StringIO(), poll=10, executor_timeout=60).state == "succeeded"


def test_follow_gives_up_at_its_timeout_saying_the_job_still_runs(kube):
    clock = FakeClock()
    jobs = JobClient(api_client(host=kube.url), "default", sleep=clock.sleep, clock=clock)
    kube.put("jobs", job("demo", active=1))
    kube.put("pods", pod("demo-fruitlens-abc", "demo", "driver", "Running"))
    kube.logs[("default", "demo-fruitlens-abc")] = ["working\n"]
    with pytest.raises(K8sError, match=r"still running after 100s \(--timeout\); it keeps running"):
        jobs.follow("demo", io.StringIO(), timeout=100, poll=10)


def test_cli_submit_takes_values_files_before_its_own_flags(kube, fake_helm, capsys):
    """The production recipe: `k8s submit -f k8s/values-production.yaml --image repo@sha256:...`."""
    prod = str(CHART.parents[1] / "k8s" / "values-production.yaml")
    digest = "sha256:" + "cd" * 32
    assert main(["k8s", "submit", "s3a://b/in", "s3a://b/out", "--release", "demo", "--server", kube.url,
                 "-f", prod, "--image", f"reg.example.com/fruitlens@{digest}", "--no-follow"]) == 0
    (call,) = fake_helm()
    args = call["args"]
    files = [args[i + 1] for i, a in enumerate(args) if a == "--values"]
    assert files[0] == prod and len(files) == 2  # the flags' own values file last: it wins
    assert main(["k8s", "submit", "--release", "demo2", "--server", kube.url, "-f", "/no/such.yaml",
                 "--no-follow"]) == 1
    assert "--values /no/such.yaml: no such file" in capsys.readouterr().err
