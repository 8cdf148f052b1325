"""Building the SparkSession from the config: the only place Spark settings are chosen (and read back,
for the Python side's storage options)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from fruitlens import console, jvm_archive
from fruitlens.config import ConfigError, PipelineConfig
from fruitlens.progress import log
from fruitlens.state.layout import SPARK_EVENTS
from fruitlens.storage import uris
from fruitlens.storage.store import Store, StoreOptions


def spark_settings(config: PipelineConfig) -> dict[str, str]:
    """Settings fruitlens needs whatever the cluster; ``config.spark_conf`` overrides any of them."""
    settings = {
        "spark.app.name": "fruitlens",
        # Arrow batches of feature rows (the PCA's Spark passes on large sets): one commit batch each.
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.commit_size),
        # Reused Python workers keep their model between tasks (built once per worker, not per task).
        "spark.python.worker.reuse": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # Each image costs its open overhead, so many small files split into several tasks.
        # Image files have no useful locality (S3, or a local disk every slot shares): waiting the
        # default 3 s for a "local" slot before each task only adds idle time between tasks.
        "spark.locality.wait": "0s",
        # A few thousand feature rows need no 200-way shuffles; adaptive execution sizes the rest.
        "spark.sql.shuffle.partitions": "16",
    }
    # Prometheus: the metrics system's servlet on the driver UI (/metrics/prometheus) and the executors'
    # summaries (/metrics/executors/prometheus); fruitlens.metrics relays both beside its own figures.
    settings["spark.ui.prometheus.enabled"] = "true"
    settings["spark.metrics.conf.*.sink.prometheusServlet.class"] = "org.apache.spark.metrics.sink.PrometheusServlet"
    settings["spark.metrics.conf.*.sink.prometheusServlet.path"] = "/metrics/prometheus"
    # Metric names start with this instead of each run's application id: one name across runs for dashboards.
    settings["spark.metrics.namespace"] = "fruitlens"
    events = event_log_dir(config)
    if events:  # the finished run's Spark UI, served later by `fruitlens history`
        settings["spark.eventLog.enabled"] = "true"
        # Spark's own syntax when given with --conf; fruitlens' literal URI encoded for java.net.URI
        settings["spark.eventLog.dir"] = events if config.spark_conf.get("spark.eventLog.dir") else uris.java_uri(events)
        settings["spark.eventLog.compress"] = "true"  # zstd: a few hundred KB per run instead of MBs
    if master_of(config).startswith("local"):
        settings["spark.driver.memory"] = "4g"  # local mode: driver = executor; only read at JVM start
        # One machine: Spark (and its UI) on loopback, not on whatever interface the hostname maps to.
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.driver.bindAddress"] = "127.0.0.1"
        # Here the JVM only coordinates (images and features live in the Python workers): C2's compiles
        # would cost ~11 CPU-s of start-up; C1 alone halves the JVM's CPU time (docs/performance.md).
        settings["spark.driver.extraJavaOptions"] = "-XX:TieredStopAtLevel=1"
    settings.update(config.spark_conf)
    return settings


def event_log_dir(config: PipelineConfig) -> str | None:
    """Where this session's event log goes: ``--conf spark.eventLog.dir`` (if ``spark.eventLog.enabled`` is
    not false), else ``--event-log``, else OUTPUT/_spark-events when OUTPUT is local; None when off.

    An S3 OUTPUT gets an event log only when told where: Spark writes it through its own (Hadoop) file system,
    which knows ``s3://`` only on EMR (EMRFS, whose event log EMR keeps itself) and ``s3a://`` only with the
    S3A connector; a default the JVM cannot write would stop the run before it starts."""
    conf = config.spark_conf
    if config.event_log == "off" or conf.get("spark.eventLog.enabled", "").lower() == "false":
        return None
    if conf.get("spark.eventLog.dir"):
        return conf["spark.eventLog.dir"]
    if config.event_log:
        return uris.qualify(config.event_log)
    output = uris.qualify(config.output)
    return f"{output}/{SPARK_EVENTS}" if uris.parse(output).store == "local" else None


def prepare_event_log(events: str, options: StoreOptions) -> bool:
    """Create the event log folder before the session starts: Spark refuses to start on a missing one (and on
    S3 a prefix without objects is missing, hence the directory marker). False (with a warning) when it
    cannot be made: that costs the run its event log, not the run itself."""
    if uris.has_scheme(events) and uris.parse(events).store not in ("local", "s3"):
        return True  # hdfs:// and the like: Spark's business
    try:
        store = Store(uris.qualify(events), options)
        if store.is_local:
            store.make_dirs("")
        elif not store.exists():
            store.fs.create_dir(store.fs_path(), recursive=True)  # an empty "folder/" marker object
        return True
    except Exception as exc:  # observability must not fail the job
        log(f"warning: no Spark event log: cannot create {events} ({type(exc).__name__}: {exc}); "
            "set --event-log to a writable folder or URI, or --event-log off")
        return False


def _submitted_settings() -> dict[str, str]:
    """What spark-submit was given (--conf, spark-defaults.conf): the JVM's system properties, before the
    session exists. Empty when fruitlens starts the JVM itself."""
    if not launched_by_spark_submit():
        return {}
    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def master_of(config: PipelineConfig) -> str:
    """``--master`` if given; under spark-submit (which sets the gateway port) its own master; else local."""
    if config.master:
        return config.master
    if launched_by_spark_submit():
        return ""  # spark-submit already chose (k8s://, yarn, ...) and the session inherits it
    return "local[*]"


def launched_by_spark_submit() -> bool:
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def make_active(spark: SparkSession) -> None:
    """Make ``spark`` this thread's active session. The JVM keeps the active session per thread, so a session
    built on another thread (the run's background start) is not the one ``SparkSession.getActiveSession()``
    finds here (user code, notebooks, tests); PySpark has no public call for it (3.5 and 4.0 alike)."""
    find_class = getattr(SparkSession, "_get_j_spark_session_class", None)  # 4.0: classic.SparkSession
    jclass = find_class(spark._jvm) if find_class else spark._jvm.SparkSession
    jclass.setActiveSession(spark._jsparkSession)


def build_session(config: PipelineConfig) -> SparkSession:
    console.stop_on_interrupt()  # while the JVM starts, and again below: PySpark's context installs its own
    master = master_of(config)
    if master.startswith("local"):
        # Local workers must run this interpreter (where fruitlens is installed), not `python3` on PATH;
        # PySpark reads only the environment variable for that.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = spark_settings(config)
    if master:
        settings["spark.master"] = master
    # A platform that keeps the event log itself (EMR on EKS's spark-defaults, for its persistent app UI, which
    # `fruitlens emr ui` opens) or a spark-submit told otherwise keeps its setting, unless fruitlens itself was
    # told where (--event-log, FRUITLENS_EVENT_LOG, --conf spark.eventLog.*).
    submitted = _submitted_settings()
    told = bool(config.event_log) or any(k.startswith("spark.eventLog.") for k in config.spark_conf)
    if not told and ("spark.eventLog.dir" in submitted or submitted.get("spark.eventLog.enabled", "").lower() == "false"):
        settings = {k: v for k, v in settings.items() if not k.startswith("spark.eventLog.")}
    elif settings.get("spark.eventLog.enabled") == "true" and not prepare_event_log(
            events := event_log_dir(config), store_options_before_spark(config, events)):
        settings["spark.eventLog.enabled"] = "false"
    if not launched_by_spark_submit() and SparkContext._active_spark_context is None:
        _start_jvm(settings)
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN" if console.verbosity() == "verbose" else "ERROR")
    console.stop_on_interrupt()
    if spark.sparkContext.uiWebUrl:
        log(f"Spark UI: {spark.sparkContext.uiWebUrl} (while the job runs)")
    return spark


def _start_jvm(settings: dict[str, str], *, dump_archive: Path | None = None) -> None:
    """Start Spark's JVM ourselves so that its stderr (and the Python workers') goes through
    :class:`console.JvmStderr`: hidden unless verbose, its tail kept for a failure report. A local master's
    JVM maps the class archive when there is one (:mod:`fruitlens.jvm_archive`), or dumps one at its exit
    to ``dump_archive``."""
    from subprocess import PIPE

    from pyspark.java_gateway import launch_gateway

    global _jvm_process
    options = console.jvm_options()
    archive = None
    if dump_archive is not None:
        options = f"{options} {jvm_archive.dump_options(dump_archive)}"
    elif settings.get("spark.master", "").startswith("local") and (archive := jvm_archive.archive_path()):
        if not jvm_archive.usable(archive):
            if archive.exists():
                jvm_archive.discard(archive)
                log(f"warning: the class archive {archive} is damaged (not the size it was made with): removed it, "
                    "starting Spark's JVM without it (`fruitlens doctor --jvm-archive` makes a new one)")
            archive = None
    key = "spark.driver.extraJavaOptions"
    given = settings.get(key)

    def launch(extra: str):
        settings[key] = " ".join(o for o in (given, extra) if o)
        return launch_gateway(SparkConf(loadDefaults=False).setAll(list(settings.items())),
                              popen_kwargs={"stderr": PIPE})

    try:
        gateway = launch(f"{options} {jvm_archive.use_options(archive)}" if archive else options)
    except RuntimeError:  # the JVM exited before it answered: a damaged archive is one known cause
        if archive is None:
            raise
        jvm_archive.discard(archive)
        log(f"warning: Spark's JVM did not start with the class archive {archive}: removed it, starting without "
            "(`fruitlens doctor --jvm-archive` makes a new one)")
        gateway = launch(options)
    _jvm_process = gateway.proc
    console.jvm_stderr = console.JvmStderr(gateway.proc.stderr, show=console.verbosity() == "verbose")
    SparkContext(conf=SparkConf(loadDefaults=False).setAll(list(settings.items())), gateway=gateway)
    console.stop_on_interrupt()


_jvm_process = None  # the JVM _start_jvm started (make_jvm_archive waits for its exit)


def make_jvm_archive() -> tuple[Path | None, str]:
    """Make the local driver JVM's class archive if there is none: a local session does what a small run
    does (a Spark job, Parquet written and read, a Spark ML PCA fitted and its metadata), then its JVM exits
    and dumps the classes it loaded; the file is renamed into place only after a clean exit. Runs in its
    own process (one JVM per process). Returns (the archive or None, what happened)."""
    import tempfile
    import time

    target = jvm_archive.archive_path()
    if target is None:
        return None, "no java: nothing to archive"
    if jvm_archive.usable(target):
        return target, f"{target} ({target.stat().st_size / 1e6:.0f} MB)"
    if SparkContext._active_spark_context is not None:
        return None, "a Spark session runs in this process already: run `fruitlens doctor --jvm-archive` alone"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fruitlens-jvm-archive-") as tmp:
        config = PipelineConfig(input=tmp, output=f"{tmp}/out", event_log="off")
        settings = {**spark_settings(config), "spark.master": master_of(config)}
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        _start_jvm(settings, dump_archive=partial)
        spark = SparkSession.builder.getOrCreate()
        _exercise(spark, tmp)
        spark.stop()
    process = _jvm_process
    process.stdin.close()  # Spark's gateway exits on EOF; the JVM dumps its classes on the way out
    code = process.wait(timeout=600)
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        return None, (f"the JVM exited with {code} and made no archive (a JDK without its base CDS archive "
                      "cannot make one): runs start without it")
    jvm_archive.record(target, partial.stat().st_size)
    os.replace(partial, target)
    return target, f"made {target} ({target.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s"


def _exercise(spark: SparkSession, tmp: str) -> None:
    """Load the classes a run loads after its session starts."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.linalg import Vectors

    spark.range(64).selectExpr("id", "cast(id as double) AS x").write.parquet(f"{tmp}/rows")
    spark.read.parquet(f"{tmp}/rows").groupBy().sum("x").collect()
    data = spark.createDataFrame([(Vectors.dense([1.0, 2.0, 0.5]),), (Vectors.dense([2.0, 1.0, 0.0]),),
                                  (Vectors.dense([0.0, 1.0, 3.0]),)], ["v"])
    model = PCA(k=2, inputCol="v", outputCol="p").fit(data)
    model.write().overwrite().save(f"{tmp}/pca")
    model.transform(data).collect()


