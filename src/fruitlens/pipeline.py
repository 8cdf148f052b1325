"""`run`, `extract`, `pca`: the stages in order, with their checks, timings, progress and manifest."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from fruitlens import hadoopfs
from fruitlens.config import PipelineConfig
from fruitlens.engine import ModelArtifact, prepare_model
from fruitlens.errors import FruitlensError
from fruitlens.featurize import WorkerStats, featurize_images
from fruitlens.images import IMAGE_EXTENSIONS, IMAGE_GLOB
from fruitlens.output import (
    OutputLayout,
    command_line,
    library_versions,
    prepare_output,
    read_manifest,
    write_manifest,
)
from fruitlens.pca import fit_pca, project
from fruitlens.progress import log, task_bar
from fruitlens.spark import build_session

#: Spark's file scan drops zero-length files; the listing still counts them, so they are reported.
SKIPPED_BY_SCAN = "empty file (0 bytes)"


class InputError(FruitlensError, ValueError):
    """INPUT is missing, empty, or holds no images."""


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


def check_input(spark: SparkSession, uri: str) -> None:
    """Fail before any Spark job when INPUT cannot be the source of images."""
    if not hadoopfs.exists(spark, uri):
        raise InputError(f"INPUT {uri} does not exist; check the path (and credentials for s3:// URIs)")
    if hadoopfs.first_image(spark, uri) is None:
        raise InputError(
            f"INPUT {uri} holds no images ({', '.join(IMAGE_EXTENSIONS)}, any letter case, in any sub-folder)"
        )


def list_images(images: DataFrame, limit: int | None) -> list[str]:
    """Every image file Spark's listing matched, as the ``path`` column spells it (sorted).

    Spark's scan silently skips zero-length files, so the listing, not the scan, is what must be
    accounted for: each listed file ends up as a feature row or an error row.
    """
    listed = sorted(hadoop_path(uri) for uri in images.inputFiles())
    return listed[:limit] if limit else listed


def hadoop_path(uri: str) -> str:
    """``file:///a%20b/x.jpg`` (a file-index URI) → ``file:/a b/x.jpg`` (the ``path`` column's form)."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    return f"{parts.scheme}://{parts.netloc}{path}" if parts.netloc else f"{parts.scheme}:{path}"


def read_images(spark: SparkSession, config: PipelineConfig, uri: str) -> tuple[DataFrame, list[str]]:
    images = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", IMAGE_GLOB)
        .load(uri)
    )
    listed = list_images(images, config.limit)
    # Size the scan's own splits (no shuffle of image bytes): a few even tasks per slot, so no slot
    # idles at the end, but large enough that per-task start-up is amortised.
    partitions = config.partitions or partition_count(len(listed), spark.sparkContext.defaultParallelism)
    spark.conf.set("spark.sql.files.minPartitionNum", str(partitions))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 40))  # let minPartitionNum decide
    if config.limit:
        images = images.where(F.col("path").isin(listed))
    return images, listed


