"""`run`, `extract`, `pca`: the stages in order, with their checks, lock, timings, progress and manifest.

A run continues whatever OUTPUT already holds for the same INPUT and settings: it lists INPUT, reads
the index of committed rows (:mod:`fruitlens.state.ledger`), drops stale rows, featurizes only new and
changed images (committed batch by batch by the workers), refits PCA on all features and writes the
manifest last. Killed at any point, the same command continues from what was committed.
"""
from __future__ import annotations

import itertools
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from fruitlens.config import PipelineConfig
from fruitlens.engines.engine import (
    FEATURE_DIM,
    ModelArtifact,
    prepare_model,
    sha256_file,
)
from fruitlens.errors import FruitlensError
from fruitlens.featurize import SUMMARY_FIELDS, make_featurizer, make_warmer
from fruitlens.images import IMAGE_EXTENSIONS
from fruitlens.mlsave import save_pca_pipeline
from fruitlens.pca import (
    driver_moments,
    driver_project,
    fit_from_moments,
    fit_pca,
    project,
)
from fruitlens.progress import ImageProgress, log, task_bar
from fruitlens.spark import build_session, launched_by_spark_submit
from fruitlens.state import ledger
from fruitlens.state.ledger import SourceFile
from fruitlens.state.lock import RunLock, iso
from fruitlens.state.output import (
    LAYOUT_VERSION,
    MANIFEST,
    RUN,
    OutputLayout,
    check_reusable,
    check_settings,
    clear,
    command_line,
    leftovers,
    library_versions,
    read_json,
    read_manifest,
    write_json,
    write_manifest,
)
from fruitlens.storage import hadoopfs, uris
from fruitlens.storage.listing import list_images
from fruitlens.storage.store import Store, StoreOptions
from fruitlens.testing import faults


class InputError(FruitlensError, ValueError):
    """INPUT is missing, empty, or holds no images."""


class ErrorRateError(FruitlensError, RuntimeError):
    """More images ended as errors than ``--max-error-rate`` allows: the run is not published."""


class WorkerError(FruitlensError, RuntimeError):
    """A worker stopped the feature job with an error a user can act on (a full disk, an unreachable OUTPUT)."""


