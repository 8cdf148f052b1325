"""The StartJobRun request of one job (pure functions): built from the
:class:`~fruitlens.deploy.emr.profile.EmrProfile` and the job's own arguments, then checked against the
API's limits (:mod:`.validation`) before anything is sent. Every Spark setting goes into
``spark-defaults`` (one place, one classification), none into ``sparkSubmitParameters``.

Idempotency: each ``fruitlens emr submit`` sends a fresh ``clientToken`` (botocore re-sends the same one
on its own retries of the call), because EMR answers a token it has seen with that token's job run,
even a FAILED one: a re-run after fixing IAM or re-pushing the image would otherwise get the old failure
back. A hash of the request, carried as the job run tag ``fruitlens/request-sha256``, only serves to
find an identical job run that is still *active*, which is then reused rather than doubled.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from fruitlens.deploy.emr.errors import EmrRequestError
from fruitlens.deploy.emr.profile import EmrProfile, within_prefix
from fruitlens.deploy.emr.validation import validate_request
from fruitlens.storage import uris

#: The job run tag carrying the hash of the request (an identical *active* run is reused, not doubled).
REQUEST_TAG = "fruitlens/request-sha256"
#: Seconds a retry attempt's driver waits for the previous attempt's OUTPUT lock to go stale.
RETRY_LOCK_WAIT_S = 120
#: The executor pod-name prefix setting: a fixed one makes two runs in a namespace collide on pod names.
POD_NAME_PREFIX = "spark.kubernetes.executor.podNamePrefix"


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
    # Per role: the driver on capacity that stays (losing it loses the job), executors where Spark can
    # replace them (spot); what Spark has no setting for comes from the pod templates.
    for role in ("driver", "executor"):
        for key, value in getattr(profile, f"{role}_node_selector").items():
            settings[f"spark.kubernetes.{role}.node.selector.{key}"] = value
        template = getattr(profile, f"{role}_pod_template")
        if template:
            settings[f"spark.kubernetes.{role}.podTemplateFile"] = template
    if profile.driver_do_not_disrupt:
        settings["spark.kubernetes.driver.annotation.karpenter.sh/do-not-disrupt"] = "true"
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
        if not uri or not uris.is_s3(uri):
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
