"""Ask IAM whether the job role may make the job's first S3 calls: `fruitlens emr check-access`.

A Hadoop FileSystem's first look at ``s3://bucket/prefix`` HEADs the bare key ``prefix`` (s3:GetObject),
then EMRFS's marker ``prefix_$folder$``, then LISTs ``prefix/`` (s3:ListBucket with s3:prefix); the job
then reads below INPUT and writes and deletes below OUTPUT. A policy granting only ``prefix/*`` fails
the very first call with a 403, minutes into a billed run. IAM's policy simulator
(SimulatePrincipalPolicy) answers for the role's own policies before any job runs; it does not see
bucket policies, SCPs or KMS key policies, which only a real run shows.
"""
from __future__ import annotations

from typing import Any

from fruitlens.deploy.emr.errors import EmrError, explain
from fruitlens.deploy.emr.iam import role_parts
from fruitlens.deploy.emr.profile import EmrProfile, s3_parts
from fruitlens.errors import require

PROBE = "fruitlens-access-check"  # a key name below the prefix: the simulator needs a concrete resource


def access_checks(partition: str, uri: str, write: bool) -> list[dict[str, Any]]:
    """SimulatePrincipalPolicy requests (without the role) covering the job's calls on ``uri``."""
    bucket, prefix = s3_parts(uri)
    arn = f"arn:{partition}:s3:::{bucket}"
    below = f"{arn}/{prefix}/{PROBE}" if prefix else f"{arn}/{PROBE}"
    reads = [f"{arn}/{prefix}", f"{arn}/{prefix}_$folder$", below] if prefix else [below]
    checks = [{"ActionNames": ["s3:GetObject"], "ResourceArns": reads},
              {"ActionNames": ["s3:ListBucket"], "ResourceArns": [arn],
               "ContextEntries": [{"ContextKeyName": "s3:prefix", "ContextKeyValues": [f"{prefix}/" if prefix else ""],
                                   "ContextKeyType": "string"}]}]
    if write:
        checks.append({"ActionNames": ["s3:PutObject", "s3:DeleteObject"], "ResourceArns": [below]})
    return checks


def check_access(iam, profile: EmrProfile, input_uri: str, output_uri: str) -> list[tuple[str, str, str]]:
    """``(decision, action, resource)`` for every call the job makes first on INPUT and OUTPUT."""
    partition, _, _ = role_parts(profile)
    role = profile.execution_role_arn or ""
    results = []
    for uri, write in ((input_uri, False), (output_uri, True)):
        for check in access_checks(partition, uri, write):
            try:
                pages = iam.get_paginator("simulate_principal_policy").paginate(PolicySourceArn=role, **check)
                for page in pages:
                    for item in page["EvaluationResults"]:
                        results.append((item["EvalDecision"], item["EvalActionName"], item["EvalResourceName"]))
            except Exception as exc:
                raise explain(exc, "SimulatePrincipalPolicy", f"role {role}") from None
    return results


def client(region: str | None = None):
    boto3 = require("boto3", "emr", "fruitlens emr")

    try:
        return boto3.client("iam", region_name=region)
    except Exception as exc:
        raise EmrError(f"client iam: {exc}") from None
