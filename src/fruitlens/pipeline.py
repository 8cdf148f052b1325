"""`run`, `extract`, `pca`: the stages in order, with their checks, lock, timings, progress and manifest.

A run continues whatever OUTPUT already holds for the same INPUT and settings: it lists INPUT, reads
the index of committed rows (:mod:`fruitlens.state.ledger`), drops stale rows, featurizes only new and
changed images (committed batch by batch by the workers), refits PCA from the moments of all features
(reading only the new feature files: fruitlens.pca_state) and writes the manifest last. Killed at any
point, the same command continues from what was committed.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from fruitlens import console, cost, engines, pca_state
from fruitlens.config import PipelineConfig
from fruitlens.engines import FEATURE_DIM, ModelArtifact, RunInputs, prepare_model
from fruitlens.engines.model import sha256_file
from fruitlens.errors import FruitlensError
from fruitlens.featurize import SUMMARY_FIELDS, even_sizes, make_featurizer, task_sizes, warm_workers
from fruitlens.images import IMAGE_EXTENSIONS
from fruitlens.metrics import Board, MetricsServer
from fruitlens.pca_stage import drop_pca, timed_pca
from fruitlens.progress import ImageProgress, log
from fruitlens.spark import (
    build_session,
    launched_by_spark_submit,
    make_active,
    master_of,
    require_spark_s3a,
    store_options,
    store_options_before_spark,
)
from fruitlens.state import layout, ledger
from fruitlens.state.layout import LAYOUT_VERSION, OutputLayout
from fruitlens.state.ledger import SourceFile
from fruitlens.state.manifest import (
    check_reusable,
    check_settings,
    clear,
    drop_derived,
    leftovers,
    publish,
    read_manifest,
    update_manifest,
)
from fruitlens.state.run import (
    Timer,
    finished,
    library_versions,
    new_manifest,
    record_failure,
    start_record,
    take_lock,
)
from fruitlens.storage import uris
from fruitlens.storage.listing import LIST_THREADS, list_batches
from fruitlens.storage.store import Store, StoreOptions, fetch
from fruitlens.testing import faults


class InputError(FruitlensError, ValueError):
    """INPUT is missing, empty, or holds no images."""


class ErrorRateError(FruitlensError, RuntimeError):
    """More images ended as errors than ``--max-error-rate`` allows: the run is not published."""


class WorkerError(FruitlensError, RuntimeError):
    """A worker stopped the feature job with an error a user can act on (a full disk, an unreachable OUTPUT)."""


def check_paths(config: PipelineConfig, options: StoreOptions) -> tuple[Store, Store, pa.Table]:
    """INPUT listed (it exists and holds images), OUTPUT usable for it; the stores and the listing."""
    source, out = check_stores(config, options)
    return source, out, list_input(source, config.limit)


def check_stores(config: PipelineConfig, options: StoreOptions) -> tuple[Store, Store]:
    """INPUT exists and OUTPUT is usable for it (cheap: no listing); the two stores."""
    input_uri, output_uri = uris.qualify(config.input), uris.qualify(config.output)
    source, out = Store(input_uri, options), Store(output_uri, options)
    if not source.exists():
        raise InputError(f"INPUT {source.uri} does not exist; check the path (and credentials for s3:// URIs)")
    check_reusable(out, input_uri, overwrite=config.overwrite)
    return source, out


def list_input(source: Store, limit: int | None, *, threads: int = LIST_THREADS) -> pa.Table:
    """Every image file below INPUT (sorted by path), with its version, as a :data:`ledger.LISTING_SCHEMA`
    table (columns: 10 million photos are ~1 GB, not ~5 GB of objects); fails naming INPUT if none.

    Hidden names (``.``/``_``), which Spark never reads, are skipped; empty files are listed (and
    become error rows), and so are the links, loops and names that cannot be read (``problem``, see
    :mod:`fruitlens.storage.listing`), so nothing that looks like an image silently vanishes.
    """
    if not source.exists():
        raise InputError(f"INPUT {source.uri} does not exist; check the path (and credentials for s3:// URIs)")
    files = listing_of(source, list_batches(source, threads=threads))
    if not files.num_rows:
        raise InputError(
            f"INPUT {source.uri} holds no images ({', '.join(IMAGE_EXTENSIONS)}, any letter case, in any sub-folder)")
    return files.slice(0, limit) if limit else files


def listing_of(source: Store, batches) -> pa.Table:
    """:func:`fruitlens.storage.listing.list_batches`' batches as the plan's listing (Spark's path spelling,
    time in µs), converted batch by batch as they arrive, sorted by path."""
    prefix = "file:" if source.is_local else f"{source.scheme}://"
    parts = [pa.table([pc.binary_join_element_wise(prefix, b.column(0), ""), b.column(1),
                       pc.divide(b.column(2), 1000), b.column(3)], schema=ledger.LISTING_SCHEMA)
             for b in batches if b.num_rows]
    table = pa.concat_tables(parts) if parts else ledger.LISTING_SCHEMA.empty_table()
    paths = table.column(ledger.PATH)
    if table.num_rows > 1 and not pc.all(pc.less(paths[:-1], paths[1:])).as_py():  # S3 lists in key order
        table = table.take(pc.sort_indices(table, [(ledger.PATH, "ascending")]))
    return table


def split_tasks(todo: list[SourceFile], sizes: list[int]) -> list[list[tuple[str, int, int]]]:
    """The feature job's tasks: ``todo``'s (path, size, modified_us) rows in runs of ``sizes``."""
    rows, bounds = [(f.path, f.size, f.modified_us) for f in todo], list(itertools.accumulate(sizes, initial=0))
    return [rows[a:b] for a, b in itertools.pairwise(bounds)]


def resolve_model(spark: SparkSession, config: PipelineConfig, options: StoreOptions, out: Store | None = None,
                  listing: pa.Table | None = None, source: Store | None = None) -> ModelArtifact:
    """:func:`prepare_artifact`, and the engine's file shipped to the workers."""
    artifact = prepare_artifact(config, options, out, listing, source)
    spark.sparkContext.addFile(artifact.path)  # executors get it from the driver, never from the internet
    return artifact