@dataclass
class Timer:
    """Wall-clock seconds per stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str, since: float) -> float:
        self.seconds[stage] = round(time.perf_counter() - since, 3)
        return self.seconds[stage]

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


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


def task_sizes(images: int, slots: int, *, max_images: int = 2500, min_images: int = 256) -> list[int]:
    """Images per feature task, in the order Spark starts them (factoring, a guided self-scheduling):
    each task takes half its slot's share of what is left (``left / (2 slots)``), at most ``max_images``
    (a retried task redoes at most that, ~25 s of one core), at least ``min_images`` (one commit batch:
    smaller loses the worker's decode/infer overlap). Tasks shrink towards the end, so a worker that runs slower (a noisy neighbour,
    a slower node, S3 latency) leaves the others idle for one small task at most, not for a big one."""
    sizes, left, slots = [], images, max(1, slots)
    while left > 0:
        size = min(max_images, max(min_images, -(-left // (2 * slots))), left)
        if left - size < min_images:  # no runt task at the end
            size = left
        sizes.append(size)
        left -= size
    return sorted(sizes, reverse=True)


def even_sizes(images: int, tasks: int) -> list[int]:
    """``--partitions N``: N tasks of (nearly) equal size."""
    tasks = max(1, min(tasks, images))
    return [images // tasks + (1 if i < images % tasks else 0) for i in range(tasks)]


def resolve_model(spark: SparkSession, config: PipelineConfig, out: Store | None = None,
                  listing: list[SourceFile] = (), source: Store | None = None) -> ModelArtifact:
    """Resolve weights on the driver (fetching a remote .h5 once) and ship the engine's file to workers.

    int8: OUTPUT's own model (a resumed run), else one calibrated on INPUT's photos (``listing``)."""
    weights = config.weights if config.weights == "imagenet" else str(hadoopfs.fetch(spark, config.weights))
    if config.engine == "onnx-int8":
        from fruitlens.engines.quantize import int8_for_run

        artifact = int8_for_run(weights, config.image_size, out=None if config.overwrite else out,
                                paths=[f.path for f in listing if f.problem is None], source=source)
    else:
        artifact = prepare_model(config.engine, weights, image_size=config.image_size)
    spark.sparkContext.addFile(artifact.path)  # executors get it from the driver, never from the internet
    return artifact


class WarmUp:
    """Starts the Python workers and builds their engines in a background Spark job (see
    :func:`fruitlens.featurize.make_warmer`) while the driver takes the lock, reads OUTPUT's index and
    plans; :meth:`wait` before the feature job. Leaving the block early cancels it."""

    def __init__(self, spark: SparkSession, job) -> None:
        self._sc = spark.sparkContext
        self._group = f"fruitlens-warmup-{time.monotonic_ns()}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmup")
        self._future = self._pool.submit(self._run, job)

    def _run(self, job):
        self._sc.setJobGroup(self._group, "warm up the Python workers", interruptOnCancel=True)
        return job()

    def wait(self) -> None:
        t = time.perf_counter()
        self._future.result()  # a worker that cannot load the model fails here, before any image
        if time.perf_counter() - t > 0.1:
            log(f"extract: waited {time.perf_counter() - t:.1f} s for the Python workers to load the model")

    def cancel(self) -> None:
        if not self._future.done():
            self._sc.cancelJobGroup(self._group)

    def __enter__(self) -> WarmUp:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.cancel()
        self._pool.shutdown(wait=False)


def warm_workers(spark: SparkSession, artifact: ModelArtifact, config: PipelineConfig) -> WarmUp:
    sc = spark.sparkContext
    warmer = make_warmer(artifact, batch_size=config.batch_size)
    # One task per slot: each runs in its own Python worker, which the feature job's tasks then reuse.
    return WarmUp(spark, lambda: sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism)
                  .mapPartitions(warmer).collect())


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
             else task_sizes(len(todo), sc.defaultParallelism, min_images=config.arrow_batch_size))
    rows, bounds = [(f.path, f.size, f.modified_us) for f in todo], list(itertools.accumulate(sizes, initial=0))
    tasks = [rows[a:b] for a, b in itertools.pairwise(bounds)]
    fn = make_featurizer(artifact, batch_size=config.batch_size, commit_size=config.arrow_batch_size,
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


def pca_stage(spark: SparkSession, config: PipelineConfig, layout: OutputLayout, out: Store, rows: int) -> dict:
    if rows < 2:
        log(f"pca: skipped (PCA needs at least 2 feature rows, found {rows})")
        return {"skipped": f"PCA needs at least 2 feature rows, found {rows}"}
    on_driver = rows <= config.driver_pca_max_rows
    t = time.perf_counter()
    if on_driver:
        files = [i.path for i in out.list(ledger.FEATURES_DIR) if i.base_name.endswith(".parquet")]
        moments = driver_moments(out, files)
        log(f"pca: moments of {moments.n} rows in {time.perf_counter() - t:.2f} s (on the driver)")
        model, summary = fit_from_moments(spark, moments, k=config.pca_k, variance=config.pca_variance,
                                          standardize=config.pca_standardize)
    else:
        # One task per slot: the feature files are many small tasks' worth (~1 s of fixed cost each) for
        # work that takes milliseconds per file; fewer partitions also means fewer partial moments to reduce.
        features = (spark.read.parquet(uris.spark_read_path(layout.features))
                    .coalesce(spark.sparkContext.defaultParallelism))
        model, summary = fit_pca(features, k=config.pca_k, variance=config.pca_variance,
                                 standardize=config.pca_standardize)
    fit_s = time.perf_counter() - t
    faults.kill_point("pca")
    save_pca_pipeline(spark, model, out, "pca_model")  # no Spark job (see fruitlens.mlsave)
    out.delete_tree("pca")
    if on_driver:
        out.make_dirs("pca")
        driver_project(model, out, files, "pca")
    else:
        project(model, features).write.mode("overwrite").parquet(layout.pca)
    return {**summary.as_dict(), "target_variance": config.pca_variance, "requested_k": config.pca_k,
            "on": "driver" if on_driver else "spark",
            "seconds": {"fit": round(fit_s, 3), "project_and_save": round(time.perf_counter() - t - fit_s, 3)}}


def start_record(out: Store, lock: RunLock) -> list[dict]:
    """Record this run in ``_fruitlens/run.json`` and unpublish the manifest: OUTPUT is being changed.

    Returns the history of the runs before this one (an interrupted one included, marked so).
    """
    manifest, previous = read_json(out, MANIFEST), read_json(out, RUN)
    if manifest is not None:
        history = manifest.get("history", [])
    elif previous is not None:
        history = [*previous.get("history", []), {
            "run_id": previous.get("run_id"), "command": previous.get("command"), "start": previous.get("start"),
            "end": previous.get("end"), "finished": False, "counts": previous.get("counts"),
            **({"failed": previous["failed"]} if previous.get("failed") else {})}]
    else:
        history = []
    write_json(out, RUN, {"run_id": lock.run_id, "command": lock.info["command"], "host": socket.gethostname(),
                          "pid": lock.info["pid"], "start": iso(lock.info["started"]), "history": history})
    if manifest is not None:
        out.delete(out.fs_path(MANIFEST))
    return history


def record_failure(out: Store, lock: RunLock, reason: str, counts: dict) -> None:
    """Add to ``_fruitlens/run.json`` why this run stopped unpublished (the next run keeps it in its history)."""
    record = read_json(out, RUN) or {}
    if record.get("run_id") == lock.run_id:
        write_json(out, RUN, {**record, "end": iso(time.time()), "failed": reason, "counts": counts})


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
    layout = OutputLayout(output_uri)
    artifact = resolve_model(spark, config, out, listing, source)
    warm = warm_workers(spark, artifact, config)
    with warm, RunLock.acquire(out, command=command_line(), timeout_s=config.lock_timeout,
                               force=config.force_unlock, wait_s=config.lock_wait) as lock:
        if config.overwrite:
            clear(out)
        check_settings(out, feature_settings(input_uri, artifact), overwrite=config.overwrite)
        if artifact.precision == "int8":
            from fruitlens.engines.quantize import pin

            pin(out, artifact)  # resumed runs and `train` use this very model
        history = start_record(out, lock)
        out.make_dirs(ledger.FEATURES_DIR, ledger.ERRORS_DIR)
        for path in leftovers(out, ("_fruitlens", *ledger.KINDS)):  # of writes a killed run left
            out.delete(path)
        plan = ledger.plan(ledger.read_index(out), listing)
        ledger.apply(out, plan, after_write=lambda: faults.kill_point("cleanup"))
        drop_derived(out)
        todo = [f for f in plan.todo if f.problem is None]
        unusable, unlisted = ledger.commit_listing_errors(out, [f for f in plan.todo if f.problem is not None])
        warm.wait() if todo else warm.cancel()  # the workers' start-up counts as setup
        timer.lap("setup", t)
        log(f"setup: input {input_uri}: {len(listing)} images; reused {plan.reused}, new {plan.new}, "
            f"changed {plan.changed}, removed {plan.removed}, retried {plan.retried}; engine {artifact.engine} "
            f"{artifact.precision} {artifact.image_size}px, "
            f"{spark.sparkContext.defaultParallelism} task slots ({timer.seconds['setup']:.1f} s)")

        t = time.perf_counter()
        with image_progress(spark, "extract", enabled=config.progress) as progress:
            progress.total = len(todo)
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
            pca = _timed_pca(spark, config, layout, out, timer, counts["features"])
        else:  # a projection of other features would now be stale
            out.delete_tree("pca")
            out.delete_tree("pca_model")

        versions = library_versions()
        manifest = {
            "fruitlens": versions.get("fruitlens", "dev"),
            "run_id": lock.run_id,
            "command": lock.info["command"],
            "input": input_uri,
            "output": layout.root,
            "counts": counts,
            "engine": engine_entry(artifact),
            "pca": pca,
            "timings_s": timer.seconds,
            # decode_resize_s includes reading the file (workers read images themselves now)
            "worker_seconds": {"decode_resize_s": round(done["read_decode_s"], 3),
                               "inference_s": round(done["inference_s"], 3), "images": done["images"]},
            "spark": {"master": spark.sparkContext.master, "task_slots": spark.sparkContext.defaultParallelism,
                      "feature_tasks": done["tasks"], "python_workers": done["python_workers"]},
            "config": config.to_dict(),
            "versions": versions,
            "history": history,
        }
        if config.train:  # before the manifest, so its metrics and timing are in it
            from fruitlens.classify.train import train

            t = time.perf_counter()
            manifest["classifier"] = train(spark, layout, weights=config.weights, weights_sha256=artifact.sha256,
                                           engine=manifest["engine"])
            timer.lap("train", t)
        manifest = _finish(out, lock, layout, manifest, timer)
        if config.report:  # after: the report shows the finished manifest
            from fruitlens.classify.report import write_report

            write_report(spark, layout)
        return manifest


def engine_entry(artifact: ModelArtifact) -> dict:
    """The manifest's account of the engine that made the features."""
    entry = {"name": artifact.engine, "precision": artifact.precision, "image_size": artifact.image_size,
             "model_file": artifact.file_name, "weights_sha256": artifact.sha256}
    if artifact.precision == "int8":
        from fruitlens.engines.quantize import model_info, pinned_name

        entry.update(model_info(artifact.path), pinned=pinned_name(artifact))
    return entry


