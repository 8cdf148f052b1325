"""Upload a local folder to the local S3 server (k8s/s3.yaml) through `kubectl port-forward`: `make k8s-data`.

usage: python k8s/s3_upload.py --endpoint http://127.0.0.1:18333 --bucket fruitlens --prefix fruits-360-sample DIR
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Files already there (same size) are skipped.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--wait", type=float, default=30, help="seconds to wait for the endpoint")
    p.add_argument("folder", type=Path)
    ns = p.parse_args(argv)
    if not ns.folder.is_dir():
        print(f"s3_upload: {ns.folder} is not a folder", file=sys.stderr)
        return 2

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError

    s3 = boto3.client("s3", endpoint_url=ns.endpoint, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))
    deadline = time.monotonic() + ns.wait
    while True:
        try:
            s3.list_buckets()
            break
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                print(f"s3_upload: {ns.endpoint} did not answer within {ns.wait:.0f}s", file=sys.stderr)
                return 1
            time.sleep(1)
    try:
        s3.head_bucket(Bucket=ns.bucket)
    except ClientError:
        s3.create_bucket(Bucket=ns.bucket)
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ns.bucket, Prefix=ns.prefix + "/"):
        existing.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    sent = skipped = 0
    for path in sorted(ns.folder.rglob("*")):
        if not path.is_file():
            continue
        key = f"{ns.prefix}/{path.relative_to(ns.folder).as_posix()}"
        if existing.get(key) == path.stat().st_size:
            skipped += 1
            continue
        s3.upload_file(str(path), ns.bucket, key)
        sent += 1
    print(f"s3_upload: {sent} uploaded, {skipped} already there → s3a://{ns.bucket}/{ns.prefix}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
