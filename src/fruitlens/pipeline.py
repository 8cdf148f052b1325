"""`run`, `extract`, `pca`: the stages in order, with their checks, lock, timings, progress and manifest.

A run continues whatever OUTPUT already holds for the same INPUT and settings: it lists INPUT, reads
the index of committed rows (:mod:`fruitlens.state.ledger`), drops stale rows, featurizes only new and
changed images (committed batch by batch by the workers), refits PCA on all features and writes the
manifest last. Killed at any point, the same command continues from what was committed.
"""
from __future__ import annotations

import itertools
import re
import time

from pyspark.sql import SparkSession

from fruitlens import engines
from fruitlens.config import PipelineConfig
from fruitlens.engines import FEATURE_DIM, ModelArtifact, RunInputs, prepare_model
from fruitlens.engines.model import sha256_file
from fruitlens.errors import FruitlensError
from fruitlens.featurize import SUMMARY_FIELDS, even_sizes, make_featurizer, task_sizes, warm_workers
from fruitlens.images import IMAGE_EXTENSIONS
from fruitlens.metrics import Board, MetricsServer
from fruitlens.pca_stage import drop_pca, timed_pca
from fruitlens.progress import ImageProgress, log
from fruitlens.spark import build_session, launched_by_spark_submit, store_options, store_options_before_spark
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
from fruitlens.storage.listing import list_images
from fruitlens.storage.store import Store, StoreOptions, fetch
from fruitlens.testing import faults


class InputError(FruitlensError, ValueError):
    """INPUT is missing, empty, or holds no images."""


class ErrorRateError(FruitlensError, RuntimeError):
    """More images ended as errors than ``--max-error-rate`` allows: the run is not published."""


class WorkerError(FruitlensError, RuntimeError):
    """A worker stopped the feature job with an error a user can act on (a full disk, an unreachable OUTPUT)."""


def check_paths(config: PipelineConfig, options: StoreOptions) -> tuple[Store, Store, list[SourceFile]]:
    """INPUT listed (it exists and holds images), OUTPUT usable for it; the stores and the listing."""
    input_uri, output_uri = uris.qualify(config.input), uris.qualify(config.output)
    source, out = Store(input_uri, options), Store(output_uri, options)
    listing = list_input(source, config.limit)
    check_reusable(out, input_uri, overwrite=config.overwrite)
    return source, out, listing