#: Outputs made from the PCA (`fruitlens train`, `report`): stale once the PCA is refit, so removed at the
#: start of a run or a refit; `--train` / `--report` (or the commands) make them again.
DERIVED = ("classifier", "predictor", "report")


def drop_derived(out: Store) -> None:
    for name in DERIVED:
        out.delete_tree(name)


def refit_pca(config: PipelineConfig) -> dict:
    """`fruitlens pca OUTPUT`: (re)fit PCA on OUTPUT/features and update the manifest."""
    timer = Timer()
    t = time.perf_counter()
    layout = OutputLayout(uris.qualify(config.output))
    if not launched_by_spark_submit():  # a clear error before the JVM starts
        read_manifest(Store(layout.root, store_options_before_spark(config, layout.root)))
    spark = build_session(config)
    out = Store(layout.root, store_options(spark, layout.root))
    read_manifest(out)  # a clear error before taking the lock
    with RunLock.acquire(out, command=command_line(), timeout_s=config.lock_timeout,
                         force=config.force_unlock, wait_s=config.lock_wait) as lock:
        manifest = read_manifest(out)
        out.delete(out.fs_path(MANIFEST))  # the PCA outputs are about to change
        drop_derived(out)
        manifest.pop("classifier", None)
        timer.lap("setup", t)
        manifest["pca"] = _timed_pca(spark, config, layout, out, timer, manifest["counts"]["features"])
        manifest["config"] = {**manifest.get("config", {}),
                              **{k: v for k, v in config.to_dict().items() if k.startswith("pca_")}}
        manifest["timings_s"] = {**manifest.get("timings_s", {}), "pca": timer.seconds["pca"]}
        manifest["versions"] = library_versions()
        return _finish(out, lock, layout, manifest, timer, refit=True)


