"""The PCA stage of a run (and of `fruitlens pca`): fit on OUTPUT/features, save the model, project.

Small feature sets are fitted and projected on the driver (no Spark job); larger ones through Spark
(:mod:`fruitlens.pca`). Either way the model is saved without a Spark job (:mod:`fruitlens.mlsave`).
"""
from __future__ import annotations

import time

from pyspark.sql import SparkSession

from fruitlens.config import PipelineConfig
from fruitlens.mlsave import save_pca_pipeline
from fruitlens.pca import driver_moments, driver_project, fit_from_moments, fit_pca, project
from fruitlens.progress import log, task_bar
from fruitlens.state import layout
from fruitlens.state.layout import OutputLayout
from fruitlens.state.run import Timer
from fruitlens.storage import uris
from fruitlens.storage.store import Store
from fruitlens.testing import faults


def pca_stage(spark: SparkSession, config: PipelineConfig, out: Store, rows: int) -> dict:
    """Fit and project; the manifest's ``pca`` entry (or why PCA was skipped)."""
    if rows < 2:
        log(f"pca: skipped (PCA needs at least 2 feature rows, found {rows})")
        return {"skipped": f"PCA needs at least 2 feature rows, found {rows}"}
    on_driver = rows <= config.driver_pca_max_rows
    t = time.perf_counter()
    if on_driver:
        files = [i.path for i in out.list(layout.FEATURES) if i.base_name.endswith(".parquet")]
        moments = driver_moments(out, files)
        log(f"pca: moments of {moments.n} rows in {time.perf_counter() - t:.2f} s (on the driver)")
        model, summary = fit_from_moments(spark, moments, k=config.pca_k, variance=config.pca_variance,
                                          standardize=config.pca_standardize)
    else:
        # One task per slot: the feature files are many small tasks' worth (~1 s of fixed cost each) for
        # work that takes milliseconds per file; fewer partitions also means fewer partial moments to reduce.
        features = (spark.read.parquet(uris.spark_read_path(OutputLayout(out.uri).features))
                    .coalesce(spark.sparkContext.defaultParallelism))
        model, summary = fit_pca(features, k=config.pca_k, variance=config.pca_variance,
                                 standardize=config.pca_standardize)
    fit_s = time.perf_counter() - t
    faults.kill_point("pca")
    save_pca_pipeline(spark, model, out, layout.PCA_MODEL)  # no Spark job (see fruitlens.mlsave)
    out.delete_tree(layout.PCA)
    if on_driver:
        out.make_dirs(layout.PCA)
        driver_project(model, out, files, layout.PCA)
    else:
        project(model, features).write.mode("overwrite").parquet(OutputLayout(out.uri).pca)
    return {**summary.as_dict(), "target_variance": config.pca_variance, "requested_k": config.pca_k,
            "on": "driver" if on_driver else "spark",
            "seconds": {"fit": round(fit_s, 3), "project_and_save": round(time.perf_counter() - t - fit_s, 3)}}


def timed_pca(spark: SparkSession, config: PipelineConfig, out: Store, timer: Timer, rows: int) -> dict:
    t = time.perf_counter()
    with task_bar(spark.sparkContext, "pca", enabled=config.progress):
        pca = pca_stage(spark, config, out, rows)
    seconds = timer.lap("pca", t)
    if "k" in pca:
        log(f"pca: k={pca['k']} keeps {pca['variance_kept']:.1%} of the variance of {pca['rows']} rows "
            f"in {seconds:.1f} s")
    return pca


def drop_pca(out: Store) -> None:
    """`extract`: a projection of other features would now be stale."""
    out.delete_tree(layout.PCA)
    out.delete_tree(layout.PCA_MODEL)
