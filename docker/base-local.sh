#!/usr/bin/env bash
# Build a local stand-in for the Spark base images when none can be pulled (no registry reachable).
#   1. debootstrap a minimal Debian bookworm from the Debian mirror apt already uses on this machine,
#   2. `docker import` it as ROOTFS_IMAGE (default fruitlens-debian:bookworm),
#   3. build docker/Dockerfile.base-local on it: JRE 17, Python 3.11, pinned pyspark (or PYSPARK_VERSION
#      and PY4J_VERSION from the environment) as SPARK_HOME,
#      /opt/entrypoint.sh, users `spark` (uid 185, apache/spark) and `hadoop` (EMR on EKS).
# Usage: docker/base-local.sh [IMAGE]   (default fruitlens-spark-base:local). Idempotent: an existing
# rootfs image is reused (FORCE=1 rebuilds it); the second step is cached by Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-fruitlens-spark-base:local}
ROOTFS_IMAGE=${ROOTFS_IMAGE:-fruitlens-debian:bookworm}
SUITE=${SUITE:-bookworm}
export DOCKER_BUILDKIT=0

mirror() {  # the first Debian (non-security) mirror apt is configured with, else deb.debian.org
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')
  echo "${MIRROR:-${m:-http://deb.debian.org/debian}}"
}

if [ "${FORCE:-0}" = 1 ] || ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  dir=$(mktemp -d /tmp/fruitlens-rootfs.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
  echo "base-local: debootstrap $SUITE from $(mirror) into $dir"
  debootstrap --variant=minbase "$SUITE" "$dir" "$(mirror)" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
  # The mirror apt used here, plus security updates, for the apt-get steps of the next stage.
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
    "$(mirror)" "$SUITE" "$(mirror)" "$SUITE" "$SUITE" > "$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import -c 'CMD ["/bin/bash"]' - "$ROOTFS_IMAGE" >/dev/null
  rm -f "$dir.log"
  echo "base-local: imported $ROOTFS_IMAGE"
fi

pin() { grep -iE "^$1==" requirements.lock | head -1 | cut -d= -f3; }
# The pinned pyspark by default; docker/base-emr-local.sh asks for its EMR line's version instead.
PYSPARK_VERSION=${PYSPARK_VERSION:-$(pin pyspark)}
PY4J_VERSION=${PY4J_VERSION:-$(pin py4j)}
# pyspark and py4j come from PyPI, downloaded on the host (a build container has no index access).
# pyspark is an sdist on PyPI: it is built into a wheel here, once (pip's cache keeps the download).
ctx=build/docker-base
mkdir -p "$ctx/wheels"
if ! ls "$ctx/wheels"/pyspark-"$PYSPARK_VERSION"-*.whl >/dev/null 2>&1; then
  "${PIP:-.venv/bin/pip}" wheel -q --no-deps -w "$ctx/wheels" "pyspark==$PYSPARK_VERSION" "py4j==$PY4J_VERSION"
fi
cp docker/entrypoint.sh "$ctx/entrypoint.sh"
cp docker/decom.sh "$ctx/decom.sh"
docker build --network host -f docker/Dockerfile.base-local \
  --build-arg ROOTFS_IMAGE="$ROOTFS_IMAGE" --build-arg PYSPARK_VERSION="$PYSPARK_VERSION" \
  --build-arg PY4J_VERSION="$PY4J_VERSION" -t "$IMAGE" "$ctx"
echo "base-local: built $IMAGE (pyspark $PYSPARK_VERSION)"
