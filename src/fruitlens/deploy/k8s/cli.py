"""`fruitlens k8s`: the Helm chart and the kubernetes client behind one command.

Help text (HELP) is plain text with an example per action; this docstring is for readers of the code.
"""
from __future__ import annotations

import argparse
import json
import sys

from fruitlens.cli_options import FORWARDED, add_pipeline_options, pipeline_args
from fruitlens.config import ConfigError
from fruitlens.deploy.k8s import (
    PIPELINE_VALUES,
    Helm,
    JobClient,
    JobStatus,
    K8sError,
    api_client,
    chart_values,
    default_chart,
    find_kubectl,
)

HELP = """\
Run the pipeline on Kubernetes: the Helm chart (helm/fruitlens) installs one release = one job, a
Job whose pod is the Spark driver; the driver starts the executor pods.

actions and examples:
  submit   install the chart with values from the flags, then follow the job
             fruitlens k8s submit s3a://fruits/images s3a://fruits/runs/r1 --executors 2
  status   the Job, the driver pod and the executor pods (why a pod is Pending or failed)
             fruitlens k8s status fruitlens -n fruitlens
  logs     stream the driver's log; with --follow (the default) exit with the job's result
             fruitlens k8s logs fruitlens --no-follow
  ui       forward the running driver's Spark UI (port 4040) to this machine
             fruitlens k8s ui fruitlens --port 4040
  delete   uninstall the release and remove pods left behind
             fruitlens k8s delete fruitlens

The cluster is kubectl's current context unless --context/--kubeconfig say otherwise.
See docs/kubernetes.md.
"""


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("-n", "--namespace", default="default", help="namespace of the release (default: default)")
    g.add_argument("--context", help="kube context (default: the current one)")
    g.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--server", help=argparse.SUPPRESS)  # API server URL without auth (tests, kubectl proxy)


def _add_follow_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the job (default 6h)")
    p.add_argument("--start-timeout", type=float, default=900,
                   help="seconds to wait for the driver to start (default 900)")
    p.add_argument("--executor-timeout", type=float, default=600,
                   help="seconds every executor may stay unschedulable before the job is reported failed (default 600)")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)


