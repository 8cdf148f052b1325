"""IAM documents generated from the profile (pure): the job role's least-privilege policy, its trust policy
(IRSA or EKS Pod Identity) and the service accounts EMR runs the pods under."""
from __future__ import annotations

import json
from typing import Any

from fruitlens.deploy.emr.errors import EmrRequestError
from fruitlens.deploy.emr.profile import ROLE_ARN_RE, EmrProfile, s3_parts


def role_parts(profile: EmrProfile) -> tuple[str, str, str]:
    """(partition, account id, role name) of the execution role ARN."""
    profile.require("execution_role_arn")
    match = ROLE_ARN_RE.match(profile.execution_role_arn or "")
    assert match is not None  # validated by EmrProfile
    if not match.group(2):
        raise EmrRequestError(f"execution_role_arn {profile.execution_role_arn} has no account id")
    return match.group(1), match.group(2), match.group(6)


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
    templates = [t for t in (profile.driver_pod_template, profile.executor_pod_template) if t]
    if templates:  # EMR on EKS reads the pod templates from S3 as the job role
        statements.append({"Sid": "ReadPodTemplates", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [f"arn:{partition}:s3:::{'/'.join(s3_parts(t))}" for t in templates]})
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
