#!/usr/bin/env bash
# Build step (root, model stage): export the baked-in Keras weights to ONNX into $FRUITLENS_CACHE, exactly
# as `fruitlens run` will look for it, with fruitlens' own export code (EXPORTER: a folder holding
# the modules mk/docker.mk EXPORTER_FILES lists) on the full venv's TensorFlow. The image copies only
# $FRUITLENS_CACHE out of this stage. Nothing here touches the network.
#   bake-model.sh VENV EXPORTER
set -euo pipefail
venv=$1 exporter=$2
mkdir -p "$FRUITLENS_CACHE"
PYTHONPATH="$exporter" PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -c \
  "from fruitlens.engines import prepare_model; print(prepare_model('onnx','imagenet'))"
# Read-only for the job's user; COPY --from keeps these modes.
chmod -R a+rX,go-w "$FRUITLENS_CACHE"
ls -l "$FRUITLENS_CACHE"
sha256sum "$FRUITLENS_CACHE"/*
