#!/usr/bin/env bash
# Build the local stand-in of an EMR on EKS Spark base (docker/Dockerfile.base-emr-local), one per Spark
# line, whose Spark, Scala and system Python are those of the line's release:
#   emr-spark-8  emr-spark-8.0.0: Spark 4.0.2-amzn-0, Scala 2.13, Python 3.11/3.12/3.13 -> pyspark 4.0.2, python3 3.11
#   emr-7        emr-7.5.0: Spark 3.5.2-amzn-1, Scala 2.12, Python 3.9 + 3.11 -> pyspark 3.5.2 (requirements/spark35.lock),
#                python3 3.9
# (the EMR release guide's application versions; docs/emr-on-eks.md, "Releases").
# Usage: docker/base-emr-local.sh LINE [IMAGE]   (default IMAGE fruitlens-spark-base:LINE-local)
# Spark comes from the pyspark wheel of that version, through a local Debian base built for it by
# docker/base-local.sh (fruitlens-spark-base:local-spark<version>; built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
LINE=${1:?usage: docker/base-emr-local.sh emr-spark-8|emr-7 [IMAGE]}
pin() { sed -nE "s/^$1==(.*)/\1/p" "$2" | head -1; }
case "$LINE" in
  emr-spark-8) pyspark=4.0.2 py4j=0.10.9.9 system_python=3.11 release=emr-spark-8.0.0 ;;
  emr-7) pyspark=$(pin pyspark requirements/spark35.lock) py4j=$(pin py4j requirements/spark35.lock)
         system_python=3.9 release=emr-7.5.0 ;;
  *) echo "base-emr-local: LINE must be emr-spark-8 or emr-7, got '$LINE'" >&2; exit 2 ;;
esac
IMAGE=${2:-fruitlens-spark-base:$LINE-local}
LOCAL_BASE=fruitlens-spark-base:local-spark$pyspark
export DOCKER_BUILDKIT=0
docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 \
  || PYSPARK_VERSION=$pyspark PY4J_VERSION=$py4j bash docker/base-local.sh "$LOCAL_BASE"
mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
docker build --network host -f docker/Dockerfile.base-emr-local --build-arg BASE_IMAGE="$LOCAL_BASE" \
  --build-arg SYSTEM_PYTHON="$system_python" --label fruitlens.standin-for="$release" \
  --build-arg DEBIAN_MIRROR="${MIRROR:-${mirror:-http://deb.debian.org/debian}}" -t "$IMAGE" "$ctx"
echo "base-emr-local: built $IMAGE ($release stand-in: Spark $pyspark, python3 $system_python) on $LOCAL_BASE"
