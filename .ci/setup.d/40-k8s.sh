#!/usr/bin/env bash
# CI: helm + kubectl for the chart tests (tests/test_helm_*.py), in build/tools/bin. Idempotent.
# The Python side (kubernetes-validate) comes from requirements/k8s.txt via scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install-helm.sh build/tools/bin
