"""EMR on EKS: building the StartJobRun request (pure functions), then submit/status/wait/cancel/list.

The request is a plain dict, built from the :class:`~fruitlens.deploy.emr.profile.EmrProfile` and the job's own
arguments, checked against the API's limits (:func:`validate_request`, read from botocore's own service
model) before anything is sent. Every Spark setting goes into ``spark-defaults`` (one place, one
classification), none into ``sparkSubmitParameters``.

Idempotency: each ``fruitlens emr submit`` sends a fresh ``clientToken`` (botocore re-sends the same one
on its own retries of the call), because EMR answers a token it has seen with that token's job run,
even a FAILED one: a re-run after fixing IAM or re-pushing the image would otherwise get the old failure
back. A hash of the request, carried as the job run tag ``fruitlens/request-sha256``, only serves to
find an identical job run that is still *active*, which is then reused rather than doubled.
AWS errors come back as :class:`EmrError`: one line naming the call, the resource and what to check.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fruitlens.deploy.emr.profile import ROLE_ARN_RE, EmrProfile
from fruitlens.errors import FruitlensError

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")
ACTIVE_STATES = ("PENDING", "SUBMITTED", "RUNNING", "CANCEL_PENDING")
#: States in which no driver runs yet: staying there for minutes means the pods cannot be scheduled or pulled.
WAITING_STATES = ("PENDING", "SUBMITTED")
#: The job run tag carrying the hash of the request (an identical *active* run is reused, not doubled).
REQUEST_TAG = "fruitlens/request-sha256"
#: Seconds a retry attempt's driver waits for the previous attempt's OUTPUT lock to go stale.
RETRY_LOCK_WAIT_S = 120
#: The executor pod-name prefix setting: a fixed one makes two runs in a namespace collide on pod names.
POD_NAME_PREFIX = "spark.kubernetes.executor.podNamePrefix"


class EmrError(FruitlensError, RuntimeError):
    """An EMR on EKS call failed; the message says which call, on what, and what to check."""


class EmrRequestError(EmrError):
    """The request would be refused by the API: caught before any call."""

    exit_code = 2


class JobRunFailed(EmrError):
    """The job run ended FAILED (exit 1) or CANCELLED (exit 3)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state
        self.exit_code = 3 if state == "CANCELLED" else 1


class WaitTimeout(EmrError):
    exit_code = 124


# --- the request (pure) ---------------------------------------------------------------------------

def image_is_pinned(image: str | None) -> bool:
    """A ``repo@sha256:...`` reference: it always names the same image, unlike a tag."""
    return bool(image) and "@sha256:" in (image or "")


def spark_defaults(profile: EmrProfile) -> dict[str, str]:
    """The ``spark-defaults`` classification: image, interpreter, node arch, fixed fleet, memory overhead."""
    settings = {
        "spark.kubernetes.container.image": profile.image or "",
        # A tag can move (`make push` of a new build) while nodes keep the copy they pulled first under
        # Spark's IfNotPresent: a tag is pulled on every pod start, a digest never changes.
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent" if image_is_pinned(profile.image) else "Always",
        # The base's spark-defaults or environment may name its own old system python3; these settings
        # win over PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON wherever those come from.
        "spark.pyspark.python": profile.python,
        "spark.pyspark.driver.python": profile.python,
        # The image is built for one architecture (amd64): keep the pods off other nodes.
        "spark.kubernetes.node.selector.kubernetes.io/arch": profile.node_arch,
        "spark.executor.instances": str(profile.executor_instances),
        "spark.executor.cores": str(profile.executor_cores),
        "spark.executor.memory": profile.executor_memory,
        "spark.driver.cores": str(profile.driver_cores),
        "spark.driver.memory": profile.driver_memory,
        # Each executor holds one model per Python worker; scaling executors up and down would rebuild them.
        "spark.dynamicAllocation.enabled": "false",
        # ONNX Runtime / TensorFlow and the decoded images live in the Python workers, outside the JVM heap.
        # Spark on Kubernetes already gives non-JVM (PySpark) jobs 0.4 instead of 0.1; it is sent
        # explicitly so the figure is visible in the request and changed in one place (the profile).
        "spark.driver.memoryOverheadFactor": str(profile.memory_overhead_factor),
    }
    if profile.max_attempts > 1:
        # A retry attempt's driver starts seconds after the last one died, whose OUTPUT lock is still
        # fresh: it waits for that lock to go stale (fruitlens' lock timeout, 60 s) and continues the run.
        settings["spark.kubernetes.driverEnv.FRUITLENS_LOCK_WAIT"] = str(RETRY_LOCK_WAIT_S)
    if profile.executor_memory_overhead:
        settings["spark.executor.memoryOverhead"] = profile.executor_memory_overhead
    else:
        settings["spark.executor.memoryOverheadFactor"] = str(profile.memory_overhead_factor)
    settings.update(profile.spark_conf)
    return settings