def list_input(source: Store, limit: int | None) -> list[SourceFile]:
    """Every image file below INPUT (sorted by path), with its version; fails naming INPUT if none.

    Hidden names (``.``/``_``), which Spark never reads, are skipped; empty files are listed (and
    become error rows), and so are the links, loops and names that cannot be read (``problem``, see
    :mod:`fruitlens.storage.listing`), so nothing that looks like an image silently vanishes.
    """
    if not source.exists():
        raise InputError(f"INPUT {source.uri} does not exist; check the path (and credentials for s3:// URIs)")
    files = [SourceFile(source.spark_path(e.path), e.size, e.mtime_ns // 1000, e.problem)
             for e in list_images(source)]
    if not files:
        raise InputError(
            f"INPUT {source.uri} holds no images ({', '.join(IMAGE_EXTENSIONS)}, any letter case, in any sub-folder)")
    files.sort(key=lambda f: f.path)
    return files[:limit] if limit else files


def resolve_model(spark: SparkSession, config: PipelineConfig, options: StoreOptions, out: Store | None = None,
                  listing: list[SourceFile] = (), source: Store | None = None) -> ModelArtifact:
    """Resolve weights on the driver (fetching a remote .h5 once) and ship the engine's file to workers.

    int8: OUTPUT's own model (a resumed run), else one calibrated on INPUT's photos (``listing``)."""
    weights = config.weights if config.weights == "imagenet" else str(fetch(config.weights, options))
    run = RunInputs(out=None if config.overwrite else out, paths=tuple(f.path for f in listing if f.problem is None),
                    source=source)
    artifact = prepare_model(config.engine, weights, image_size=config.image_size, run=run)
    spark.sparkContext.addFile(artifact.path)  # executors get it from the driver, never from the internet
    return artifact


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
    totals = {"images": 0, "features": 0, "errors": 0, "read_errors": 0, "read_decode_s": 0.0, "inference_s": 0.0}
    if not todo:
        return {**totals, "tasks": 0, "python_workers": 0}
    sc = spark.sparkContext
    sizes = (even_sizes(len(todo), config.partitions) if config.partitions
             else task_sizes(len(todo), sc.defaultParallelism, min_images=config.commit_size))
    rows, bounds = [(f.path, f.size, f.modified_us) for f in todo], list(itertools.accumulate(sizes, initial=0))
    tasks = [rows[a:b] for a, b in itertools.pairwise(bounds)]
    fn = make_featurizer(artifact, batch_size=config.batch_size, commit_size=config.commit_size,
                         input_uri=input_uri, output_uri=out.uri, options=options, progress=progress,
                         retry_timeout=config.retry_timeout, max_image_mpx=config.max_image_mpx)
    workers: set[int] = set()
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
    for summary in summaries:
        row = dict(zip(SUMMARY_FIELDS, summary, strict=True))
        for key in totals:
            totals[key] += row[key]
        workers.add(row["worker"])
    return {**totals, "tasks": len(tasks), "python_workers": len(workers)}


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
    input_uri, output_uri = uris.qualify(config.input), uris.qualify(config.output)
    if launched_by_spark_submit():  # the JVM runs already, with settings (spark-defaults) we only read from it
        spark = build_session(config)
        source, out, listing = check_paths(config, options := store_options(spark, input_uri, output_uri))
    else:  # INPUT and OUTPUT checked before the JVM's seconds of start-up: a wrong path fails at once
        options = store_options_before_spark(config, input_uri, output_uri)
        source, out, listing = check_paths(config, options)
        spark = build_session(config)
    artifact = resolve_model(spark, config, options, out, listing, source)
    warm = warm_workers(spark, artifact, batch_size=config.batch_size)
    board = Board(spark.sparkContext.uiWebUrl)
    with MetricsServer(config.metrics_port, board) as served, warm, take_lock(out, config) as lock:
        if served.port:
            log(f"metrics: Prometheus text at http://{spark.sparkContext.getConf().get('spark.driver.host')}:"
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
        ledger.apply(out, plan, after_write=lambda: faults.kill_point("cleanup"))
        drop_derived(out)
        todo = [f for f in plan.todo if f.problem is None]
        unusable, unlisted = ledger.commit_listing_errors(out, [f for f in plan.todo if f.problem is not None])
        warm.wait() if todo else warm.cancel()  # the workers' start-up counts as setup
        timer.lap("setup", t)
        log(f"setup: input {input_uri}: {len(listing)} images; reused {plan.reused}, new {plan.new}, "
            f"changed {plan.changed}, removed {plan.removed}, retried {plan.retried}; engine "
            f"{engines.spec(artifact.engine).runtime} {artifact.precision} {artifact.image_size}px, "
            f"{spark.sparkContext.defaultParallelism} task slots ({timer.seconds['setup']:.1f} s)")

        t = time.perf_counter()
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
        if with_pca:
            pca = timed_pca(spark, config, out, timer, counts["features"])
        else:
            drop_pca(out)

        manifest = new_manifest(
            lock, input_uri=input_uri, output_uri=out.uri, counts=counts, engine=engines.describe(artifact), pca=pca,
            worker={"decode_resize_s": round(done["read_decode_s"], 3),
                    "inference_s": round(done["inference_s"], 3), "images": done["images"]},
            spark={"master": spark.sparkContext.master, "task_slots": spark.sparkContext.defaultParallelism,
                   "feature_tasks": done["tasks"], "python_workers": done["python_workers"]},
            config=config.to_dict(), history=history)
        if config.train:  # before the manifest, so its metrics and timing are in it
            from fruitlens.classify.train import train

            t = time.perf_counter()
            manifest["classifier"] = train(spark, out, weights=config.weights, weights_sha256=artifact.sha256,
                                           engine=manifest["engine"])
            timer.lap("train", t)
        manifest = finished(manifest, lock, timer)
        publish(out, lock, manifest, before_publish=lambda: faults.kill_point("manifest"))
        _done(out, timer)
        if config.report:  # after: the report shows the finished manifest
            from fruitlens.classify.report import write_report

            write_report(spark, out)
        return manifest




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
