#!/usr/bin/env bash
# A second virtualenv (.venv-spark35) with pyspark 3.5 (requirements/spark35.lock) and otherwise the
# pins of requirements.lock: tests/e2e/test_spark_lines.py runs the whole job in it to prove the Spark 3.5
# line (EMR 7.x) works. Idempotent: a second run only checks. Needs Java 17 (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV35=${VENV35:-.venv-spark35}
want=$(sed -nE 's/^pyspark==(.*)/\1/p' requirements/spark35.lock)
if [ ! -x "$VENV35/bin/python" ]; then
  python3 -m venv "$VENV35"
fi
have=$("$VENV35/bin/python" -c 'import pyspark, onnxruntime, fruitlens; print(pyspark.__version__)' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "setup-spark35: installing pyspark $want and requirements.lock's other pins into $VENV35"
  pins=$(mktemp)
  trap 'rm -f "$pins"' EXIT
  grep -viE '^(pyspark|py4j)==' requirements.lock > "$pins"
  grep -E '^[A-Za-z0-9]' requirements/spark35.lock >> "$pins"
  "$VENV35/bin/pip" install -q --upgrade pip
  "$VENV35/bin/pip" install -q -r "$pins"
  "$VENV35/bin/pip" install -q --no-deps -e .
fi
echo "setup-spark35: ok ($("$VENV35/bin/python" -c 'import pyspark, sys; print("pyspark", pyspark.__version__, "python", sys.version.split()[0])'))"
