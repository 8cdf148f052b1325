"""`fruitlens emr ...`: submit the job to EMR on EKS, follow it, read its logs, print its IAM documents.

Parsing only: the profile comes from :func:`fruitlens.deploy.emr.profile.load_profile`, the work from
:mod:`fruitlens.deploy.emr.request` / :mod:`.client` and :mod:`fruitlens.deploy.s3data.staging`. Progress and notes go to stderr, results to stdout.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from fruitlens.cli_options import add_pipeline_options, conf_pair, pipeline_args
from fruitlens.config import ConfigError
from fruitlens.deploy.emr import client as emr
from fruitlens.deploy.emr import errors as emr_errors
from fruitlens.deploy.emr import iam, releases, request
from fruitlens.deploy.emr.profile import EmrProfile, load_profile

# (flag, profile field, type, help); grouped by the commands that use them.
CLUSTER_FLAGS = (
    ("--region", "region", str, "AWS region (default: the profile, then AWS_REGION)"),
    ("--virtual-cluster-id", "virtual_cluster_id", str, "EMR on EKS virtual cluster id"),
    ("--virtual-cluster-name", "virtual_cluster_name", str, "or its name: the RUNNING cluster of that name"),
)
JOB_FLAGS = (
    ("--execution-role-arn", "execution_role_arn", str, "IAM role of the job's pods (IRSA)"),
    ("--release-label", "release_label", str,
     f"EMR release: {releases.DEFAULT_RELEASE} (Spark 4.0, default) or emr-7.x such as emr-7.5.0-latest (Spark 3.5)"),
    ("--image", "image", str, "container image with fruitlens, best repo@sha256:... (spark.kubernetes.container.image)"),
    ("--image-spark", "image_spark", str,
     f"Spark version the image was built on (its {releases.SPARK_LABEL} label; default: read from the local image)"),
    ("--python", "python", str, "the image's Python with fruitlens (spark.pyspark.python; default the venv's)"),
    ("--node-arch", "node_arch", str, "kubernetes.io/arch of the nodes the pods may use (default amd64)"),
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
    ("--log-stream-prefix", "log_stream_prefix", str, "CloudWatch log stream prefix (default fruitlens)"),
    ("--max-attempts", "max_attempts", int, "retry policy: attempts in all (1 = no retry)"),
)
IAM_FLAGS = (
    ("--input", "input", str, "S3 prefix the job reads"),
    ("--output", "output", str, "S3 prefix the job writes"),
    ("--output-grant", "output_grant", str, "S3 prefix the role may write, if wider than --output (a parent)"),
    ("--namespace", "namespace", str, "EKS namespace of the virtual cluster"),
    ("--oidc-provider", "oidc_provider", str, "EKS cluster OIDC issuer, e.g. oidc.eks.REGION.amazonaws.com/id/XXXX"),
    ("--identity", "identity", str, "how pods get the role: irsa (default) or pod-identity"),
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
    g.add_argument("--tag", dest=DEST + "tags", action="append", type=conf_pair, metavar="KEY=VALUE",
                   help="tag of the job run (repeatable)")
    g.add_argument("--spark-default", dest=DEST + "spark_conf", action="append", type=conf_pair,
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


def _stuck_hint(namespace: str):
    def hint(run: dict[str, Any], seconds: float) -> None:
        _note(f"job run {run.get('id')} has been {run.get('state')} for {seconds / 60:.0f} min: its pods are not "
              f"running yet (no room on the nodes, an image that cannot be pulled, a node selector no node "
              f"matches). Look at: kubectl get events -n {namespace} --sort-by=.lastTimestamp; "
              f"kubectl get pods -n {namespace}")
    return hint


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _stop_waiting(client, vc: str, job_id: str, ns: argparse.Namespace, why: str) -> None:
    """After a timeout or Ctrl-C: cancel the job run (asked, or --cancel-on-timeout) or say it goes on."""
    cancel = ns.cancel_on_timeout
    if not cancel and why == "interrupted" and sys.stdin.isatty():
        cancel = _ask(f"\nfruitlens: job run {job_id} is still running on EMR (and billed). Cancel it? [y/N] ")
    if cancel:
        emr.cancel(client, vc, job_id)
        _note(f"{why}: cancel requested for job run {job_id}")
    else:
        _note(f"{why}: stopped waiting, but job run {job_id} goes on running (and billing) on EMR: "
              f"`fruitlens emr cancel {job_id}` stops it, `fruitlens emr wait {job_id}` waits again")


def _wait_and_check(client, vc: str, job_id: str, ns: argparse.Namespace, namespace: str) -> int:
    def interrupted(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, interrupted)  # also when SIGINT was ignored (nohup, CI)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        previous = None
    try:
        run = emr.wait(client, vc, job_id, on_change=_on_change, poll=ns.poll, max_poll=ns.max_poll,
                       timeout=ns.timeout, stuck_after=ns.stuck_hint_after, on_stuck=_stuck_hint(namespace))
    except emr_errors.WaitTimeout:
        _stop_waiting(client, vc, job_id, ns, f"timeout after {ns.timeout:g}s")
        raise
    except KeyboardInterrupt:
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C while asking ends at once
        _stop_waiting(client, vc, job_id, ns, "interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print(json.dumps(emr.summary(run)))
    emr.check_outcome(run)
    return 0


def check_image_spark(profile: EmrProfile) -> None:
    """Before any call: the image must be built on the release's Spark line, or its driver fails under the
    release's job runner after the job is billed (:mod:`fruitlens.deploy.emr.releases`)."""
    if not profile.image:
        return  # a dry run without an image: nothing to compare
    spark = profile.image_spark or releases.local_image_spark(profile.image)
    if spark is None:
        line = releases.release(profile.release_label).spark_line
        raise ConfigError(
            f"emr submit: which Spark the image {profile.image} was built on is not known here, so whether it can "
            f"run under release {profile.release_label} (Spark {line}) cannot be checked: set image_spark in the "
            f"EMR profile (or --image-spark) to the image's {releases.SPARK_LABEL} label, which `make push` prints "
            f"(docker image inspect -f '{{{{index .Config.Labels \"{releases.SPARK_LABEL}\"}}}}' IMAGE)")
    problem = releases.image_mismatch(profile.release_label, profile.image, spark)
    if problem:
        raise ConfigError(f"emr submit: {problem}")


