#!/usr/bin/env bash
# Build step (root): make sure PYTHON (default python3.11) with venv/ensurepip exists, from the base's
# own distribution: apt (Ubuntu/Debian: apache/spark, the local base) or dnf (Amazon Linux 2023: EMR 7,
# emr-spark-8). Where the base already has it (emr-spark-8.0.0 ships 3.11-3.13, EMR 7.1+ 3.11), it is used.
# The base's default python3 is left as it is (the base's own tools may rely on it).
set -euo pipefail
python=${1:-python3.11}
if "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "python: $("$python" --version) already in the base"
elif command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$python" "$python-venv" >/dev/null
  rm -rf /var/lib/apt/lists/*
elif command -v dnf >/dev/null; then
  dnf install -y -q "$python" "$python-pip"
  dnf clean all && rm -rf /var/cache/dnf
elif command -v yum >/dev/null; then
  # Amazon Linux 2 (EMR 5.x/6.x bases): yum only, and no python3.11 package to install.
  echo "install-python: this base is Amazon Linux 2 (an EMR 5.x/6.x release): no dnf and no $python package;" \
       "build on emr-spark-8.0.0 or an emr-7.x base (EMR_BASE=public.ecr.aws/emr-on-eks/spark/emr-7.5.0:latest)" >&2
  exit 1
else
  echo "install-python: no $python and neither apt-get nor dnf in this base" >&2
  exit 1
fi
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' && "$python" --version