S3A_KEYS = ("fs.s3a.endpoint", "fs.s3a.endpoint.region", "fs.s3a.access.key", "fs.s3a.secret.key",
            "fs.s3a.session.token")


def store_options(spark: SparkSession, *uris: str) -> StoreOptions:
    """S3 settings for the pyarrow side: the AWS environment, else Spark's own ``fs.s3a.*`` settings, and
    the region of each S3 bucket in ``uris``, resolved here on the driver (see StoreOptions.with_bucket_regions)."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hadoop = {k: v for k in S3A_KEYS if (v := conf.get(k))}
    return StoreOptions.from_environment(hadoop=hadoop).with_bucket_regions(*uris)


def store_options_before_spark(config: PipelineConfig, *uris: str) -> StoreOptions:
    """The same, before the JVM starts: Spark's ``fs.s3a.*`` settings are then the ``spark.hadoop.*``
    ones of ``--conf`` (and of the YAML or environment)."""
    hadoop = {k: v for k in S3A_KEYS if (v := config.spark_conf.get(f"spark.hadoop.{k}"))}
    return StoreOptions.from_environment(hadoop=hadoop).with_bucket_regions(*uris)



#: Spark's own S3 connector (hadoop-aws). fruitlens reads and writes S3 through pyarrow, but Spark reads OUTPUT
#: itself for a PCA over more than driver_pca_max_rows features, `train` and `report`.
S3A_CLASS = "org.apache.hadoop.fs.s3a.S3AFileSystem"


def require_spark_s3a(spark: SparkSession, uri: str, why: str) -> None:
    """Fail now, naming the fix, when Spark will read ``uri`` (an ``s3a://`` one) but its JVM has no S3A
    connector; the alternative is a ClassNotFoundException after the whole extraction."""
    if not uri.startswith("s3a://"):
        return
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName(S3A_CLASS, False, jvm.java.lang.Thread.currentThread().getContextClassLoader())
    except Exception:  # py4j's Py4JJavaError wrapping ClassNotFoundException
        raise ConfigError(
            f"{why} Spark reads {uri} itself, and this Spark has no S3A connector ({S3A_CLASS} is not on its "
            "classpath). The oss image has it only when built with `make build WITH_S3A=true` (docs/docker.md, "
            "\"S3\"); a local Spark takes `--conf spark.jars.packages=org.apache.hadoop:hadoop-aws:3.4.1`") from None