def _timed_pca(spark: SparkSession, config: PipelineConfig, layout: OutputLayout, out: Store, timer: Timer,
               rows: int) -> dict:
    t = time.perf_counter()
    with task_bar(spark.sparkContext, "pca", enabled=config.progress):
        pca = pca_stage(spark, config, layout, out, rows)
    seconds = timer.lap("pca", t)
    if "k" in pca:
        log(f"pca: k={pca['k']} keeps {pca['variance_kept']:.1%} of the variance of {pca['rows']} rows "
            f"in {seconds:.1f} s")
    return pca


def _finish(out: Store, lock: RunLock, layout: OutputLayout, manifest: dict, timer: Timer, *,
            refit: bool = False) -> dict:
    total = timer.total()
    if not refit:
        manifest["timings_s"] = {**timer.seconds, "total": total}
        processed = manifest["counts"]["processed"]
        manifest["images_per_second"] = {
            "extract": round(processed / max(timer.seconds["extract"], 1e-9), 2),
            "end_to_end": round(processed / max(total, 1e-9), 2),
        }
        end = lock.info["started"] + total
        manifest["history"] = [*manifest["history"], {
            "run_id": lock.run_id, "command": manifest["command"], "start": iso(lock.info["started"]),
            "end": iso(end), "seconds": total, "finished": True, "counts": manifest["counts"]}]
    lock.check()
    # Last, and atomically: its presence means the output is complete.
    write_manifest(out, manifest, before_publish=lambda: faults.kill_point("manifest"))
    log(f"done: {layout.manifest} ({timer.total():.1f} s in all)")
    return manifest