def job_arguments(input_uri: str, output_uri: str, pipeline_args: Sequence[str] = ()) -> list[str]:
    """What the entry point receives: a ``fruitlens run`` command line (no progress bar in a log file)."""
    for what, uri in (("INPUT", input_uri), ("OUTPUT", output_uri)):
        if not uri or not uri.startswith(("s3://", "s3a://")):
            raise EmrRequestError(f"{what} must be an S3 URI the job can reach from EMR (s3://bucket/prefix), "
                                  f"got {uri!r}; stage local images with `fruitlens data upload`")
    args = ["run", input_uri, output_uri, *pipeline_args]
    return args if "--no-progress" in args else [*args, "--no-progress"]


def monitoring_configuration(profile: EmrProfile) -> dict[str, Any]:
    monitoring: dict[str, Any] = {"persistentAppUI": "ENABLED"}
    if profile.log_uri:
        monitoring["s3MonitoringConfiguration"] = {"logUri": profile.log_uri}
    if profile.log_group:
        monitoring["cloudWatchMonitoringConfiguration"] = {
            "logGroupName": profile.log_group, "logStreamNamePrefix": profile.log_stream_prefix}
    return monitoring


def request_hash(request: dict[str, Any], run_key: str | None = None) -> str:
    """sha256 of the request's canonical JSON (without its token and this hash's tag) and ``run_key``.

    Identical arguments give the same hash: it finds an identical job run still active. A different
    ``run_key`` makes it a different request on purpose.
    """
    body = {k: v for k, v in request.items() if k != "clientToken"}
    tags = {k: v for k, v in (body.get("tags") or {}).items() if k != REQUEST_TAG}
    body.pop("tags", None)
    if tags:
        body["tags"] = tags
    text = json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n" + (run_key or "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_client_token() -> str:
    """A token used by one invocation only (botocore re-sends it on its own retries of the call)."""
    return uuid.uuid4().hex


def granted_prefix_problems(profile: EmrProfile, input_uri: str, output_uri: str) -> list[str]:
    """INPUT/OUTPUT outside the prefixes the role's policy grants (``fruitlens emr iam-policy``)."""
    problems = []
    for what, uri, granted, key in (("INPUT", input_uri, profile.input, "input"),
                                    ("OUTPUT", output_uri, profile.granted_output,
                                     "output_grant" if profile.output_grant else "output")):
        if granted and not within_prefix(uri, granted):
            problems.append(f"{what} {uri} is outside {granted}, the prefix the job role's policy grants "
                            f"(the profile's `{key}:`), so the job would get 403 from S3")
    return problems


def within_prefix(uri: str, granted: str) -> bool:
    """``s3://b/runs/r1`` is within ``s3://b/runs``; ``s3://b/runs2`` is not (s3 and s3a alike)."""
    bucket, prefix = s3_parts(uri)
    gbucket, gprefix = s3_parts(granted)
    return bucket == gbucket and (not gprefix or prefix == gprefix or prefix.startswith(gprefix + "/"))


def request_notes(profile: EmrProfile) -> list[str]:
    """Things about a valid request worth telling the submitter (printed to stderr, not refused)."""
    notes = []
    if profile.spark_conf.get(POD_NAME_PREFIX):
        notes.append(f"spark_conf sets {POD_NAME_PREFIX}={profile.spark_conf[POD_NAME_PREFIX]}: two job runs in "
                     "one namespace then collide on their executor pod names; leave it unset (Spark derives "
                     "a unique prefix per application)")
    if profile.image and not image_is_pinned(profile.image):
        notes.append(f"image {profile.image} is a tag, so every pod pulls it again (pullPolicy Always); pin the "
                     "digest `make push` prints (image: repo@sha256:...) to run exactly the image you built")
    return notes


