#!/usr/bin/env bash
# Build step (root, deps-slim stage): turn a copy of the full venv into the slim one by uninstalling
# every distribution the slim lock does not pin (TensorFlow, Keras, tf2onnx and what only they need),
# then check the venv is exactly that lock (pyspark/py4j come from the base's Spark, pip from venv).
#   slim-venv.sh VENV SLIM_LOCK
set -euo pipefail
venv=$1 lock=$2
norm() { tr 'A-Z_.' 'a-z--' | sed -E 's/-+/-/g'; }
keep=$(grep -E '^[A-Za-z0-9]' "$lock" | grep -viE '^(pyspark|py4j)==' | cut -d= -f1 | norm | sort -u)
have=$("$venv/bin/pip" list --format=freeze 2>/dev/null | cut -d= -f1 | norm | grep -vx pip | sort -u)
drop=$(comm -23 <(echo "$have") <(echo "$keep"))
echo "slim-venv: uninstalling $(echo "$drop" | wc -w) distributions: $(echo "$drop" | tr '\n' ' ')"
# shellcheck disable=SC2086
"$venv/bin/pip" uninstall -y -q $drop
now=$("$venv/bin/pip" list --format=freeze 2>/dev/null | grep -viE '^pip==' | norm | sort)
want=$(grep -E '^[A-Za-z0-9]' "$lock" | grep -viE '^(pyspark|py4j)==' | norm | sort)
if [ "$now" != "$want" ]; then
  echo "slim-venv: the venv is not $lock:" >&2; diff <(echo "$want") <(echo "$now") >&2; exit 1
fi
"$venv/bin/pip" check
if "$venv/bin/python" -c 'import tensorflow' 2>/dev/null; then echo "slim-venv: tensorflow still imports" >&2; exit 1; fi
"$venv/bin/python" -c 'import pyspark, numpy, onnxruntime, onnx, pandas, pyarrow, PIL; print("slim-venv: ok, numpy", numpy.__version__)'