def partition_count(images: int, slots: int, *, max_images: int = 1000) -> int:
    """Tasks for the feature stage: a whole number of rounds over the task slots (a last round that
    fills only some slots leaves cores idle), each task at most ``max_images`` images."""
    slots = max(1, slots)
    rounds = max(1, -(-images // (slots * max_images)))
    return slots * rounds


def resolve_model(spark: SparkSession, config: PipelineConfig) -> ModelArtifact:
    """Resolve weights on the driver (fetching a remote .h5 once) and ship the engine's file to workers."""
    weights = config.weights if config.weights == "imagenet" else str(hadoopfs.fetch(spark, config.weights))
    artifact = prepare_model(config.engine, weights)
    spark.sparkContext.addFile(artifact.path)  # executors get it from the driver, never from the internet
    return artifact


def extract_stage(spark: SparkSession, config: PipelineConfig, layout: OutputLayout, input_uri: str,
                  artifact: ModelArtifact) -> dict:
    stats = WorkerStats.create(spark)
    images, listed = read_images(spark, config, input_uri)
    result = featurize_images(images, artifact, batch_size=config.batch_size, stats=stats)
    # Persisted so that writing features and errors evaluates the model once per image.
    result = result.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        ok = F.col("error").isNull()
        result.filter(ok).select("path", "label", "split", "features").write.parquet(layout.features)
        row = result.agg(F.count("*").alias("scanned"), F.count("error").alias("errors")).first()
        errors = result.filter(~ok).select("path", "error")
        n_skipped = len(listed) - int(row["scanned"])
        if n_skipped:  # only then is the listing joined back: which listed files did the scan skip?
            skipped = (
                spark.createDataFrame([(p,) for p in listed], "path string")
                .join(result.select("path"), "path", "left_anti")
                .select("path", F.lit(SKIPPED_BY_SCAN).alias("error"))
            )
            errors = errors.unionByName(skipped)
        errors.write.parquet(layout.errors)
    finally:
        result.unpersist()
    matched, errors = len(listed), int(row["errors"]) + n_skipped
    return {"matched": matched, "features": matched - errors, "errors": errors,
            "worker_seconds": stats.as_dict()}


def pca_stage(spark: SparkSession, config: PipelineConfig, layout: OutputLayout) -> dict:
    # One task per slot: the feature files are many small tasks' worth (~1 s of fixed cost each) for
    # work that takes milliseconds per file; fewer partitions also means fewer partial moments to reduce.
    features = spark.read.parquet(layout.features).coalesce(spark.sparkContext.defaultParallelism)
    t = time.perf_counter()
    try:
        model, summary = fit_pca(features, k=config.pca_k, variance=config.pca_variance,
                                 standardize=config.pca_standardize)
    except ValueError as exc:  # too few rows: the features are still worth having
        log(f"pca: skipped ({exc})")
        return {"skipped": str(exc)}
    fit_s = time.perf_counter() - t
    # Saving the model is a few small Spark jobs: run them beside the projection, not after it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        saved = pool.submit(lambda: model.write().overwrite().save(layout.pca_model))
        project(model, features).write.mode("overwrite").parquet(layout.pca)
        saved.result()
    return {**summary.as_dict(), "target_variance": config.pca_variance, "requested_k": config.pca_k,
            "seconds": {"fit": round(fit_s, 3), "project_and_save": round(time.perf_counter() - t - fit_s, 3)}}


def run(config: PipelineConfig, *, with_pca: bool = True) -> dict:
    """`fruitlens run` (and `extract` with ``with_pca=False``): images → features (→ PCA) → manifest."""
    timer = Timer()
    t = time.perf_counter()
    spark = build_session(config)
    input_uri = hadoopfs.qualify(config.input)
    layout = OutputLayout(hadoopfs.qualify(config.output))
    check_input(spark, input_uri)
    prepare_output(spark, layout, overwrite=config.overwrite)
    artifact = resolve_model(spark, config)
    timer.lap("setup", t)
    log(f"setup: input {input_uri}, engine {artifact.engine}, {spark.sparkContext.defaultParallelism} "
        f"task slots ({timer.seconds['setup']:.1f} s)")

    t = time.perf_counter()
    with task_bar(spark.sparkContext, "extract", enabled=config.progress):
        counts = extract_stage(spark, config, layout, input_uri, artifact)
    seconds = timer.lap("extract", t)
    log(f"extract: {counts['matched']} images -> {counts['features']} features, {counts['errors']} errors "
        f"in {seconds:.1f} s ({counts['matched'] / max(seconds, 1e-9):.1f} images/s)")
    if counts["matched"] == 0:
        raise InputError(f"INPUT {input_uri}: no image matched at read time (were files removed meanwhile?)")

    pca = None
    if with_pca:
        pca = _timed_pca(spark, config, layout, timer)

    versions = library_versions()
    manifest = {
        "fruitlens": versions.get("fruitlens", "dev"),
        "command": command_line(),
        "input": input_uri,
        "output": layout.root,
        "counts": {k: counts[k] for k in ("matched", "features", "errors")},
        "engine": {"name": artifact.engine, "model_file": artifact.file_name, "weights_sha256": artifact.sha256},
        "pca": pca,
        "timings_s": timer.seconds,
        "worker_seconds": counts["worker_seconds"],
        "spark": {"master": spark.sparkContext.master, "task_slots": spark.sparkContext.defaultParallelism},
        "config": config.to_dict(),
        "versions": versions,
    }
    if config.train:  # before the manifest, so its metrics and timing are in it
        from fruitlens.train import train

        t = time.perf_counter()
        manifest["classifier"] = train(spark, layout, weights=config.weights, weights_sha256=artifact.sha256)
        timer.lap("train", t)
    manifest = _finish(spark, layout, manifest, timer)
    if config.report:  # after: the report shows the finished manifest
        from fruitlens.report import write_report

        write_report(spark, layout)
    return manifest


def refit_pca(config: PipelineConfig) -> dict:
    """`fruitlens pca OUTPUT`: (re)fit PCA on OUTPUT/features and update the manifest."""
    timer = Timer()
    t = time.perf_counter()
    spark = build_session(config)
    layout = OutputLayout(hadoopfs.qualify(config.output))
    manifest = read_manifest(spark, layout)
    timer.lap("setup", t)
    manifest["pca"] = _timed_pca(spark, config, layout, timer)
    manifest["config"] = {**manifest.get("config", {}),
                          **{k: v for k, v in config.to_dict().items() if k.startswith("pca_")}}
    manifest["timings_s"] = {**manifest.get("timings_s", {}), "pca": timer.seconds["pca"]}
    manifest["versions"] = library_versions()
    return _finish(spark, layout, manifest, timer, refit=True)


def _timed_pca(spark: SparkSession, config: PipelineConfig, layout: OutputLayout, timer: Timer) -> dict:
    t = time.perf_counter()
    with task_bar(spark.sparkContext, "pca", enabled=config.progress):
        pca = pca_stage(spark, config, layout)
    seconds = timer.lap("pca", t)
    if "k" in pca:
        log(f"pca: k={pca['k']} keeps {pca['variance_kept']:.1%} of the variance of {pca['rows']} rows "
            f"in {seconds:.1f} s")
    return pca


def _finish(spark: SparkSession, layout: OutputLayout, manifest: dict, timer: Timer, *, refit: bool = False) -> dict:
    total = timer.total()
    if not refit:
        manifest["timings_s"] = {**timer.seconds, "total": total}
        matched = manifest["counts"]["matched"]
        manifest["images_per_second"] = {
            "extract": round(matched / max(timer.seconds["extract"], 1e-9), 2),
            "end_to_end": round(matched / max(total, 1e-9), 2),
        }
    write_manifest(spark, layout, manifest)  # last: its presence means the output is complete
    log(f"done: {layout.manifest} ({timer.total():.1f} s in all)")
    return manifest