def build_request(
    profile: EmrProfile,
    *,
    virtual_cluster_id: str,
    input_uri: str,
    output_uri: str,
    pipeline_args: Sequence[str] = (),
    run_key: str | None = None,
    client_token: str | None = None,
) -> dict[str, Any]:
    """The exact ``start_job_run`` keyword arguments for this job, validated.

    ``client_token``: a token of the caller's (idempotent across invocations); default a fresh one.
    """
    profile.require("execution_role_arn", "image")
    if "--overwrite" in pipeline_args and profile.max_attempts > 1:
        raise EmrRequestError(
            f"--overwrite with max_attempts={profile.max_attempts}: EMR starts a retry with the same arguments, "
            "so attempt 2 would delete everything attempt 1 wrote (and both are billed). Without --overwrite a "
            "retry continues the interrupted OUTPUT. Drop --overwrite, or set max_attempts: 1 (--max-attempts 1) "
            "to replace an OUTPUT once")
    request: dict[str, Any] = {
        "name": profile.job_name,
        "virtualClusterId": virtual_cluster_id,
        "executionRoleArn": profile.execution_role_arn,
        "releaseLabel": profile.release_label,
        "jobDriver": {"sparkSubmitJobDriver": {
            "entryPoint": profile.entry_point,
            "entryPointArguments": job_arguments(input_uri, output_uri, pipeline_args),
        }},
        "configurationOverrides": {
            "applicationConfiguration": [{"classification": "spark-defaults", "properties": spark_defaults(profile)}],
            "monitoringConfiguration": monitoring_configuration(profile),
        },
        "retryPolicyConfiguration": {"maxAttempts": profile.max_attempts},
    }
    if profile.tags:
        request["tags"] = dict(profile.tags)
    request["tags"] = {**request.get("tags", {}), REQUEST_TAG: request_hash(request, run_key)}
    request["clientToken"] = client_token or new_client_token()
    validate_request(request)
    return request


@functools.lru_cache(maxsize=None)
def _pattern(text: str) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error:  # a Java-only construct: the service checks it anyway
        return None


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"


def _check(shape, value: Any, where: str, problems: list[str]) -> None:
    md = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object")
            return
        for name in shape.required_members:
            if name not in value:
                problems.append(f"{where}.{name} is required")
        for name, item in value.items():
            if name not in shape.members:
                problems.append(f"{where}.{name} is not a field of this API")
            else:
                _check(shape.members[name], item, f"{where}.{name}", problems)
    elif kind in ("list", "map"):
        if "min" in md and len(value) < md["min"] or "max" in md and len(value) > md["max"]:
            problems.append(f"{where}: {len(value)} entries, the API allows {md.get('min', 0)} to {md.get('max')}")
        if kind == "list":
            for i, item in enumerate(value):
                _check(shape.member, item, f"{where}[{i}]", problems)
        else:
            for key, item in value.items():
                _check(shape.key, key, f"{where} key {_shown(str(key))}", problems)
                _check(shape.value, item, f"{where}[{key!r}]", problems)
    elif kind == "string":
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
            return
        if "min" in md and len(value) < md["min"]:
            problems.append(f"{where}: {_shown(value)} is shorter than {md['min']} characters")
        if "max" in md and len(value) > md["max"]:
            problems.append(f"{where}: {len(value)} characters, the API allows at most {md['max']}")
        pattern = _pattern(md["pattern"]) if "pattern" in md else None
        if pattern is not None and value and not pattern.fullmatch(value):
            problems.append(f"{where}: {_shown(value)} does not match the API pattern {md['pattern']}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{where}: {value!r} is not one of {', '.join(shape.enum)}")
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{where}: expected an integer, got {value!r}")
        elif "min" in md and value < md["min"] or "max" in md and value > md["max"]:
            problems.append(f"{where}: {value} is out of the API's range")


