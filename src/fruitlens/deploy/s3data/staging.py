"""S3 with boto3: staging a local Fruits-360 copy, counting what is there, reading EMR's job logs.

boto3 reads the standard AWS settings itself (credentials, region, ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` for an S3-compatible server); nothing here overrides them. Errors come back as
:class:`S3Error`: one line naming the call, the URI and what to check.
"""
from __future__ import annotations

import gzip
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fruitlens.errors import FruitlensError, require
from fruitlens.images import is_image_path, label_and_split
from fruitlens.storage import uris

#: Log file names EMR on EKS writes per container (gzipped once the container ends).
LOG_STREAMS = ("stdout", "stderr")
COMPONENTS = ("driver", "job-runner", "executor", "all")


class S3Error(FruitlensError, RuntimeError):
    """An S3 call failed or an S3 URI is malformed."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b/")``; the prefix keeps (or gets) no leading slash."""
    try:
        loc = uris.parse(uri)
    except uris.PathError:
        loc = None
    if loc is None or loc.scheme not in uris.S3_SCHEMES:
        raise S3Error(f"{uri!r} is not an S3 URI: expected s3://bucket/prefix")
    return loc.authority, loc.path


def _dir_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def explain(exc: Exception, call: str, uri: str) -> S3Error:
    """A botocore error as one line: the call, the URI, and what to check."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(exc, NoCredentialsError):
        return S3Error(f"{call} {uri}: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY, or run where an IAM role is attached)")
    if isinstance(exc, EndpointConnectionError):
        return S3Error(f"{call} {uri}: cannot reach the S3 endpoint ({exc}); check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        hints = {
            "NoSuchBucket": "the bucket does not exist (or is in another account/region): check the URI",
            "AccessDenied": "permission denied: check the IAM policy of these credentials for this prefix",
            "403": "permission denied: check the IAM policy of these credentials for this prefix",
            "InvalidAccessKeyId": "the access key is unknown to this endpoint: check the credentials",
            "SignatureDoesNotMatch": "the secret key does not match: check the credentials",
        }
        hint = hints.get(code, message or code)
        return S3Error(f"{call} {uri}: {code}: {hint}")
    return S3Error(f"{call} {uri}: {exc}")


def client(region: str | None = None, *, max_connections: int = 10):
    """An S3 client; the endpoint, credentials and region come from the standard AWS settings."""
    boto3 = require("boto3", "s3", "fruitlens data")
    from botocore.config import Config

    return boto3.client("s3", region_name=region,
                        config=Config(max_pool_connections=max_connections, retries={"mode": "standard"}))


def iter_objects(s3, uri: str) -> Iterator[tuple[str, int]]:
    """Every object (key, size) under ``uri``, in key order."""
    bucket, prefix = split_uri(uri)
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["Size"]
    except Exception as exc:
        raise explain(exc, "ListObjectsV2", uri) from None


# --- staging data ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class UploadReport:
    uploaded: int
    skipped: int
    bytes_uploaded: int

    def to_dict(self) -> dict[str, int]:
        return {"uploaded": self.uploaded, "skipped": self.skipped, "bytes_uploaded": self.bytes_uploaded}


def local_images(local_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(relative posix key, path)`` of every image below ``local_dir``, sorted; hidden entries skipped."""
    root = Path(local_dir)
    if not root.is_dir():
        raise S3Error(f"{root} is not a folder: give the Fruits-360 folder (the one holding Training/ and Test/)")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # a copy assembled from links
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_path(name):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    return found


def upload_tree(
    local_dir: str | os.PathLike[str],
    uri: str,
    *,
    s3=None,
    workers: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> UploadReport:
    """Copy every image below ``local_dir`` to ``uri`` keeping the relative layout, ``workers`` at a time.

    An object already there with the same size is skipped, so a re-run (or a resumed one) sends only
    what is missing. ``on_progress(done, total)`` is called after each upload.
    """
    bucket, prefix = split_uri(uri)
    prefix = _dir_prefix(prefix)
    s3 = s3 or client(max_connections=workers)
    files = local_images(local_dir)
    existing = dict(iter_objects(s3, f"s3://{bucket}/{prefix}"))
    todo = [(prefix + rel, path) for rel, path in files if existing.get(prefix + rel) != path.stat().st_size]

    def put(key: str, path: Path) -> int:
        try:
            s3.upload_file(str(path), bucket, key)
        except Exception as exc:
            raise explain(exc, "PutObject", f"s3://{bucket}/{key}") from None
        return path.stat().st_size

    sent = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(put, key, path) for key, path in todo]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                sent += future.result()
                if on_progress:
                    on_progress(done, len(todo))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return UploadReport(uploaded=len(todo), skipped=len(files) - len(todo), bytes_uploaded=sent)


