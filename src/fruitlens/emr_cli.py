"""`fruitlens emr ...`: submit the job to EMR on EKS, follow it, read its logs, print its IAM documents.

Parsing only: the profile comes from :func:`fruitlens.emr_config.load_profile`, the work from
:mod:`fruitlens.emr` and :mod:`fruitlens.s3`. Progress and notes go to stderr, results to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fruitlens import emr
from fruitlens.cli import _conf_pair, add_pipeline_options, pipeline_args
from fruitlens.config import ConfigError
from fruitlens.emr_config import EmrProfile, load_profile

# (flag, profile field, type, help); grouped by the commands that use them.
CLUSTER_FLAGS = (
    ("--region", "region", str, "AWS region (default: the profile, then AWS_REGION)"),
    ("--virtual-cluster-id", "virtual_cluster_id", str, "EMR on EKS virtual cluster id"),
    ("--virtual-cluster-name", "virtual_cluster_name", str, "or its name: the RUNNING cluster of that name"),
)
JOB_FLAGS = (
    ("--execution-role-arn", "execution_role_arn", str, "IAM role of the job's pods (IRSA)"),
    ("--release-label", "release_label", str, "EMR release, e.g. emr-7.5.0-latest"),
    ("--image", "image", str, "container image URI with fruitlens (spark.kubernetes.container.image)"),
    ("--entry-point", "entry_point", str, "job script: local:///path/in/image.py or s3://..."),
    ("--name", "job_name", str, "job run name (default fruitlens)"),
    ("--executors", "executor_instances", int, "number of executors"),
    ("--executor-cores", "executor_cores", int, "cores per executor"),
    ("--executor-memory", "executor_memory", str, "JVM heap per executor, e.g. 4g"),
    ("--executor-memory-overhead", "executor_memory_overhead", str,
     "off-heap memory per executor for the Python workers, e.g. 3g (default: factor x heap)"),
    ("--memory-overhead-factor", "memory_overhead_factor", float, "off-heap share of the heap (default 0.4)"),
    ("--driver-cores", "driver_cores", int, "driver cores"),
    ("--driver-memory", "driver_memory", str, "driver JVM heap"),
    ("--log-uri", "log_uri", str, "S3 URI where EMR ships the pods' logs"),
    ("--log-group", "log_group", str, "CloudWatch log group for the pods' logs"),
    ("--max-attempts", "max_attempts", int, "retry policy: attempts in all (1 = no retry)"),
)
IAM_FLAGS = (
    ("--input", "input", str, "S3 prefix the job reads"),
    ("--output", "output", str, "S3 prefix the job writes"),
    ("--namespace", "namespace", str, "EKS namespace of the virtual cluster"),
    ("--oidc-provider", "oidc_provider", str, "EKS cluster OIDC issuer, e.g. oidc.eks.REGION.amazonaws.com/id/XXXX"),
)
DEST = "profile__"


def _add_flags(parser: argparse.ArgumentParser, *tables) -> None:
    g = parser.add_argument_group("EMR profile (overrides the YAML profile and FRUITLENS_EMR_*)")
    g.add_argument("--profile", dest="profile_file", metavar="FILE",
                   help="YAML EMR profile (default $FRUITLENS_EMR_PROFILE); see examples/emr-profile.yaml")
    seen = set()
    for table in tables:
        for flag, name, kind, help_text in table:
            if flag not in seen:
                seen.add(flag)
                g.add_argument(flag, dest=DEST + name, type=kind, help=help_text)


def _add_job_maps(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("EMR job")
    g.add_argument("--tag", dest=DEST + "tags", action="append", type=_conf_pair, metavar="KEY=VALUE",
                   help="tag of the job run (repeatable)")
    g.add_argument("--spark-default", dest=DEST + "spark_conf", action="append", type=_conf_pair,
                   metavar="KEY=VALUE", help="extra spark-defaults setting for the cluster (repeatable)")


def profile_from_args(ns: argparse.Namespace) -> EmrProfile:
    cli: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if key.startswith(DEST) and value is not None:
            name = key[len(DEST):]
            cli[name] = dict(value) if name in ("tags", "spark_conf") else value
    return load_profile(cli, profile_file=getattr(ns, "profile_file", None))


def _note(text: str) -> None:
    print(f"fruitlens: {text}", file=sys.stderr, flush=True)


def _cluster(profile: EmrProfile, client=None) -> tuple[Any, str]:
    client = client or emr.client(profile.region)
    return client, emr.resolve_virtual_cluster(client, profile)


def _on_change(run: dict[str, Any], previous: str | None) -> None:
    stamp = time.strftime("%H:%M:%S")
    line = f"{stamp} job run {run.get('id')}: {previous or 'submitted'} -> {run.get('state')}"
    if run.get("stateDetails") or run.get("failureReason"):
        line += f" ({': '.join(x for x in (run.get('failureReason'), run.get('stateDetails')) if x)})"
    print(line, file=sys.stderr, flush=True)


def _wait_and_check(client, vc: str, job_id: str, ns: argparse.Namespace) -> int:
    run = emr.wait(client, vc, job_id, on_change=_on_change, poll=ns.poll, max_poll=ns.max_poll, timeout=ns.timeout)
    print(json.dumps(emr.summary(run)))
    emr.check_outcome(run)
    return 0


def _submit(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    input_uri = ns.input or profile.input
    output_uri = ns.output or profile.output
    if not input_uri or not output_uri:
        raise ConfigError("emr submit: give INPUT and OUTPUT (s3://...) or set input/output in the EMR profile")
    if ns.dry_run:
        if not profile.virtual_cluster_id:
            raise ConfigError("emr submit --dry-run calls nothing, so it cannot resolve a virtual cluster name: "
                              "give --virtual-cluster-id (or virtual_cluster_id in the profile)")
        client, vc = None, profile.virtual_cluster_id
    else:
        profile.require("execution_role_arn", "image")
        client, vc = _cluster(profile)
    request = emr.build_request(profile, virtual_cluster_id=vc, input_uri=input_uri, output_uri=output_uri,
                                pipeline_args=pipeline_args(ns), run_key=ns.run_key)
    if ns.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    started = emr.submit(client, request)
    print(started["id"])
    if started["reused"]:
        _note(f"this same request is already job run {started['id']} (same clientToken): nothing new started; "
              "--run-key starts it again")
    else:
        _note(f"started job run {started['id']} on virtual cluster {vc}; follow it: fruitlens emr wait "
              f"{started['id']} --virtual-cluster-id {vc}")
    if ns.wait:
        return _wait_and_check(client, vc, started["id"], ns)
    return 0


def _status(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    print(json.dumps(emr.summary(emr.describe(client, vc, ns.job_run_id))))
    return 0


def _wait(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    return _wait_and_check(client, vc, ns.job_run_id, ns)


def _cancel(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    emr.cancel(client, vc, ns.job_run_id)
    _note(f"cancel requested for job run {ns.job_run_id}; `fruitlens emr wait {ns.job_run_id}` shows when it stops")
    return 0


def _list(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    for run in emr.list_job_runs(client, vc, states=ns.state or (), limit=ns.limit):
        s = emr.summary(run)
        print("\t".join(str(s.get(k, "")) for k in ("id", "name", "state", "createdAt", "failureReason")))
    return 0


def _clusters(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    for vc in emr.list_virtual_clusters(emr.client(profile.region), states=ns.state or ("RUNNING",)):
        namespace = (((vc.get("containerProvider") or {}).get("info") or {}).get("eksInfo") or {}).get("namespace", "")
        print("\t".join((vc.get("id", ""), vc.get("name", ""), vc.get("state", ""), namespace)))
    return 0


def _logs(ns: argparse.Namespace) -> int:
    from fruitlens import s3

    profile = profile_from_args(ns)
    log_uri = profile.log_uri
    if profile.virtual_cluster_id and log_uri:
        vc = profile.virtual_cluster_id  # everything is known: no EMR call
    else:
        client, vc = _cluster(profile)
        log_uri = log_uri or emr.log_uri_of(emr.describe(client, vc, ns.job_run_id))
    if not log_uri:
        raise ConfigError(f"job run {ns.job_run_id} was submitted without an S3 log URI and none is given: "
                          "pass --log-uri (or read CloudWatch if a log group was set)")
    client_s3 = s3.client(profile.region)
    found = [f for f in s3.find_job_logs(client_s3, log_uri, vc, ns.job_run_id, ns.component)
             if ns.stream == "both" or f[2] == ns.stream]
    if not found:
        raise emr.EmrError(f"no {ns.component} logs yet under {s3.job_log_prefix(log_uri, vc, ns.job_run_id)}: EMR "
                           "uploads them while the pods run and when they end; check the job started "
                           "(`fruitlens emr status`) and that the role may write the log prefix")
    for uri, container, stream in found:
        print(f"===== {container} {stream} ({uri}) =====", flush=True)
        sys.stdout.write(s3.read_log(client_s3, uri))
        sys.stdout.flush()
    return 0


def _iam_policy(ns: argparse.Namespace) -> int:
    print(json.dumps(emr.iam_policy(profile_from_args(ns)), indent=2))
    return 0


def _trust_policy(ns: argparse.Namespace) -> int:
    print(json.dumps(emr.trust_policy(profile_from_args(ns)), indent=2))
    return 0


def _profile_cmd(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    if ns.get:
        value = getattr(profile, ns.get.replace("-", "_"))
        print(json.dumps(value) if isinstance(value, dict) else ("" if value is None else value))
    else:
        print(json.dumps(profile.to_dict(), indent=2))
    return 0


def _wait_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("waiting")
    g.add_argument("--poll", type=float, default=5.0, help="first poll interval in seconds (default 5)")
    g.add_argument("--max-poll", type=float, default=60.0, help="longest poll interval (default 60)")
    g.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 124)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("emr", help="run the job on EMR on EKS: submit, wait, logs, IAM policy",
                                   description="Run fruitlens on EMR on EKS. See docs/emr-on-eks.md.")
    sub = parser.add_subparsers(dest="emr_command", required=True, metavar="ACTION")

    p = sub.add_parser("submit", help="start the job (StartJobRun) and print its job run id")
    p.add_argument("input", nargs="?", metavar="INPUT", help="s3:// URI of the images (default: profile input)")
    p.add_argument("output", nargs="?", metavar="OUTPUT", help="s3:// URI of the output (default: profile output)")
    _add_flags(p, CLUSTER_FLAGS, JOB_FLAGS)
    _add_job_maps(p)
    g = p.add_argument_group("submission")
    g.add_argument("--dry-run", action="store_true", help="print the exact request JSON; call nothing")
    g.add_argument("--run-key", help="start this same job again (changes the clientToken)")
    g.add_argument("--wait", action="store_true", help="then wait for the end (as `emr wait`)")
    _wait_options(p)
    add_pipeline_options(p)
    p.set_defaults(func=_submit)

    for name, func, help_text in (("status", _status, "print a job run's state"),
                                  ("wait", _wait, "wait for a job run to end; exit 1 if FAILED, 3 if CANCELLED"),
                                  ("cancel", _cancel, "cancel a job run"),
                                  ("logs", _logs, "print the driver's stdout/stderr from the S3 log URI")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job_run_id", metavar="JOB_RUN_ID")
        _add_flags(p, CLUSTER_FLAGS, [f for f in JOB_FLAGS if f[0] == "--log-uri"] if name == "logs" else ())
        if name == "wait":
            _wait_options(p)
        if name == "logs":
            from fruitlens.s3 import COMPONENTS

            p.add_argument("--component", choices=COMPONENTS, default="driver", help="whose logs (default driver)")
            p.add_argument("--stream", choices=("stdout", "stderr", "both"), default="both")
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="list the virtual cluster's job runs")
    _add_flags(p, CLUSTER_FLAGS)
    p.add_argument("--state", action="append", choices=emr.ACTIVE_STATES + emr.TERMINAL_STATES)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_list)

    p = sub.add_parser("clusters", help="list the virtual clusters (RUNNING by default)")
    _add_flags(p, CLUSTER_FLAGS[:1])
    p.add_argument("--state", action="append", choices=("RUNNING", "TERMINATING", "TERMINATED", "ARRESTED"))
    p.set_defaults(func=_clusters)

    p = sub.add_parser("profile", help="print the merged EMR profile (YAML < env < flags) as JSON")
    _add_flags(p, CLUSTER_FLAGS, JOB_FLAGS, IAM_FLAGS)
    p.add_argument("--get", metavar="FIELD", choices=[f for f in EmrProfile.__dataclass_fields__],
                   help="print only this setting (for scripts)")
    p.set_defaults(func=_profile_cmd)

    p = sub.add_parser("iam-policy", help="print the job role's least-privilege policy JSON")
    _add_flags(p, CLUSTER_FLAGS[:1], JOB_FLAGS, IAM_FLAGS)
    p.set_defaults(func=_iam_policy)

    p = sub.add_parser("trust-policy", help="print the job role's IRSA trust policy JSON")
    _add_flags(p, JOB_FLAGS[:1], IAM_FLAGS[2:])
    p.set_defaults(func=_trust_policy)
