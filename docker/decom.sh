#!/usr/bin/env bash
# /opt/decom.sh of the local Spark base: the executor pod's preStop hook when spark.decommission.enabled
# (Spark adds it as spark.kubernetes.decommission.script, default /opt/decom.sh), as in apache/spark's image:
# send the executor JVM SIGPWR (Spark's decommission signal, spark.executor.decommission.signal), which makes
# it stop taking tasks, migrate its blocks and exit, then wait for it, within the pod's grace period.
# Unlike apache/spark's script it needs no psmisc (killall) nor util-linux's waitpid: pgrep and kill -0 do.
set -u
LOG=${DECOM_LOG:-/dev/termination-log}
say() { echo "decom: $*" | tee -a "$LOG" 2>/dev/null || echo "decom: $*"; }
# The executor backends' main classes (DECOM_MATCH: another pattern, for tests outside a container).
# tini (the container's init, `tini -s -- java …`) carries the same command line: it is left out, as it forwards
# signals to the JVM anyway and exits with it (apache/spark's script picks java processes for the same reason).
pids=""
for pid in $(pgrep -f "${DECOM_MATCH:-org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend|org.apache.spark.executor.CoarseGrainedExecutorBackend}" || true); do
  [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = tini ] || pids="${pids:+$pids }$pid"
done
if [ -z "$pids" ]; then
  say "no executor JVM found"
  exit 0
fi
say "SIGPWR to the executor JVM(s) $pids at $(date -u +%FT%TZ)"
for pid in $pids; do kill -s PWR "$pid" 2>/dev/null || true; done
# The kubelet kills the container when terminationGracePeriodSeconds ends; wait at most that long.
for _ in $(seq "${DECOM_WAIT_S:-600}"); do
  alive=""
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
  [ -z "$alive" ] && break
  sleep 1
done
say "done at $(date -u +%FT%TZ)"