@functools.lru_cache(maxsize=1)
def _start_job_run_shape():
    import botocore.session

    return botocore.session.get_session().get_service_model("emr-containers").operation_model("StartJobRun").input_shape


def validate_request(request: dict[str, Any]) -> None:
    """Check every field against the StartJobRun limits (lengths, patterns, counts); raise them all at once.

    The limits are read from botocore's model of the API (the one its reference documents), which boto3
    itself checks only in part (types, required fields, minimum lengths).
    """
    problems: list[str] = []
    _check(_start_job_run_shape(), request, "StartJobRun", problems)
    if problems:
        hint = ""
        if any(".executionRoleArn" in p for p in problems):
            hint += " (an IAM role ARN: arn:aws:iam::<12-digit account>:role/<name>)"
        if any(".sparkSubmitParameters" in p for p in problems):
            hint += " (put Spark settings in spark_conf: they go to the spark-defaults classification)"
        raise EmrRequestError("invalid StartJobRun request: " + "; ".join(problems) + hint)


# --- IAM, generated from the profile (pure) -------------------------------------------------------

def role_parts(profile: EmrProfile) -> tuple[str, str, str]:
    """(partition, account id, role name) of the execution role ARN."""
    profile.require("execution_role_arn")
    match = ROLE_ARN_RE.match(profile.execution_role_arn or "")
    assert match is not None  # validated by EmrProfile
    if not match.group(2):
        raise EmrRequestError(f"execution_role_arn {profile.execution_role_arn} has no account id")
    return match.group(1), match.group(2), match.group(6)


def s3_parts(uri: str) -> tuple[str, str]:
    from fruitlens.deploy.s3data.staging import split_uri

    bucket, prefix = split_uri(uri)
    return bucket, prefix.strip("/")


def _prefix_statements(sid: str, uri: str, actions: list[str], partition: str) -> list[dict[str, Any]]:
    """Objects under the prefix, and what Hadoop's first look at the prefix touches.

    A FileSystem's getFileStatus of ``s3://b/p`` (S3A and EMRFS alike) first HEADs the bare key ``p``,
    then EMRFS the directory marker ``p_$folder$``, then LISTs ``p/``: without the first two the job dies
    on a 403 before any work. S3 answers a HEAD of a missing key 404 only to a caller allowed
    s3:ListBucket, and that check carries no s3:prefix, hence ``StringLikeIfExists``.
    """
    bucket, prefix = s3_parts(uri)
    arn = f"arn:{partition}:s3:::{bucket}"
    objects = [f"{arn}/{prefix}", f"{arn}/{prefix}/*", f"{arn}/{prefix}_$folder$"] if prefix else [f"{arn}/*"]
    listing: dict[str, Any] = {"Sid": f"{sid}List", "Effect": "Allow", "Action": ["s3:ListBucket"],
                               "Resource": [arn]}
    if prefix:
        listing["Condition"] = {"StringLikeIfExists": {"s3:prefix": [prefix, f"{prefix}/*", f"{prefix}_$folder$"]}}
    return [{"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": objects}, listing]


def _parent_statements(sid: str, uri: str, partition: str, *, write: bool) -> list[dict[str, Any]]:
    """The prefix's ancestors, as keys: a mkdirs walks up the path HEADing each (``runs`` for ``runs/r1``),
    and EMRFS deletes its ``_$folder$`` markers of parents once something is written below them.
    Reading a key literally named ``runs`` is all this allows; nothing below the ancestors."""
    bucket, prefix = s3_parts(uri)
    parts = prefix.split("/")[:-1] if prefix else []
    ancestors = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if not ancestors:
        return []
    arn = f"arn:{partition}:s3:::{bucket}"
    statements = [{"Sid": f"{sid}Parents", "Effect": "Allow", "Action": ["s3:GetObject"],
                   "Resource": [r for a in ancestors for r in (f"{arn}/{a}", f"{arn}/{a}_$folder$")]}]
    if write:
        statements.append({"Sid": f"{sid}ParentMarkers", "Effect": "Allow", "Action": ["s3:DeleteObject"],
                           "Resource": [f"{arn}/{a}_$folder$" for a in ancestors]})
    return statements