def register(subparsers) -> None:
    k8s = subparsers.add_parser("k8s", help="run the job on Kubernetes (Helm chart + kubernetes client)",
                                description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = k8s.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")

    p = sub.add_parser("submit", help="helm upgrade --install the chart, then follow the job")
    p.add_argument("input", nargs="?", metavar="INPUT", help="images URI (default: the chart's job.input)")
    p.add_argument("output", nargs="?", metavar="OUTPUT", help="output URI (default: the chart's job.output)")
    p.add_argument("--release", default="fruitlens", help="Helm release name (default fruitlens)")
    p.add_argument("--extract", dest="job_command", action="store_const", const="extract", default="run",
                   help="features only (`fruitlens extract`)")
    p.add_argument("--chart", default=None, help="chart path or reference (default: helm/fruitlens of this checkout)")
    p.add_argument("--image", help="image as REPOSITORY[:TAG][@sha256:DIGEST] (default: the chart's); a digest "
                   "pins the exact image `make push` printed")
    p.add_argument("--pull-policy", choices=("Always", "IfNotPresent", "Never"),
                   help="default: IfNotPresent for a digest, Always for a tag (a moved tag is pulled again)")
    p.add_argument("--executors", type=int, help="executor pods")
    p.add_argument("--executor-cores", type=int)
    p.add_argument("--executor-memory", help="executor heap, e.g. 2g")
    p.add_argument("--executor-memory-overhead", help="executor off-heap (Python, model), e.g. 2g")
    p.add_argument("--driver-memory", help="driver heap, e.g. 2g")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL for s3a:// (e.g. http://s3.fruitlens-s3.svc:8333)")
    p.add_argument("--s3-secret", help="existing Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    p.add_argument("-f", "--values", dest="values_files", action="append", default=[], metavar="FILE",
                   help="chart values file, e.g. k8s/values-production.yaml (repeatable; the flags win over it)")
    p.add_argument("--set", dest="helm_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any other chart value, passed to helm --set (repeatable)")
    p.add_argument("--replace", action="store_true",
                   help="delete a finished job of the same release first (a Job cannot be upgraded in place)")
    p.add_argument("--no-follow", dest="follow", action="store_false", help="return once installed")
    _add_cluster_options(p)
    _add_follow_options(p)
    add_pipeline_options(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="the Job, its driver pod and the executor pods")
    p.add_argument("release", metavar="RELEASE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_cluster_options(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("logs", help="stream the driver's log; with --follow, exit with the job's result")
    p.add_argument("release", metavar="RELEASE")
    p.add_argument("--no-follow", dest="follow", action="store_false", help="print the log so far and return")
    _add_cluster_options(p)
    _add_follow_options(p)
    p.set_defaults(func=_logs)

    p = sub.add_parser("ui", help="forward the running driver's Spark UI (4040) to localhost",
                       description="Forward the running driver pod's Spark UI to this machine (kubectl "
                                   "port-forward), until Ctrl-C or the driver ends.\n\nexample:\n"
                                   "  fruitlens k8s ui fruitlens -n fruitlens --port 4040",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", metavar="RELEASE")
    p.add_argument("--port", type=int, default=4040, help="local port (default 4040)")
    p.add_argument("--address", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")
    _add_cluster_options(p)
    p.set_defaults(func=_ui)

    p = sub.add_parser("delete", help="helm uninstall the release and remove leftover pods")
    p.add_argument("release", metavar="RELEASE")
    _add_cluster_options(p)
    p.set_defaults(func=_delete)


def _jobs(ns: argparse.Namespace) -> JobClient:
    api = api_client(host=ns.server, kubeconfig=ns.kubeconfig, context=ns.context)
    return JobClient(api, ns.namespace)


def _helm(ns: argparse.Namespace) -> Helm:
    return Helm(namespace=ns.namespace, kube_context=ns.context, kubeconfig=ns.kubeconfig)


def _say(text: str) -> None:
    print(f"fruitlens k8s: {text}", file=sys.stderr, flush=True)


def submit_values(ns: argparse.Namespace) -> dict:
    """The chart values for ``k8s submit``: flags → values; pipeline options the chart has no value for
    (a newer flag) are forwarded as raw ``fruitlens run`` arguments, so none is silently dropped."""
    if getattr(ns, "config_file", None):
        raise ConfigError("--config is a local file the cluster cannot read; give the options as flags")
    if getattr(ns, "master", None):
        raise ConfigError("--master does not apply to k8s submit: the chart sets the Kubernetes master")
    pipeline = {key: getattr(ns, key, None) for key in PIPELINE_VALUES}
    unmapped = [k for k in FORWARDED if k not in PIPELINE_VALUES and k != "spark_conf"]  # spark.conf has its own
    return chart_values(
        input=ns.input, output=ns.output, command=ns.job_command, image=ns.image, pull_policy=ns.pull_policy,
        executors=ns.executors, executor_cores=ns.executor_cores, executor_memory=ns.executor_memory,
        executor_memory_overhead=ns.executor_memory_overhead, driver_memory=ns.driver_memory,
        s3_endpoint=ns.s3_endpoint, s3_secret=ns.s3_secret, pipeline=pipeline,
        spark_conf=dict(ns.spark_conf or []), extra_args=pipeline_args(ns, unmapped) or None,
    )


def _submit(ns: argparse.Namespace) -> int:
    values = submit_values(ns)
    chart = ns.chart or default_chart()
    if chart is None:
        raise K8sError("no chart found: give --chart (a path to helm/fruitlens) or set FRUITLENS_CHART")
    if any(item.replace(" ", "").lower() == "sparkoperator.enabled=true" for item in ns.helm_sets):
        # The Spark operator runs the job as a SparkApplication: there is no Job for this command to follow.
        _helm(ns).upgrade_install(ns.release, chart, values, sets=ns.helm_sets, files=ns.values_files)
        _say(f"installed release {ns.release} as a SparkApplication; follow it with "
             f"`kubectl -n {ns.namespace} get sparkapplication -w` (the chart's NOTES list the commands)")
        return 0
    jobs = _jobs(ns)
    existing = jobs.find_job(ns.release)
    if existing is not None:
        current = jobs.status(ns.release)
        if not current.finished:
            raise K8sError(f"release {ns.release} already has a {current.state} job ({current.job}); "
                           f"follow it with `fruitlens k8s logs {ns.release}` or remove it with "
                           f"`fruitlens k8s delete {ns.release}`")
        if not ns.replace:
            raise K8sError(f"release {ns.release} has a finished job ({current.job}, {current.state}); "
                           "add --replace to delete it and run again, or choose another --release")
        helm = _helm(ns)
        helm.uninstall(ns.release)
        jobs.delete(ns.release)
        _say(f"removed the previous job of {ns.release}")
    _helm(ns).upgrade_install(ns.release, chart, values, sets=ns.helm_sets, files=ns.values_files)
    _say(f"installed release {ns.release} in namespace {ns.namespace}")
    if not ns.follow:
        print(json.dumps({"release": ns.release, "namespace": ns.namespace, "values": values}))
        return 0
    return _follow(jobs, ns)


def _follow(jobs: JobClient, ns: argparse.Namespace, *, stream: bool = True) -> int:
    status = jobs.follow(ns.release, sys.stdout, timeout=ns.timeout, start_timeout=ns.start_timeout,
                         poll=ns.poll, progress=_say, stream=stream, executor_timeout=ns.executor_timeout)
    _report(status)
    return status.exit_code


def _report(status: JobStatus) -> None:
    for line in status.lines():
        _say(line)


def _status(ns: argparse.Namespace) -> int:
    status = _jobs(ns).status(ns.release)
    if ns.json:
        print(json.dumps(status.to_dict(), indent=2))
    else:
        print("\n".join(status.lines()))
    return 0


def _logs(ns: argparse.Namespace) -> int:
    jobs = _jobs(ns)
    if ns.follow:
        return _follow(jobs, ns)
    driver = jobs.driver_pod(ns.release)
    if driver is None:
        raise K8sError(f"release {ns.release} has no driver pod (yet) in namespace {ns.namespace}")
    for chunk in jobs.stream_log(driver.metadata.name, follow=False):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return 0


def ui_command(ns: argparse.Namespace, pod: str) -> list[str]:
    """The kubectl port-forward command for the driver pod's Spark UI (4040 in the pod)."""
    cmd = [find_kubectl(), "port-forward", "-n", ns.namespace, f"pod/{pod}", f"{ns.port}:4040",
           "--address", ns.address]
    if ns.context:
        cmd += ["--context", ns.context]
    if ns.kubeconfig:
        cmd += ["--kubeconfig", ns.kubeconfig]
    return cmd


def _ui(ns: argparse.Namespace) -> int:
    import subprocess

    jobs = _jobs(ns)
    driver = jobs.driver_pod(ns.release)
    if driver is None:
        raise K8sError(f"release {ns.release} has no driver pod in namespace {ns.namespace}; "
                       f"`fruitlens k8s status {ns.release}` shows what there is")
    phase = (driver.status.phase if driver.status else None) or "Unknown"
    if phase != "Running":
        raise K8sError(f"driver pod {driver.metadata.name} is {phase}: the Spark UI lives only while the driver "
                       f"runs; its log: `fruitlens k8s logs {ns.release} --no-follow`")
    _say(f"Spark UI of {ns.release}: http://{ns.address}:{ns.port} (Ctrl-C to stop)")
    try:
        return subprocess.run(ui_command(ns, driver.metadata.name)).returncode
    except KeyboardInterrupt:
        return 0


def _delete(ns: argparse.Namespace) -> int:
    removed = _helm(ns).uninstall(ns.release)
    gone = _jobs(ns).delete(ns.release)
    if not removed and not gone:
        raise K8sError(f"nothing to delete: no release or job {ns.release!r} in namespace {ns.namespace}")
    print(json.dumps({"release": ns.release, "uninstalled": removed, "deleted": gone}))
    return 0
