#!/usr/bin/env bash
# Build the local EMR on EKS stand-in base (docker/Dockerfile.base-emr-local) on the local Debian base.
# Usage: docker/base-emr-local.sh [IMAGE]   (default fruitlens-spark-base:emr-local)
#   LOCAL_BASE   the Debian-based Spark base to start from (default fruitlens-spark-base:local; built by
#                docker/base-local.sh when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-fruitlens-spark-base:emr-local}
LOCAL_BASE=${LOCAL_BASE:-fruitlens-spark-base:local}
export DOCKER_BUILDKIT=0
docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 || bash docker/base-local.sh "$LOCAL_BASE"
mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
docker build --network host -f docker/Dockerfile.base-emr-local --build-arg BASE_IMAGE="$LOCAL_BASE" \
  --build-arg DEBIAN_MIRROR="${MIRROR:-${mirror:-http://deb.debian.org/debian}}" -t "$IMAGE" "$ctx"
echo "base-emr-local: built $IMAGE on $LOCAL_BASE"
