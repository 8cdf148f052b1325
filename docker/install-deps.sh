#!/usr/bin/env bash
# Build step (runs as root inside the image build): create the app venv with the pinned runtime deps.
#   install-deps.sh PYTHON VENV LOCKFILE WHEELDIR
# pyspark and py4j are NOT installed from the lock: the base image's Spark brings its own Python side,
# which must match its JVM side exactly; a .pth file puts $SPARK_HOME/python (and py4j) on the venv's
# path. Wheels come from WHEELDIR when it has any (staged on the host by `make build`: no index access
# is needed in the build), else from the package index.
set -euo pipefail
python=$1 venv=$2 lock=$3 wheels=$4

"$python" -m venv "$venv"
grep -viE '^(pyspark|py4j)==' "$lock" > /tmp/deps.txt
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$venv/bin/pip" install -q --no-cache-dir --no-index --find-links "$wheels" -r /tmp/deps.txt
else
  "$venv/bin/pip" install -q --no-cache-dir --only-binary=:all: -r /tmp/deps.txt
fi
rm -rf "$wheels" /tmp/deps.txt

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
spark_python="${SPARK_HOME:?the base image must set SPARK_HOME}/python"
[ -d "$spark_python/pyspark" ] || { echo "install-deps: no pyspark under $spark_python" >&2; exit 1; }
{ echo "$spark_python"; ls "$spark_python"/lib/py4j-*-src.zip 2>/dev/null || true; } > "$site/spark-home.pth"
"$venv/bin/python" -c 'import pyspark, py4j, numpy, onnxruntime; print("deps: pyspark", pyspark.__version__, "numpy", numpy.__version__)'