def iam_policy(profile: EmrProfile) -> dict[str, Any]:
    """Least privilege for the job role: read INPUT, write OUTPUT and the logs; nothing else."""
    profile.require("input", "execution_role_arn")
    if not profile.granted_output:
        profile.require("output")
    partition, account, _ = role_parts(profile)
    statements = _prefix_statements("ReadInput", profile.input or "", ["s3:GetObject"], partition)
    statements += _parent_statements("ReadInput", profile.input or "", partition, write=False)
    # Spark's committer writes then renames (copy + delete) and an overwrite deletes the old output.
    statements += _prefix_statements("WriteOutput", profile.granted_output or "", [
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"], partition)
    statements += _parent_statements("WriteOutput", profile.granted_output or "", partition, write=True)
    if profile.log_uri:
        statements += _prefix_statements("WriteLogs", profile.log_uri, ["s3:PutObject", "s3:GetObject"], partition)
    if profile.entry_point.startswith("s3://"):
        bucket, key = s3_parts(profile.entry_point)
        statements.append({"Sid": "ReadEntryPoint", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [f"arn:{partition}:s3:::{bucket}/{key}"]})
    if profile.log_group:
        region = profile.region or "*"
        group = f"arn:{partition}:logs:{region}:{account}:log-group:{profile.log_group}"
        statements += [
            {"Sid": "CloudWatchDescribe", "Effect": "Allow",
             "Action": ["logs:DescribeLogGroups", "logs:DescribeLogStreams"],
             "Resource": [f"arn:{partition}:logs:{region}:{account}:log-group:*"]},
            {"Sid": "CloudWatchWrite", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [f"{group}:log-stream:{profile.log_stream_prefix}/*"]},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def base36(text: str) -> str:
    """The role-name encoding EMR uses in its service-account names (big-endian bytes → base 36)."""
    number = int.from_bytes(text.encode("utf-8"), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


def merge_trust_policy(existing: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """``existing`` with ``ours``' statements appended where not already there (compared by content).

    A shared role keeps the trust of other clusters/namespaces, as ``aws emr-containers
    update-role-trust-policy`` does (it appends); replacing the document would drop them.
    """
    if not existing:
        return ours
    statements = existing.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else list(statements)

    def canonical(statement: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in statement.items() if k != "Sid"}, sort_keys=True)

    have = {canonical(s) for s in statements}
    added = [s for s in ours["Statement"] if canonical(s) not in have]
    return {**existing, "Version": existing.get("Version", ours["Version"]), "Statement": statements + added}


def service_accounts(profile: EmrProfile) -> list[str]:
    """The service accounts EMR on EKS runs a Spark job's pods under, for this execution role."""
    _, account, role = role_parts(profile)
    return [f"emr-containers-sa-spark-{part}-{account}-{base36(role)}" for part in ("client", "driver", "executor")]


def trust_policy(profile: EmrProfile) -> dict[str, Any]:
    """Who may hand the role to EMR's job pods in the namespace.

    IRSA: the cluster's OIDC provider, for EMR's service accounts (the document ``aws emr-containers
    update-role-trust-policy`` writes). EKS Pod Identity: the ``pods.eks.amazonaws.com`` service; the
    pods are then tied to the role by ``aws emr-containers create-role-associations``.
    """
    if profile.identity == "pod-identity":
        profile.require("execution_role_arn")
        return {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
    profile.require("oidc_provider", "execution_role_arn")
    partition, account, role = role_parts(profile)
    oidc = (profile.oidc_provider or "").removeprefix("https://").rstrip("/")
    subject = f"system:serviceaccount:{profile.namespace}:emr-containers-sa-*-*-{account}-{base36(role)}"
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": f"arn:{partition}:iam::{account}:oidc-provider/{oidc}"},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringLike": {f"{oidc}:sub": subject}},
    }]}


# --- calls (boto3) --------------------------------------------------------------------------------

_HINTS = {
    "ResourceNotFoundException": "not found in this region: check the id and --region "
                                 "(`fruitlens emr clusters` lists the RUNNING virtual clusters)",
    "AccessDeniedException": "these AWS credentials may not make this call: check the caller's IAM policy "
                             "(which execution roles a caller may submit with is decided by the "
                             "emr-containers:ExecutionRoleArn condition key on emr-containers:StartJobRun)",
    "InternalServerException": "an error on AWS' side: retry (botocore already retried with the same clientToken)",
    "ThrottlingException": "throttled by AWS: wait a little and retry",
}


def explain(exc: Exception, call: str, resource: str) -> EmrError:
    """A botocore error as one line: which call, on which resource, and what to check."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
    )

    if isinstance(exc, NoRegionError):
        return EmrError(f"{call} {resource}: no AWS region: set region in the EMR profile, --region or AWS_REGION")
    if isinstance(exc, NoCredentialsError):
        return EmrError(f"{call} {resource}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                        "AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, EndpointConnectionError):
        return EmrError(f"{call} {resource}: cannot reach EMR on EKS ({exc}); check the region and AWS_ENDPOINT_URL")
    if isinstance(exc, ParamValidationError):
        return EmrRequestError(f"{call} {resource}: {exc}")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "") or code
        lowered = message.lower()
        if code == "ValidationException" and ("role" in lowered or "trust" in lowered or "assume" in lowered):
            hint = ("check the execution role exists and its trust policy lets this cluster's OIDC provider "
                    "assume it (IRSA: `fruitlens emr trust-policy`, or `aws emr-containers "
                    "update-role-trust-policy`)")
        elif code == "ValidationException" and "virtual cluster" in lowered:
            hint = "check the virtual cluster is RUNNING (`fruitlens emr clusters`)"
        else:
            hint = _HINTS.get(code, "")
        return EmrError(f"{call} {resource}: {code}: {message}" + (f"; {hint}" if hint else ""))
    return EmrError(f"{call} {resource}: {exc}")


def client(region: str | None = None):
    """An emr-containers client; credentials, endpoint and (without ``region``) region come from AWS' settings."""
    import boto3
    from botocore.config import Config

    try:
        return boto3.client("emr-containers", region_name=region, config=Config(retries={"mode": "standard"}))
    except Exception as exc:
        raise explain(exc, "client", "emr-containers") from None


def list_virtual_clusters(emr, states: Sequence[str] = ("RUNNING",)) -> list[dict[str, Any]]:
    try:
        pages = emr.get_paginator("list_virtual_clusters").paginate(states=list(states))
        return [vc for page in pages for vc in page.get("virtualClusters", [])]
    except Exception as exc:
        raise explain(exc, "ListVirtualClusters", f"states={','.join(states)}") from None


def resolve_virtual_cluster(emr, profile: EmrProfile) -> str:
    """The virtual cluster id: the profile's id, or the one RUNNING cluster with the profile's name."""
    if profile.virtual_cluster_id:
        return profile.virtual_cluster_id
    if not profile.virtual_cluster_name:
        profile.require("virtual_cluster_id")
    name = profile.virtual_cluster_name
    running = list_virtual_clusters(emr)
    matches = [vc["id"] for vc in running if vc.get("name") == name]
    if len(matches) == 1:
        return matches[0]
    known = sorted({vc.get("name", "?") for vc in running}) or ["none"]
    if not matches:
        raise EmrError(f"no RUNNING virtual cluster named {name!r} in this region (running: {', '.join(known)}); "
                       "create it (docs/emr-on-eks.md) or check --region")
    raise EmrError(f"{len(matches)} RUNNING virtual clusters are named {name!r} ({', '.join(matches)}); "
                   "give --virtual-cluster-id")


def find_same_request(emr, request: dict[str, Any]) -> dict[str, Any] | None:
    """An *active* job run of this cluster for this same request (its hash tag, or its clientToken), if any.

    Finished runs are never matched: re-submitting after a failure must start a new run.
    """
    digest = (request.get("tags") or {}).get(REQUEST_TAG)
    try:
        pages = emr.get_paginator("list_job_runs").paginate(
            virtualClusterId=request["virtualClusterId"], name=request["name"], states=list(ACTIVE_STATES),
            PaginationConfig={"MaxItems": 500})
        for page in pages:
            for run in page.get("jobRuns", []):
                if run.get("state") not in ACTIVE_STATES:
                    continue
                if (digest and (run.get("tags") or {}).get(REQUEST_TAG) == digest) \
                        or run.get("clientToken") == request["clientToken"]:
                    return run
    except Exception as exc:
        raise explain(exc, "ListJobRuns", f"virtual cluster {request['virtualClusterId']}") from None
    return None


def submit(emr, request: dict[str, Any]) -> dict[str, Any]:
    """Start the job run, or find an identical one still active: ``{id, name, arn, ..., state, reused}``.

    After StartJobRun the run is described once: EMR answers a clientToken it has already seen with that
    token's job run, which may have finished long ago; that is an error, not a started job.
    """
    validate_request(request)
    vc = request["virtualClusterId"]
    same = find_same_request(emr, request)
    if same is not None:
        return {"id": same["id"], "name": same.get("name"), "arn": same.get("arn"),
                "virtualClusterId": vc, "state": same.get("state"), "reused": True}
    try:
        response = emr.start_job_run(**request)
    except Exception as exc:
        raise explain(exc, "StartJobRun", f"virtual cluster {vc} role {request.get('executionRoleArn')}") from None
    run = describe(emr, vc, response["id"])
    if run.get("state") in TERMINAL_STATES:
        finished = run.get("finishedAt")
        raise EmrError(
            f"StartJobRun answered with job run {response['id']}, which already ended {run.get('state')}"
            f"{' at ' + finished.isoformat() if hasattr(finished, 'isoformat') else ''} "
            f"({run.get('failureReason') or run.get('stateDetails') or 'no details'}): EMR returns the earlier job "
            f"run of a clientToken it has seen ({request['clientToken']}); nothing new was started. Submit "
            "again without --client-token (each submit sends a fresh one)")
    return {k: response.get(k) for k in ("id", "name", "arn", "virtualClusterId")} | {
        "state": run.get("state"), "reused": False}


def describe(emr, virtual_cluster_id: str, job_run_id: str) -> dict[str, Any]:
    try:
        return emr.describe_job_run(virtualClusterId=virtual_cluster_id, id=job_run_id)["jobRun"]
    except Exception as exc:
        raise explain(exc, "DescribeJobRun", f"job run {job_run_id} on virtual cluster {virtual_cluster_id}") from None


def cancel(emr, virtual_cluster_id: str, job_run_id: str) -> dict[str, Any]:
    try:
        return emr.cancel_job_run(virtualClusterId=virtual_cluster_id, id=job_run_id)
    except Exception as exc:
        raise explain(exc, "CancelJobRun", f"job run {job_run_id} on virtual cluster {virtual_cluster_id}") from None


def list_job_runs(emr, virtual_cluster_id: str, *, states: Sequence[str] = (), limit: int = 20) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {"virtualClusterId": virtual_cluster_id, "PaginationConfig": {"MaxItems": limit}}
    if states:
        kwargs["states"] = list(states)
    try:
        return [run for page in emr.get_paginator("list_job_runs").paginate(**kwargs) for run in page.get("jobRuns", [])]
    except Exception as exc:
        raise explain(exc, "ListJobRuns", f"virtual cluster {virtual_cluster_id}") from None


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """The fields worth printing of a job run, JSON-ready."""
    keys = ("id", "name", "state", "failureReason", "stateDetails", "createdAt", "finishedAt", "releaseLabel")
    return {k: (run[k].isoformat() if hasattr(run[k], "isoformat") else run[k]) for k in keys if run.get(k) is not None}


def wait(
    emr,
    virtual_cluster_id: str,
    job_run_id: str,
    *,
    on_change: Callable[[dict[str, Any], str | None], None] | None = None,
    poll: float = 5.0,
    max_poll: float = 60.0,
    backoff: float = 1.5,
    timeout: float | None = None,
    stuck_after: float | None = 300.0,
    on_stuck: Callable[[dict[str, Any], float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Poll until a terminal state, backing off from ``poll`` to ``max_poll`` seconds (reset on each change).

    ``on_change(job_run, previous_state)`` sees every state change; ``on_stuck(job_run, seconds)`` is
    called once when the run has stayed PENDING/SUBMITTED for ``stuck_after`` seconds. Returns the final
    job run; raises :class:`WaitTimeout` past ``timeout`` seconds.
    """
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    start, delay, last = clock(), poll, None
    since, hinted = start, False
    while True:
        run = describe(emr, virtual_cluster_id, job_run_id)
        state = run.get("state")
        if state != last:
            if on_change:
                on_change(run, last)
            last, delay, since, hinted = state, poll, clock(), False
        if state in TERMINAL_STATES:
            return run
        waited = clock() - since
        if state in WAITING_STATES and stuck_after is not None and waited >= stuck_after and not hinted:
            hinted = True
            if on_stuck:
                on_stuck(run, waited)
        if timeout is not None and clock() - start + delay > timeout:
            raise WaitTimeout(f"job run {job_run_id} still {state} after {timeout:g}s; "
                              f"`fruitlens emr wait {job_run_id}` goes on waiting")
        sleep(delay)
        delay = min(max_poll, delay * backoff)


def check_outcome(run: dict[str, Any]) -> None:
    """Raise :class:`JobRunFailed` with the reason and details unless the job run COMPLETED."""
    state = run.get("state")
    if state == "COMPLETED":
        return
    reason = run.get("failureReason") or "no failure reason given"
    details = run.get("stateDetails") or "no details"
    raise JobRunFailed(f"job run {run.get('id')} {state}: {reason}: {details}; "
                       f"driver logs: `fruitlens emr logs {run.get('id')}`", state or "FAILED")


def log_uri_of(run: dict[str, Any]) -> str | None:
    """The S3 log URI the job run was submitted with, if any."""
    monitoring = (run.get("configurationOverrides") or {}).get("monitoringConfiguration") or {}
    return (monitoring.get("s3MonitoringConfiguration") or {}).get("logUri")


def log_group_of(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """The CloudWatch (log group, stream prefix) the job run was submitted with, if any."""
    monitoring = (run.get("configurationOverrides") or {}).get("monitoringConfiguration") or {}
    cw = monitoring.get("cloudWatchMonitoringConfiguration") or {}
    return cw.get("logGroupName"), cw.get("logStreamNamePrefix")


def ui_client(region: str | None = None):
    """An ``emr`` client: the persistent application UI lives in EMR's API, not in emr-containers'."""
    import boto3
    from botocore.config import Config

    try:
        return boto3.client("emr", region_name=region, config=Config(retries={"mode": "standard"}))
    except Exception as exc:
        raise explain(exc, "client", "emr") from None


def persistent_ui_url(
    containers, emr_api, virtual_cluster_id: str, job_run_id: str, *, poll: float = 2.0, timeout: float = 120.0,
    sleep: Callable[[float], None] | None = None,
) -> str:
    """The Spark UI of a job run, running or finished, as EMR's persistent application UI.

    EMR on EKS keeps the event logs of job runs submitted with ``persistentAppUI: ENABLED`` (fruitlens
    always sends it), so the history server is EMR's: no event-log bucket or server of our own. The
    link is presigned and short-lived: ask again for a fresh one.
    """
    sleep = sleep or time.sleep
    try:
        arn = containers.describe_virtual_cluster(id=virtual_cluster_id)["virtualCluster"]["arn"]
    except Exception as exc:
        raise explain(exc, "DescribeVirtualCluster", virtual_cluster_id) from None
    describe(containers, virtual_cluster_id, job_run_id)  # an unknown job id fails here, clearly
    try:
        ui_id = emr_api.create_persistent_app_ui(
            TargetResourceArn=arn, EMRContainersConfig={"JobRunId": job_run_id})["PersistentAppUIId"]
    except Exception as exc:
        raise explain(exc, "CreatePersistentAppUI", f"job run {job_run_id}") from None
    waited = 0.0
    while True:
        try:
            answer = emr_api.get_persistent_app_ui_presigned_url(PersistentAppUIId=ui_id, PersistentAppUIType="SHS")
        except Exception as exc:
            raise explain(exc, "GetPersistentAppUIPresignedURL", ui_id) from None
        if answer.get("PresignedURLReady") and answer.get("PresignedURL"):
            return answer["PresignedURL"]
        if waited >= timeout:
            raise EmrError(f"the persistent UI {ui_id} of job run {job_run_id} was not ready after {timeout:g}s; "
                           "try `fruitlens emr ui` again in a minute")
        sleep(poll)
        waited += poll
