#!/usr/bin/env bash
# CI: the Spark 3.5 line (EMR 7.x) beside the pinned 4.0: .venv-spark35 with pyspark 3.5.2 and otherwise
# requirements.lock's pins, for tests/e2e/test_spark_lines.py. Java 17 comes from scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup-spark35.sh
