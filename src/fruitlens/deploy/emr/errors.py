"""The errors of ``fruitlens emr``, and AWS' errors translated into them (:func:`explain`): one line naming
the call, the resource and what to check."""
from __future__ import annotations

from fruitlens.errors import FruitlensError


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