def _submit(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    input_uri = ns.input or profile.input
    output_uri = ns.output or profile.output
    if not input_uri or not output_uri:
        raise ConfigError("emr submit: give INPUT and OUTPUT (s3://...) or set input/output in the EMR profile")
    # Before any call: a URI outside what the role's policy grants would fail on AWS with a 403.
    outside = request.granted_prefix_problems(profile, input_uri, output_uri)
    if outside and not ns.outside_grant:
        raise ConfigError("; ".join(outside) + ". Use a URI under the granted prefix, or widen the grant to a "
                          "parent prefix (output_grant, or input) and re-apply the policy (`fruitlens emr "
                          "iam-policy`, deploy/emr-on-eks/setup.sh); --outside-grant submits anyway (the role "
                          "grants more)")
    if not (profile.input and profile.granted_output):
        _note("the profile has no input/output, so whether the job role may read INPUT and write OUTPUT is not "
              "checked here (`fruitlens emr iam-policy` grants exactly those prefixes)")
    if not ns.dry_run:
        profile.require("execution_role_arn", "image")
    check_image_spark(profile)
    if ns.dry_run:
        if not profile.virtual_cluster_id:
            raise ConfigError("emr submit --dry-run calls nothing, so it cannot resolve a virtual cluster name: "
                              "give --virtual-cluster-id (or virtual_cluster_id in the profile)")
        client, vc = None, profile.virtual_cluster_id
    else:
        client, vc = _cluster(profile)
    job = request.build_request(profile, virtual_cluster_id=vc, input_uri=input_uri, output_uri=output_uri,
                                pipeline_args=pipeline_args(ns), run_key=ns.run_key, client_token=ns.client_token)
    for note in request.request_notes(profile):
        _note(note)
    if ns.dry_run:
        print(json.dumps(job, indent=2))
        return 0
    started = emr.submit(client, job)
    print(started["id"])
    if started["reused"]:
        _note(f"an identical job run {started['id']} is still {started['state']}: nothing new started (same "
              f"arguments, tag {request.REQUEST_TAG}); `fruitlens emr wait {started['id']}` follows it, "
              "--run-key KEY starts another beside it")
    else:
        _note(f"started job run {started['id']} ({started['state']}) on virtual cluster {vc}; follow it: "
              f"fruitlens emr wait {started['id']} --virtual-cluster-id {vc}")
    if ns.wait:
        return _wait_and_check(client, vc, started["id"], ns, profile.namespace)
    return 0


def _status(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    print(json.dumps(emr.summary(emr.describe(client, vc, ns.job_run_id))))
    return 0


def _wait(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    client, vc = _cluster(profile)
    return _wait_and_check(client, vc, ns.job_run_id, ns, profile.namespace)


def _cancel(ns: argparse.Namespace) -> int:
    client, vc = _cluster(profile_from_args(ns))
    emr.cancel(client, vc, ns.job_run_id)
    _note(f"cancel requested for job run {ns.job_run_id}; `fruitlens emr wait {ns.job_run_id}` shows when it stops")
    return 0


def _ui(ns: argparse.Namespace) -> int:
    profile = profile_from_args(ns)
    client, vc = _cluster(profile)
    url = emr.persistent_ui_url(client, emr.ui_client(profile.region), vc, ns.job_run_id)
    print(url)
    if ns.open:
        import webbrowser

        webbrowser.open(url)
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
    from fruitlens.deploy.emr import cwlogs
    from fruitlens.deploy.s3data import staging as s3

    profile = profile_from_args(ns)
    log_uri, group, prefix = profile.log_uri, profile.log_group, profile.log_stream_prefix
    wanted = {"auto": bool(log_uri or group), "s3": bool(log_uri), "cloudwatch": bool(group)}[ns.source]
    if profile.virtual_cluster_id and wanted:
        vc = profile.virtual_cluster_id  # everything is known: no EMR call
    else:  # what the job run was submitted with
        client, vc = _cluster(profile)
        run = emr.describe(client, vc, ns.job_run_id)
        log_uri = log_uri or emr.log_uri_of(run)
        run_group, run_prefix = emr.log_group_of(run)
        if not group and run_group:
            group, prefix = run_group, run_prefix or prefix
    source = ns.source if ns.source != "auto" else ("s3" if log_uri else "cloudwatch" if group else None)
    if source is None or (source == "s3" and not log_uri) or (source == "cloudwatch" and not group):
        what = {"s3": "an S3 log URI", "cloudwatch": "a CloudWatch log group"}.get(source or "", "logs")
        raise ConfigError(f"job run {ns.job_run_id} was submitted without {what} and none is given: "
                          "pass --log-uri or --log-group")
    if source == "s3":
        client_s3 = s3.client(profile.region)
        where = s3.job_log_prefix(log_uri, vc, ns.job_run_id)
        found = [(f"{container} {stream} ({uri})", lambda uri=uri: s3.read_log(client_s3, uri))
                 for uri, container, stream in s3.find_job_logs(client_s3, log_uri, vc, ns.job_run_id, ns.component)
                 if ns.stream == "both" or stream == ns.stream]
    else:
        logs = cwlogs.client(profile.region)
        where = f"CloudWatch {group}:{cwlogs.job_stream_prefix(prefix, vc, ns.job_run_id)}"
        found = [(f"{container} {stream} (CloudWatch {group}:{name})",
                  lambda name=name: cwlogs.read_stream(logs, group, name))
                 for name, container, stream in cwlogs.find_job_streams(logs, group, prefix, vc, ns.job_run_id,
                                                                        ns.component)
                 if ns.stream == "both" or stream == ns.stream]
    if not found:
        raise emr_errors.EmrError(f"no {ns.component} logs yet under {where}: EMR ships them while the pods run and "
                           "when they end; check the job started (`fruitlens emr status`) and that the role may "
                           "write there")
    for title, read in found:
        print(f"===== {title} =====", flush=True)
        sys.stdout.write(read())
        sys.stdout.flush()
    return 0


def _iam_policy(ns: argparse.Namespace) -> int:
    print(json.dumps(iam.iam_policy(profile_from_args(ns)), indent=2))
    return 0


def _check_access(ns: argparse.Namespace) -> int:
    from fruitlens.deploy.emr import access as emr_access

    profile = profile_from_args(ns)
    profile.require("execution_role_arn")
    input_uri, output_uri = ns.input_uri or profile.input, ns.output_uri or profile.output
    if not input_uri or not output_uri:
        raise ConfigError("emr check-access: give INPUT and OUTPUT (s3://...) or set input/output in the EMR profile")
    results = emr_access.check_access(emr_access.client(profile.region), profile, input_uri, output_uri)
    for decision, action, resource in results:
        print(f"{decision}\t{action}\t{resource}")
    denied = [f"{action} {resource}" for decision, action, resource in results if decision != "allowed"]
    if denied:
        raise emr_errors.EmrError(f"the role {profile.execution_role_arn} may not make {len(denied)} of the job's first S3 "
                           f"calls ({'; '.join(denied)}): the job would stop on a 403. Apply `fruitlens emr "
                           "iam-policy` to it (deploy/emr-on-eks/setup.sh)")
    _note(f"the role's own policies allow the job's first S3 calls on {input_uri} and {output_uri} (bucket "
          "policies, SCPs and KMS keys are not simulated)")
    return 0


def _trust_policy(ns: argparse.Namespace) -> int:
    policy = iam.trust_policy(profile_from_args(ns))
    if ns.merge_with:
        try:
            with open(ns.merge_with) as f:
                text = f.read().strip()
            existing = json.loads(text) if text and text != "None" else None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"trust-policy --merge-with {ns.merge_with}: not a readable JSON policy ({exc})") from None
        policy = iam.merge_trust_policy(existing, policy)
    print(json.dumps(policy, indent=2))
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
    g.add_argument("--cancel-on-timeout", action="store_true",
                   help="cancel the job run on --timeout or Ctrl-C (default: ask on Ctrl-C in a terminal, "
                        "else leave it running)")
    g.add_argument("--stuck-hint-after", type=float, default=300.0, metavar="SECONDS",
                   help="print where to look when the run stays PENDING/SUBMITTED this long (default 300)")


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
    g.add_argument("--run-key", help="start this job even if an identical one is still active (a new request)")
    g.add_argument("--client-token", help="idempotency token of your own (e.g. a CI build id): re-running with "
                                          "the same token gives back that token's job run, even a finished one")
    g.add_argument("--outside-grant", action="store_true",
                   help="submit even if INPUT/OUTPUT lie outside the profile's input/output prefixes")
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
        log_flags = ("--log-uri", "--log-group", "--log-stream-prefix")
        _add_flags(p, CLUSTER_FLAGS, [f for f in JOB_FLAGS if f[0] in log_flags] if name == "logs" else (),
                   [f for f in IAM_FLAGS if f[0] == "--namespace"] if name == "wait" else ())
        if name == "wait":
            _wait_options(p)
        if name == "logs":
            from fruitlens.deploy.s3data.staging import COMPONENTS

            p.add_argument("--component", choices=COMPONENTS, default="driver", help="whose logs (default driver)")
            p.add_argument("--stream", choices=("stdout", "stderr", "both"), default="both")
            p.add_argument("--source", choices=("auto", "s3", "cloudwatch"), default="auto",
                           help="where to read them (default: S3 if the run has a log URI, else CloudWatch)")
        p.set_defaults(func=func)

    p = sub.add_parser("ui", help="print a link to a job run's Spark UI (EMR's persistent application UI)",
                       description="Print a presigned link to the Spark UI of a job run, running or finished "
                                   "(EMR's persistent application UI; the link expires: ask again).\n\n"
                                   "example:\n  fruitlens emr ui 0000000abcdefghijkl --open",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job_run_id", metavar="JOB_RUN_ID")
    p.add_argument("--open", action="store_true", help="also open it in the default browser")
    _add_flags(p, CLUSTER_FLAGS)
    p.set_defaults(func=_ui)

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

    p = sub.add_parser("check-access", help="ask IAM (policy simulator) whether the job role may make the "
                       "job's first S3 calls on INPUT and OUTPUT")
    p.add_argument("input_uri", nargs="?", metavar="INPUT", help="default: the profile's input")
    p.add_argument("output_uri", nargs="?", metavar="OUTPUT", help="default: the profile's output")
    _add_flags(p, CLUSTER_FLAGS[:1], JOB_FLAGS[:1], IAM_FLAGS[:2])
    p.set_defaults(func=_check_access)

    p = sub.add_parser("service-accounts", help="print the service accounts EMR runs the job's pods under")
    _add_flags(p, JOB_FLAGS[:1], IAM_FLAGS[2:])
    p.set_defaults(func=lambda ns: print("\n".join(iam.service_accounts(profile_from_args(ns)))) or 0)

    p = sub.add_parser("trust-policy", help="print the job role's trust policy JSON (IRSA or EKS Pod Identity)")
    _add_flags(p, JOB_FLAGS[:1], IAM_FLAGS[2:])
    p.add_argument("--merge-with", metavar="FILE", help="the role's current trust policy JSON: print it with "
                   "this statement appended (other clusters' trust kept), as setup.sh applies it")
    p.set_defaults(func=_trust_policy)
