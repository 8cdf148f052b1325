#!/usr/bin/env bash
# Build step (root, model stage): install the fruitlens wheel into the full venv and export the baked-in
# Keras weights to ONNX into $FRUITLENS_CACHE, exactly as `fruitlens run` will look for it. The image
# copies only $FRUITLENS_CACHE out of this stage. Nothing here touches the network.
#   bake-model.sh VENV DISTDIR
set -euo pipefail
venv=$1 dist=$2
"$venv/bin/pip" install -q --no-cache-dir --no-index --no-deps "$dist"/fruitlens-*.whl
mkdir -p "$FRUITLENS_CACHE"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -c "from fruitlens.engine import prepare_model; print(prepare_model('onnx','imagenet'))"
# Read-only for the job's user; COPY --from keeps these modes.
chmod -R a+rX,go-w "$FRUITLENS_CACHE"
ls -l "$FRUITLENS_CACHE"
sha256sum "$FRUITLENS_CACHE"/*
