"""CloudWatch Logs of EMR on EKS job runs: find a job's log streams and read them (`fruitlens emr logs`).

EMR on EKS names the streams as it names the S3 log keys, without ``.gz``:
``<logStreamNamePrefix>/<virtual cluster id>/jobs/<job run id>/containers/<spark app id>/<pod>/stdout``
(the job runner's directly under ``containers/``), so :func:`fruitlens.deploy.s3data.staging.classify_log_key` sorts both.
boto3 reads the standard AWS settings (credentials, region, ``AWS_ENDPOINT_URL_LOGS``).
"""
from __future__ import annotations

from fruitlens.deploy.emr.errors import EmrError
from fruitlens.deploy.s3data.staging import COMPONENTS, classify_log_key
from fruitlens.errors import require


def client(region: str | None = None):
    boto3 = require("boto3", "emr", "fruitlens emr")
    from botocore.config import Config

    return boto3.client("logs", region_name=region, config=Config(retries={"mode": "standard"}))


def job_stream_prefix(stream_prefix: str | None, virtual_cluster_id: str, job_run_id: str) -> str:
    head = f"{stream_prefix.rstrip('/')}/" if stream_prefix else ""
    return f"{head}{virtual_cluster_id}/jobs/{job_run_id}/containers/"


def _explain(exc: Exception, call: str, where: str) -> EmrError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "") or code
        hint = {"ResourceNotFoundException": "the log group does not exist in this region: check log_group and "
                                             "--region (deploy/emr-on-eks/setup.sh creates it)",
                "AccessDeniedException": "these credentials may not read CloudWatch Logs here "
                                         "(logs:DescribeLogStreams, logs:GetLogEvents)"}.get(code, "")
        return EmrError(f"{call} {where}: {code}: {message}" + (f"; {hint}" if hint else ""))
    return EmrError(f"{call} {where}: {exc}")


def find_job_streams(logs, group: str, stream_prefix: str | None, virtual_cluster_id: str, job_run_id: str,
                     component: str = "driver") -> list[tuple[str, str, str]]:
    """``(stream name, container, stream)`` of the job's log streams of ``component``, in name order."""
    if component not in COMPONENTS:
        raise EmrError(f"unknown log component {component!r}; one of {', '.join(COMPONENTS)}")
    base = job_stream_prefix(stream_prefix, virtual_cluster_id, job_run_id)
    found = []
    try:
        for page in logs.get_paginator("describe_log_streams").paginate(logGroupName=group,
                                                                        logStreamNamePrefix=base):
            for item in page.get("logStreams", []):
                kind = classify_log_key(item["logStreamName"][len(base):])
                if kind and (component == "all" or kind[0] == component):
                    found.append((item["logStreamName"], kind[1], kind[2]))
    except Exception as exc:
        raise _explain(exc, "DescribeLogStreams", f"{group}:{base}") from None
    return sorted(found)


def read_stream(logs, group: str, stream: str) -> str:
    """Every event of one stream, oldest first, one line each."""
    lines: list[str] = []
    token = None
    try:
        while True:
            kwargs = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            page = logs.get_log_events(**kwargs)
            lines += [e["message"].rstrip("\n") for e in page.get("events", [])]
            if not page.get("events") or page.get("nextForwardToken") in (None, token):
                break
            token = page["nextForwardToken"]
    except Exception as exc:
        raise _explain(exc, "GetLogEvents", f"{group}:{stream}") from None
    return "".join(line + "\n" for line in lines)
