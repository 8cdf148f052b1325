"""`docker login` to an Amazon ECR registry: `python docker/ecr_login.py ACCOUNT.dkr.ecr.REGION.amazonaws.com`.

Uses the AWS CLI when it is installed (`aws ecr get-login-password`), else boto3's
``ecr.get_authorization_token``. The password goes to `docker login --password-stdin`: it is never
written to disk, put on a command line or baked into any image. Credentials come from the usual AWS
chain (environment, profile, instance/pod role).
"""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys


def region_of(registry: str) -> str:
    match = re.fullmatch(r"\d+\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?", registry)
    if not match:
        sys.exit(f"ecr_login: {registry} is not an ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com)")
    return match.group(1)


def password(registry: str) -> str:
    region = region_of(registry)
    if shutil.which("aws"):
        return subprocess.run(["aws", "ecr", "get-login-password", "--region", region],
                              check=True, capture_output=True, text=True).stdout.strip()
    import boto3

    token = boto3.client("ecr", region_name=region).get_authorization_token()["authorizationData"][0]
    user, _, secret = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    assert user == "AWS", user
    return secret


def main(registry: str) -> int:
    secret = password(registry)
    done = subprocess.run(["docker", "login", "--username", "AWS", "--password-stdin", registry],
                          input=secret, text=True)
    return done.returncode


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    raise SystemExit(main(sys.argv[1]))