def dataset_counts(uri: str, *, s3=None) -> dict[str, dict[str, int]]:
    """Images under ``uri`` counted per split and class: ``{"Training": {"Cherry 3": 492, ...}, ...}``."""
    s3 = s3 or client()
    counts: Counter[tuple[str, str]] = Counter()
    for key, _ in iter_objects(s3, uri):
        if is_image_path(key):
            label, split = label_and_split(key)
            counts[(split, label)] += 1
    result: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(counts.items()):
        result.setdefault(split, {})[label] = n
    return result


# --- EMR on EKS job logs --------------------------------------------------------------------------

def job_log_prefix(log_uri: str, virtual_cluster_id: str, job_run_id: str) -> str:
    """EMR on EKS layout: ``<logUri>/<virtualClusterId>/jobs/<jobRunId>/containers/``."""
    bucket, prefix = split_uri(log_uri)
    return f"s3://{bucket}/{_dir_prefix(prefix)}{virtual_cluster_id}/jobs/{job_run_id}/containers/"


#: Driver pods are ``spark-<job run id>-driver``, or with a retry policy ``spark-<job run id>-driver-<suffix>``
#: (one per attempt); executors ``<prefix>-exec-<n>``.
DRIVER_POD_RE = re.compile(r"-driver(-[a-z0-9]+)?$")
EXECUTOR_POD_RE = re.compile(r"-exec-\d+$")


def classify_log_key(relative: str) -> tuple[str, str, str] | None:
    """A key (or CloudWatch stream name) below ``containers/`` → ``(component, container, stream)``, or None.

    ``<runnerPod>/stdout.gz`` is the job runner (spark-submit); ``<sparkAppId>/<pod>-driver[-<attempt>]/
    stderr.gz`` a driver; ``<sparkAppId>/<pod>-exec-N/stderr.gz`` an executor; any other pod is "other"
    (shown with ``--component all``). Rotated logs (``stderr.gz.1``...) and files still being written
    (no ``.gz``) count too.
    """
    parts = relative.split("/")
    name = parts[-1]
    stream = next((s for s in LOG_STREAMS if name == s or name.startswith(s + ".")), None)
    if stream is None:
        return None
    if len(parts) == 2:
        return "job-runner", parts[0], stream
    if len(parts) == 3:
        pod = parts[1]
        kind = "driver" if DRIVER_POD_RE.search(pod) else "executor" if EXECUTOR_POD_RE.search(pod) else "other"
        return kind, "/".join(parts[:2]), stream
    return None


def find_job_logs(s3, log_uri: str, virtual_cluster_id: str, job_run_id: str,
                  component: str = "driver") -> list[tuple[str, str, str]]:
    """``(s3 uri, container, stream)`` of the job's log files of ``component``, in key order."""
    if component not in COMPONENTS:
        raise S3Error(f"unknown log component {component!r}; one of {', '.join(COMPONENTS)}")
    base = job_log_prefix(log_uri, virtual_cluster_id, job_run_id)
    bucket, prefix = split_uri(base)
    found = []
    for key, _ in iter_objects(s3, base):
        kind = classify_log_key(key[len(prefix):])
        if kind and (component == "all" or kind[0] == component):
            found.append((f"s3://{bucket}/{key}", kind[1], kind[2]))
    return found


def read_log(s3, uri: str) -> str:
    """The text of one log object, gunzipped when it is gzip (by its magic bytes, not its name)."""
    bucket, key = split_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise explain(exc, "GetObject", uri) from None
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body.decode("utf-8", errors="replace")