def prepare_artifact(config: PipelineConfig, options: StoreOptions, out: Store | None = None,
                     listing: pa.Table | None = None, source: Store | None = None) -> ModelArtifact:
    """Resolve weights on the driver (fetching a remote .h5 once) and make or find the engine's model file
    (no Spark: it runs while the JVM starts).

    int8: OUTPUT's own model (a resumed run), else one calibrated on INPUT's photos (``listing``)."""
    weights = config.weights if config.weights == "imagenet" else str(fetch(config.weights, options))
    usable = () if listing is None else pc.filter(listing.column(ledger.PATH), listing.column("problem").is_null())
    run = RunInputs(out=None if config.overwrite else out, paths=tuple(usable.to_pylist() if len(usable) else ()),
                    source=source)
    return prepare_model(config.engine, weights, image_size=config.image_size, run=run)


class Background:
    """A call on a daemon thread (the JVM's start-up): :meth:`join` returns its result or raises its error.
    Daemon: a run that fails meanwhile (an INPUT without images) exits without waiting for it."""

    def __init__(self, fn, *args) -> None:
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True, name="fruitlens-setup")
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._error = exc

    def join(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def timed(parts: dict[str, float], name: str, fn, *args):
    """``fn(*args)``, its wall seconds recorded in ``parts[name]`` (the setup's parts: they overlap)."""
    t = time.perf_counter()
    try:
        return fn(*args)
    finally:
        parts[name] = round(time.perf_counter() - t, 3)


def feature_settings(input_uri: str, artifact: ModelArtifact) -> dict:
    """What makes two feature vectors comparable; a run continues OUTPUT only if these are equal."""
    size = artifact.image_size
    settings = {"input": input_uri, "layout_version": LAYOUT_VERSION, "model": "MobileNetV2, ImageNet, no top, avg pool",
                "weights_sha256": artifact.sha256, "image_size": [size, size], "precision": artifact.precision,
                "feature_dim": FEATURE_DIM, "preprocess": "RGB, bicubic resize, scale to [-1, 1]"}
    if artifact.precision != "fp32":  # an int8 model also depends on its calibration photos
        settings["model_sha256"] = sha256_file(artifact.path)
    return settings


def image_progress(spark: SparkSession, name: str, *, enabled: bool) -> ImageProgress:
    """Progress in images, reported by the workers to the driver's address (loopback when local)."""
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return ImageProgress(name, enabled=enabled)
    return ImageProgress(name, bind_host="0.0.0.0", advertise_host=sc.getConf().get("spark.driver.host"),
                         enabled=enabled)


def extract_stage(spark: SparkSession, config: PipelineConfig, todo: list[SourceFile], input_uri: str,
                  out: Store, options: StoreOptions, artifact: ModelArtifact, *,
                  progress: tuple[str, int] | None = None) -> dict:
    """Featurize ``todo``; the workers commit as they go; returns the summed per-batch summaries."""
    if not todo:
        return {**summed(()), "tasks": 0}
    sc = spark.sparkContext
    sizes = (even_sizes(len(todo), config.partitions) if config.partitions
             else task_sizes(len(todo), sc.defaultParallelism, min_images=config.commit_size))
    tasks = split_tasks(todo, sizes)
    fn = make_featurizer(artifact, config, input_uri=input_uri, output_uri=out.uri, options=options,
                         progress=progress)
    # One element (a task's list of rows) per partition: Spark runs partitions in this order. The input
    # must be read to its end, else PySpark does not reuse the Python worker (and its loaded model).
    try:
        summaries = sc.parallelize(tasks, len(tasks)).mapPartitions(
            lambda it: fn(itertools.chain.from_iterable(it))).collect()
    except Exception as exc:  # py4j wraps the worker's traceback; a fruitlens error in it is the one line
        error = worker_error(exc)
        if error is None:
            raise
        raise error from None
    return {**summed(summaries), "tasks": len(tasks)}


def summed(summaries) -> dict:
    """The feature job's per-batch summaries (:data:`SUMMARY_FIELDS`) added up, and the workers counted."""
    totals = {"images": 0, "features": 0, "errors": 0, "read_errors": 0, "read_decode_s": 0.0, "inference_s": 0.0}
    workers: set[int] = set()
    for summary in summaries:
        row = dict(zip(SUMMARY_FIELDS, summary, strict=True))
        for key in totals:
            totals[key] += row[key]
        workers.add(row["worker"])
    return {**totals, "python_workers": len(workers)}


def extract_in_driver(config: PipelineConfig, todo: list[SourceFile], input_uri: str, out: Store,
                      options: StoreOptions, artifact: ModelArtifact, *,
                      progress: tuple[str, int] | None = None) -> dict:
    """A small run's images featurized in this process by the function a Spark task runs (the same reads,
    decodes, inference and commits, batch by batch): no Python workers to start, no model to ship. One
    part per core on threads, each with a one-thread engine (one ONNX Runtime session, run concurrently;
    they release the GIL), as Spark's slots would: a single call with an all-core engine leaves the cores
    to its spinning threads while its one decoding thread is the bottleneck."""
    fn = make_featurizer(artifact, config, input_uri=input_uri, output_uri=out.uri, options=options,
                         progress=progress, in_driver=True)
    tasks = split_tasks(todo, even_sizes(len(todo), local_slots(config)))
    stop = threading.Event()

    def drive(rows) -> list:
        out = []
        for summary in fn(rows):  # one per committed batch
            out.append(summary)
            if stop.is_set():  # Ctrl-C or a failure elsewhere: end after the batch just committed
                break
        return out

    with ThreadPoolExecutor(len(tasks), thread_name_prefix="fruitlens-extract") as pool:
        try:
            parts = list(pool.map(drive, tasks))
        except BaseException:
            stop.set()  # the running parts end after their current batch; the queued ones never start
            pool.shutdown(cancel_futures=True)
            raise
    done = summed(itertools.chain.from_iterable(parts))
    return {**done, "tasks": 0, "python_workers": 0}


def local_slots(config: PipelineConfig) -> int:
    """The task slots of a local master: ``local[N]`` → N, ``local`` → 1, ``local[*]`` → the cores."""
    found = re.match(r"local\[(\d+|\*)", master_of(config))
    if found is None:
        return 1
    return os.cpu_count() or 1 if found.group(1) == "*" else max(1, int(found.group(1)))


class Session:
    """The SparkSession, or the background start of one (:class:`Background`), joined when first needed;
    how long the run waited for it goes into the setup's parts (``spark_wait``)."""

    def __init__(self, spark: SparkSession | None, starting: Background | None, parts: dict[str, float]) -> None:
        self._spark, self._starting, self._parts = spark, starting, parts
        self.setup_done = False
        self.late_wait_s = 0.0  # waited after the setup (a run featurized in the driver): setup all the same

    def get(self) -> SparkSession:
        if self._spark is None:
            self._spark = timed(self._parts, "spark_wait", self._starting.join)
            make_active(self._spark)
            console.stop_on_interrupt()  # (build_session's own call was on the other thread)
            if self.setup_done:
                self.late_wait_s = self._parts["spark_wait"]
        return self._spark

    def warm_workers(self, artifact: ModelArtifact, config: PipelineConfig):
        spark = self.get()
        spark.sparkContext.addFile(artifact.path)  # executors get it from the driver, never from the internet
        return warm_workers(spark, artifact, batch_size=config.batch_size)


_WORKER_ERROR = re.compile(r"^fruitlens\.[\w.]+Error: (.+)$", re.MULTILINE)


def worker_error(exc: BaseException) -> WorkerError | None:
    """The fruitlens error a Python worker raised, out of the Spark job failure that carries its traceback."""
    found = _WORKER_ERROR.findall(str(exc))
    if not found:
        return None
    line = found[-1].strip()
    return WorkerError(line if "re-run" in line else f"{line} (the batches committed so far are kept: re-run the "
                       "same command to continue)")


def check_error_rate(config: PipelineConfig, out: Store, counts: dict) -> None:
    """Fail the run when more images than ``--max-error-rate`` allows ended as errors (of either kind)."""
    matched, errors = counts["matched"], counts["errors"]
    if not config.max_error_rate or not matched or errors / matched <= config.max_error_rate:
        return
    reasons = "; ".join(f"{n}x {reason}" for reason, n in ledger.error_reasons(out))
    retry_hint = (" (read errors are retried by the next run)" if counts["read_errors"] else "")
    raise ErrorRateError(
        f"{errors} of {matched} images ({errors / matched:.1%}) ended as errors ({counts['decode_errors']} "
        f"decode, {counts['read_errors']} read), more than --max-error-rate {config.max_error_rate:g} allows; "
        f"commonest: {reasons}. The {counts['features']} features are committed: fix the cause and re-run "
        f"the same command to continue{retry_hint}, or raise --max-error-rate")


def run(config: PipelineConfig, *, with_pca: bool = True) -> dict:
    """`fruitlens run` (and `extract` with ``with_pca=False``): images → features (→ PCA) → manifest."""
    timer = Timer()
    t = time.perf_counter()
    parts: dict[str, float] = {}  # the setup's parts, each timed where it runs (several overlap)
    input_uri, output_uri = uris.qualify(config.input), uris.qualify(config.output)
    prices = cost.load_prices(config.price_table)  # a wrong file fails now, not after the run
    if launched_by_spark_submit():  # the JVM runs already, with settings (spark-defaults) we only read from it
        spark = timed(parts, "spark_session", build_session, config)
        source, out = check_stores(config, options := store_options(spark, input_uri, output_uri))
        listing = timed(parts, "listing", list_input, source, config.limit)
        artifact = timed(parts, "model", prepare_artifact, config, options, out, listing, source)
    else:  # INPUT and OUTPUT checked before the JVM's seconds of start-up: a wrong path fails at once
        options = store_options_before_spark(config, input_uri, output_uri)
        source, out = check_stores(config, options)
        # INPUT listed first: an INPUT without images fails before the JVM would make OUTPUT's event-log
        # folder. Then the JVM (another process) starts while this thread prepares the model: the JVM's
        # seconds, not their sum (docs/performance.md, "Setup").
        listing = timed(parts, "listing", list_input, source, config.limit)
        starting = Background(timed, parts, "spark_session", build_session, config)
        artifact = timed(parts, "model", prepare_artifact, config, options, out, listing, source)
        spark = None
    session = Session(spark, None if spark else starting, parts)
    if output_uri.startswith("s3a://") and (config.train or config.report
                                            or (with_pca and len(listing) > config.driver_pca_max_rows)):
        require_spark_s3a(session.get(), output_uri, "--train/--report or a PCA over more than "
                          f"{config.driver_pca_max_rows} rows (driver_pca_max_rows):")
    # A small run on a local master may featurize in this process (no Python workers to start): decided on
    # the plan, made while the JVM starts. Otherwise the workers warm up while the driver plans.
    may_drive = (spark is None and config.driver_max_images > 0 and not config.partitions
                 and master_of(config).startswith("local") and not faults.needs_workers())
    warm = None if may_drive else session.warm_workers(artifact, config)
    t_plan = time.perf_counter()
    board = Board()
    with MetricsServer(config.metrics_port, board) as served, warm or contextlib.nullcontext(), \
            take_lock(out, config) as lock:
        if served.port:  # the endpoint relays Spark's pages too: their address once the JVM is up
            board.spark_ui = (session.get().sparkContext.uiWebUrl or "").rstrip("/") or None
            log(f"metrics: Prometheus text at http://{session.get().sparkContext.getConf().get('spark.driver.host')}:"
                f"{served.port}/metrics (fruitlens' figures, then Spark's)")
        if config.overwrite:
            clear(out)
        check_settings(out, feature_settings(input_uri, artifact), overwrite=config.overwrite)
        engines.keep_in_output(out, artifact)  # int8: resumed runs and `train` use this very model
        history = start_record(out, lock)
        out.make_dirs(*layout.COMMITTED)
        for path in leftovers(out):  # of writes a killed run left
            out.delete(path)
        plan = ledger.plan(ledger.read_index(out), listing)
        # The PCA's moments record drops the files about to be deleted or rewritten (fruitlens.pca_state).
        pca_state.forget(out, [*plan.delete, *(f.path for f, _ in plan.rewrite)])
        ledger.apply(out, plan, after_write=lambda: faults.kill_point("cleanup"))
        drop_derived(out)
        todo = [f for f in plan.todo if f.problem is None]
        unusable, unlisted = ledger.commit_listing_errors(out, [f for f in plan.todo if f.problem is not None])
        parts["plan"] = round(time.perf_counter() - t_plan, 3)
        in_driver = may_drive and len(todo) <= config.driver_max_images
        if todo and warm is None and not in_driver:
            warm = session.warm_workers(artifact, config)
        if warm is not None:  # the workers' start-up counts as setup
            with warm:
                timed(parts, "workers_wait", warm.wait if todo else warm.cancel)
        timer.lap("setup", t)
        session.setup_done = True
        where = ("in the driver" if in_driver else
                 f"{session.get().sparkContext.defaultParallelism} task slots" if todo else "nothing to featurize")
        log(f"setup: input {input_uri}: {len(listing)} images; reused {plan.reused}, new {plan.new}, "
            f"changed {plan.changed}, removed {plan.removed}, retried {plan.retried}; engine "
            f"{engines.spec(artifact.engine).runtime} {artifact.precision} {artifact.image_size}px, "
            f"{where} ({timer.seconds['setup']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ")")

        t = time.perf_counter()
        if in_driver:  # the JVM keeps starting meanwhile (the PCA and the manifest need it)
            with ImageProgress("extract", enabled=config.progress) as progress:
                progress.total = len(todo)
                board.watch("extract", progress)
                done = extract_in_driver(config, todo, input_uri, out, options, artifact, progress=progress.address)
        else:
            spark = session.get()
            with image_progress(spark, "extract", enabled=config.progress) as progress:
                progress.total = len(todo)
                board.watch("extract", progress)
                done = extract_stage(spark, config, todo, input_uri, out, options, artifact,
                                     progress=progress.address)
        seconds = timer.lap("extract", t)
        log(f"extract: {done['images']} images -> {done['features']} features, {done['errors']} errors "
            f"({done['errors'] - done['read_errors']} decode, {done['read_errors']} read) "
            f"in {seconds:.1f} s ({done['images'] / max(seconds, 1e-9):.1f} images/s)"
            + (f"; {unusable} more could not be read as listed (links, names: see OUTPUT/errors)" if unusable else ""))
        # The kept errors are decode errors (read errors are always redone).
        errors, read_errors = plan.kept["errors"] + done["errors"] + unusable, done["read_errors"] + unlisted
        counts = {"matched": len(listing), "features": plan.kept["features"] + done["features"],
                  "errors": errors, "decode_errors": errors - read_errors, "read_errors": read_errors,
                  "processed": done["images"] + unusable, **plan.counts()}
        try:
            check_error_rate(config, out, counts)
        except ErrorRateError as exc:  # `status` tells why this run did not finish
            record_failure(out, lock, str(exc), counts)
            raise

        pca = None
        spark = session.get()
        if session.late_wait_s:  # the JVM's start-up not hidden behind the extraction counts as setup
            timer.seconds["setup"] = round(timer.seconds["setup"] + session.late_wait_s, 3)
            log(f"setup: waited {session.late_wait_s:.1f} s more for Spark's JVM")
        if with_pca:
            pca = timed_pca(spark, config, out, timer, counts["features"])
        else:
            drop_pca(out)

        manifest = new_manifest(
            lock, input_uri=input_uri, output_uri=out.uri, counts=counts, engine=engines.describe(artifact), pca=pca,
            worker={"decode_resize_s": round(done["read_decode_s"], 3),
                    "inference_s": round(done["inference_s"], 3), "images": done["images"]},
            spark={"master": spark.sparkContext.master, "task_slots": spark.sparkContext.defaultParallelism,
                   "feature_tasks": done["tasks"], "python_workers": done["python_workers"],
                   "extract_on": "driver" if in_driver else "spark"},
            config=config.to_dict(), history=history)
        manifest["setup_s"] = parts
        if config.train:  # before the manifest, so its metrics and timing are in it
            from fruitlens.classify.train import train

            t = time.perf_counter()
            manifest["classifier"] = train(spark, out, weights=config.weights, weights_sha256=artifact.sha256,
                                           engine=manifest["engine"])
            timer.lap("train", t)
        manifest = finished(manifest, lock, timer)
        manifest["cost"] = run_cost(spark, manifest, prices)
        manifest["history"][-1]["cost"] = {k: manifest["cost"][k] for k in ("total", "currency", "per_100k_images")}
        publish(out, lock, manifest, before_publish=lambda: faults.kill_point("manifest"))
        _done(out, timer)
        if config.report:  # after: the report shows the finished manifest
            from fruitlens.classify.report import write_report

            write_report(spark, out)
        return manifest




def run_cost(spark: SparkSession, manifest: dict, prices: dict) -> dict:
    """The run's estimated cost (fruitlens.cost): what its driver and executors request × its wall time."""
    sc = spark.sparkContext
    local = sc.master.startswith("local")
    conf = dict(sc.getConf().getAll())
    executors = 0
    if not local:  # the executors registered now (the driver's own entry is not one): an estimate
        try:
            executors = max(0, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
        except Exception:  # py4j: an estimate must never fail the run
            executors = int(conf.get("spark.executor.instances", 0) or 0)
    resources = cost.requested(conf, local=local, task_slots=sc.defaultParallelism, executors=executors)
    return cost.estimate(resources, manifest["timings_s"]["total"], manifest["counts"]["processed"], prices)


def refit_pca(config: PipelineConfig) -> dict:
    """`fruitlens pca OUTPUT`: (re)fit PCA on OUTPUT/features and update the manifest."""
    timer = Timer()
    t = time.perf_counter()
    root = uris.qualify(config.output)
    if not launched_by_spark_submit():  # a clear error before the JVM starts
        read_manifest(Store(root, store_options_before_spark(config, root)))
    spark = build_session(config)
    out = Store(root, store_options(spark, root))
    read_manifest(out)  # a clear error before taking the lock

    def refit(manifest: dict) -> dict:
        drop_derived(out)
        manifest.pop("classifier", None)
        timer.lap("setup", t)
        manifest["pca"] = timed_pca(spark, config, out, timer, manifest["counts"]["features"])
        manifest["config"] = {**manifest.get("config", {}),
                              **{k: v for k, v in config.to_dict().items() if k.startswith("pca_")}}
        manifest["timings_s"] = {**manifest.get("timings_s", {}), "pca": timer.seconds["pca"]}
        manifest["versions"] = library_versions()
        return manifest

    with take_lock(out, config) as lock:  # the PCA outputs are about to change: unpublished meanwhile
        manifest = update_manifest(out, lock, refit, unpublished=True,
                                   before_publish=lambda: faults.kill_point("manifest"))
    _done(out, timer)
    return manifest


def _done(out: Store, timer: Timer) -> None:
    log(f"done: {OutputLayout(out.uri).manifest} ({timer.total():.1f} s in all)")
