#!/usr/bin/env bash
# CI: a Docker engine for tests/deploy/test_docker.py (and debootstrap for the local Spark base).
# Idempotent: installs only what is missing and starts dockerd only when no engine answers.
# dockerd runs with --iptables=false --bridge=none: builds use --network host, containers --network none.
set -euo pipefail
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "20-docker: installing ${missing[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  echo "20-docker: a Docker engine already answers ($(docker info -f '{{.ServerVersion}}'))"
  exit 0
fi

# No engine answers: pid files a killed dockerd left are stale, and one whose number the kernel gave to
# another process makes dockerd wait for "its" containerd until it gives up.
if ! pgrep -x dockerd >/dev/null 2>&1; then
  sudo_ rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
fi

log=${DOCKERD_LOG:-/var/log/dockerd.log}
echo "20-docker: starting dockerd (log: $log)"
sudo_ mkdir -p "$(dirname "$log")"
# setsid + nohup: the daemon outlives this script and CI's shell, detached from its terminal.
sudo_ setsid nohup dockerd --iptables=false --bridge=none >>"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "20-docker: dockerd ready ($(docker info -f '{{.ServerVersion}}'))"
    exit 0
  fi
  sleep 1
done
echo "20-docker: dockerd did not answer within 60 s; last log lines:" >&2
tail -20 "$log" >&2
exit 1
