"""Requests and profile settings checked against botocore's own model of the emr-containers API (the
limits its reference documents: lengths, patterns, counts), which boto3 itself checks only in part."""
from __future__ import annotations

import functools
import re
from typing import Any

from fruitlens.deploy.emr.errors import EmrRequestError


@functools.cache
def _api_limits(operation: str, member: str) -> dict[str, Any]:
    import botocore.session

    return dict(botocore.session.get_session().get_service_model("emr-containers").operation_model(
        operation).input_shape.members[member].metadata)


def api_string_problem(operation: str, member: str, value: str) -> str | None:
    """Why ``value`` breaks the length or pattern botocore's emr-containers model gives ``member``, or None."""
    md = _api_limits(operation, member)
    if not md.get("min", 0) <= len(value) <= md.get("max", len(value)):
        return f"must be {md.get('min', 0)} to {md.get('max')} characters (the {operation} API), got {len(value)}"
    if "pattern" in md and not re.fullmatch(md["pattern"], value):
        return f"must match the {operation} API pattern {md['pattern']}, got {value!r}"
    return None


@functools.cache
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
