#!/usr/bin/env bash
# CI: Debian's headless-capable Chromium for tests/test_report.py (loads the HTML report, screenshots it).
# Idempotent: installs only when no chromium binary is on PATH; fonts so the screenshot has text.
set -euo pipefail
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v chromium >/dev/null 2>&1; then
  echo "50-chromium: installing chromium"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi
echo "50-chromium: $(chromium --version 2>/dev/null | head -1)"
