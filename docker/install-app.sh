#!/usr/bin/env bash
# Build step (root, inside the image build): install the fruitlens wheel into the app venv, then bake
# the ONNX export of the baked-in Keras weights into $FRUITLENS_CACHE, exactly as `fruitlens run` will
# look for it. Nothing here touches the network: the weights are already in $KERAS_HOME/models.
#   install-app.sh DISTDIR
set -euo pipefail
dist=$1
venv=${FRUITLENS_HOME:-/opt/fruitlens}/venv

"$venv/bin/pip" install -q --no-cache-dir --no-index --no-deps "$dist"/fruitlens-*.whl
rm -rf "$dist"
mkdir -p "$FRUITLENS_CACHE"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -c "from fruitlens.engine import prepare_model; print(prepare_model('onnx','imagenet'))"
ls -l "$KERAS_HOME/models" "$FRUITLENS_CACHE"
# Spark's JVM logs errors only (fruitlens' log4j2 file) where the base has no log4j2 configuration of its
# own; a base that has one (EMR's) keeps it. `fruitlens run --verbose` asks for Spark's defaults instead.
conf="${SPARK_HOME:-}/conf"
if [ -n "${SPARK_HOME:-}" ] && [ ! -e "$conf/log4j2.properties" ]; then
  mkdir -p "$conf"
  cp "$("$venv/bin/python" -c 'from fruitlens.console import log4j_config; print(log4j_config())')" "$conf/"
fi
# Read-only for the job's user (Keras writes its keras.json to /tmp when KERAS_HOME is not writable).
# Only these two small folders: a chmod over the venv would copy all of it into a new layer.
chmod -R a+rX,go-w "$KERAS_HOME" "$FRUITLENS_CACHE"
