"""EMR on EKS through boto3: the clients, submit/describe/cancel/list, and the polling of a job run
(:func:`wait`). boto3 is imported when a client is made, never at import."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fruitlens.deploy.emr.errors import EmrError, JobRunFailed, WaitTimeout, explain
from fruitlens.deploy.emr.profile import EmrProfile
from fruitlens.deploy.emr.request import REQUEST_TAG
from fruitlens.deploy.emr.validation import validate_request
from fruitlens.errors import require

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")
ACTIVE_STATES = ("PENDING", "SUBMITTED", "RUNNING", "CANCEL_PENDING")
#: States in which no driver runs yet: staying there for minutes means the pods cannot be scheduled or pulled.
WAITING_STATES = ("PENDING", "SUBMITTED")


def client(region: str | None = None):
    """An emr-containers client; credentials, endpoint and (without ``region``) region come from AWS' settings."""
    boto3 = require("boto3", "emr", "fruitlens emr")
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
    boto3 = require("boto3", "emr", "fruitlens emr")
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
