"""`fruitlens data ...`: stage a local Fruits-360 copy into S3 and check what is there."""
from __future__ import annotations

import argparse
import json
import sys

from fruitlens.config import ConfigError
from fruitlens.deploy.s3data import staging as s3


def _upload(ns: argparse.Namespace) -> int:
    if ns.workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {ns.workers}")
    last = [0]

    def progress(done: int, total: int) -> None:
        if ns.progress and (done == total or done - last[0] >= max(1, total // 20)):
            last[0] = done
            print(f"fruitlens: uploaded {done}/{total}", file=sys.stderr, flush=True)

    report = s3.upload_tree(ns.local_dir, ns.uri, s3=s3.client(ns.region, max_connections=ns.workers),
                            workers=ns.workers, on_progress=progress)
    print(json.dumps({"uri": ns.uri, **report.to_dict()}))
    return 0


def _ls(ns: argparse.Namespace) -> int:
    counts = s3.dataset_counts(ns.uri, s3=s3.client(ns.region))
    if ns.json:
        print(json.dumps(counts, indent=2))
        return 0
    total = 0
    for split, labels in counts.items():
        n = sum(labels.values())
        total += n
        print(f"{split or '(no split)'}: {n} images, {len(labels)} classes")
        for label, count in labels.items():
            print(f"  {count:7d}  {label}")
    print(f"total: {total} images")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="stage images into S3 and count them")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("upload", help="copy a local Fruits-360 folder to s3://bucket/prefix (skips what is there)")
    p.add_argument("local_dir", metavar="LOCAL_DIR", help="folder holding Training/ and Test/")
    p.add_argument("uri", metavar="S3_URI", help="destination, e.g. s3://my-bucket/fruits-360")
    p.add_argument("--workers", type=int, default=16, help="parallel uploads (default 16)")
    p.add_argument("--region", help="bucket region (default: AWS_REGION)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    p.set_defaults(func=_upload)

    p = sub.add_parser("ls", help="count the images under an S3 prefix per split and class")
    p.add_argument("uri", metavar="S3_URI")
    p.add_argument("--region", help="bucket region (default: AWS_REGION)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=_ls)
