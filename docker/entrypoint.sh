#!/usr/bin/env bash
# /opt/entrypoint.sh of the local Spark base: the same contract as apache/spark's image.
#   driver ARGS...    spark-submit in client mode, bound to this pod's address (Spark on Kubernetes)
#   executor          the Kubernetes executor backend, configured by SPARK_* variables set by the driver
#   anything else     run as given (e.g. `fruitlens run IN OUT`, `bash`)
set -eo pipefail

# A uid without a passwd entry (OpenShift-style random uid) confuses Hadoop's user lookup.
if ! whoami >/dev/null 2>&1; then
  echo "entrypoint: uid $(id -u) has no passwd entry; run as 185 (spark) or the image's user" >&2
fi

if [ -n "${PYSPARK_PYTHON:-}" ]; then export PYSPARK_PYTHON; fi
if [ -n "${PYSPARK_DRIVER_PYTHON:-}" ]; then export PYSPARK_DRIVER_PYTHON; fi
SPARK_CLASSPATH="${SPARK_CLASSPATH:+$SPARK_CLASSPATH:}${SPARK_HOME}/jars/*"
if [ -n "${HADOOP_CONF_DIR:-}" ]; then SPARK_CLASSPATH="$HADOOP_CONF_DIR:$SPARK_CLASSPATH"; fi
if [ -n "${SPARK_CONF_DIR:-}" ]; then SPARK_CLASSPATH="$SPARK_CONF_DIR:$SPARK_CLASSPATH"; fi

case "${1:-}" in
  driver)
    shift 1
    CMD=("$SPARK_HOME/bin/spark-submit"
         --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}"
         --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS:-}"
         --deploy-mode client "$@")
    ;;
  executor)
    shift 1
    # The driver passes the executor's JVM options as SPARK_JAVA_OPT_0..N (Java 17's --add-opens, which
    # Arrow needs for mapInArrow, spark.executor.extraJavaOptions); in index order, as apache/spark does.
    mapfile -t SPARK_EXECUTOR_JAVA_OPTS < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/[^=]*=\(.*\)/\1/')
    CMD=("${JAVA_HOME:-/usr}/bin/java" "${SPARK_EXECUTOR_JAVA_OPTS[@]}"
         "-Xms${SPARK_EXECUTOR_MEMORY:-1g}" "-Xmx${SPARK_EXECUTOR_MEMORY:-1g}"
         -cp "$SPARK_CLASSPATH" org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
         --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES"
         --app-id "$SPARK_APPLICATION_ID" --hostname "${SPARK_EXECUTOR_POD_IP:-$(hostname)}"
         --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "${SPARK_EXECUTOR_POD_NAME:-}")
    ;;
  *)
    CMD=("$@")
    ;;
esac
if [ ${#CMD[@]} -eq 0 ]; then CMD=(bash); fi
# tini reaps the JVM's and Python workers' children and forwards signals (as in apache/spark).
exec /usr/bin/tini -s -- "${CMD[@]}"
