#!/usr/bin/env bash
# Build step (root, the image's last stage): install the fruitlens wheel into the app venv and check that
# `fruitlens run` finds the ONNX export baked in by the model stage (never exporting here: a new export
# would be a new layer of several MB on every code change, and the slim venv has no TensorFlow).
#   install-app.sh DISTDIR
set -euo pipefail
dist=$1
venv=${FRUITLENS_HOME:-/opt/fruitlens}/venv

"$venv/bin/pip" install -q --no-cache-dir --no-index --no-deps "$dist"/fruitlens-*.whl
rm -rf "$dist"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" - <<'PY'
import os
from fruitlens.engines import prepare_model
from fruitlens.engines.model import cache_dir
baked = set(os.listdir(cache_dir()))
artifact = prepare_model("onnx", "imagenet")
assert os.path.basename(artifact.path) in baked, f"the model stage baked {baked}, fruitlens wants {artifact.path}"
print("install-app: baked ONNX export found:", artifact.path)
PY
# Spark's JVM logs errors only (fruitlens' log4j2 file) where the base has no log4j2 configuration of its
# own; a base that has one (EMR's) keeps it. `fruitlens run --verbose` asks for Spark's defaults instead.
conf="${SPARK_HOME:-}/conf"
if [ -n "${SPARK_HOME:-}" ] && [ ! -e "$conf/log4j2.properties" ]; then
  mkdir -p "$conf"
  cp "$("$venv/bin/python" -c 'from fruitlens.console import log4j_config; print(log4j_config())')" "$conf/"
fi
# The model folders must be read-only for the job's user. Checked, not chmod-ed: a chmod here would copy
# the weights and the export into this layer, re-made on every code change (make docker-stage and the
# model stage set the modes).
bad=$(find "$KERAS_HOME" "$FRUITLENS_CACHE" \( ! -perm -a+r -o -perm /go+w \) -print)
[ -z "$bad" ] || { echo "install-app: not read-only for everyone: $bad" >&2; exit 1; }
