"""The PCA stage of a run (and of `fruitlens pca`): moments of OUTPUT/features, fit, save the model, project.

Incremental (:mod:`fruitlens.pca_state`): the moments of the committed files are kept in OUTPUT, so a run reads
only the feature files it has not summed yet, refits from the sum, and projects only new files unless the basis
in force no longer fits (then, and with ``--pca-exact``, every file is projected again). The per-file work (moments,
projection) runs on the driver for small amounts of rows (no Spark job), else as Spark tasks over the files. The
model is saved without a Spark job (:mod:`fruitlens.mlsave`).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import SparkSession

from fruitlens.config import PipelineConfig
from fruitlens.mlsave import save_pca_pipeline
from fruitlens.moments import Moments, file_moments
from fruitlens.pca import Fit, fit_arrays, spark_model
from fruitlens.pca_state import (
    Basis,
    MomentsRecord,
    basis_loss,
    drop_basis,
    drop_moments,
    load_basis,
    load_moments,
    pca_settings,
    save_basis,
    save_moments,
)
from fruitlens.progress import log, task_bar
from fruitlens.projection import project_files
from fruitlens.state import layout
from fruitlens.state.run import Timer
from fruitlens.storage.store import Store
from fruitlens.testing import faults

#: Driver threads for the per-file work (pyarrow and BLAS release the GIL).
_THREADS = 2


def _chunks(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n) if items[i::n]]


def _per_file(spark: SparkSession, out: Store, paths: list[str], fn, *, on_driver: bool) -> list:
    """``fn(store, paths_chunk)`` over ``paths`` in chunks: driver threads, or one Spark task per chunk."""
    if not paths:
        return []
    if on_driver:
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            return list(pool.map(lambda chunk: fn(out, chunk), _chunks(paths, _THREADS)))
    sc = spark.sparkContext
    uri, options = out.uri, out.options
    chunks = _chunks(paths, min(len(paths), 4 * sc.defaultParallelism))
    return sc.parallelize(chunks, len(chunks)).map(lambda chunk: fn(Store(uri, options), chunk)).collect()


def current_moments(spark: SparkSession, config: PipelineConfig, out: Store, files: dict[str, int]) -> tuple[Moments, dict]:
    """The moments of the feature files ``files`` (base name → bytes): the record's plus the files it does not
    name, or (no usable record, ``--pca-exact``) all of them; the record is saved. Returns them and how."""
    record = None if config.pca_exact else load_moments(out)
    reason = "--pca-exact" if config.pca_exact else "no moments record (first PCA, or an older OUTPUT)"
    if record is not None:
        stale = [n for n, (_, size) in record.files.items() if files.get(n) != size]
        if stale:
            reason, record = f"the moments record names {len(stale)} files that are gone or changed", None
    if record is None:
        drop_moments(out)  # written anew below; meanwhile no record may name what it does not sum
        record = MomentsRecord(Moments.zero(), {})
    new = sorted(n for n in files if n not in record.files)
    folder = out.fs_path(layout.FEATURES)
    paths = [f"{folder}/{n}" for n in new]
    # ~5 KB a row: the bytes tell the rows before reading them
    on_driver = not new or sum(files[n] for n in new) <= config.driver_pca_max_rows * 5200
    moments, rows = record.moments, dict(record.files)
    for part, part_rows in _per_file(spark, out, paths, file_moments, on_driver=on_driver):
        moments = moments + part
        rows.update({p.rsplit("/", 1)[1]: (r, files[p.rsplit("/", 1)[1]]) for p, r in part_rows.items()})
    save_moments(out, MomentsRecord(moments, rows))
    how = {"moments": "incremental" if record.files else "full", "files_read": len(new),
           "rows_read": moments.n - record.moments.n, "rows_reused": record.moments.n,
           "on": "driver" if on_driver else "spark"}  # where the moments were read
    if not record.files:
        how["why_full"] = reason
    return moments, how


def _project(spark: SparkSession, config: PipelineConfig, out: Store, fit: Fit, names: list[str],
             rows: int) -> tuple[int, str]:
    """Project these feature files into pca/ with ``fit``; returns the rows projected and where."""
    paths = [f"{out.fs_path(layout.FEATURES)}/{n}" for n in names]
    if rows <= config.driver_pca_max_rows or not paths:
        return sum(_per_file(spark, out, paths, lambda store, chunk: project_files(
            store, chunk, layout.PCA, *fit.arrays), on_driver=True)), "driver"
    # One broadcast of the arrays (1280 x k doubles, MBs), not a copy inside every task's closure.
    arrays = spark.sparkContext.broadcast(fit.arrays)
    return sum(_per_file(spark, out, paths, lambda store, chunk: project_files(
        store, chunk, layout.PCA, *arrays.value), on_driver=False)), "spark"


def refit_reason(config: PipelineConfig, basis: Basis | None, out: Store, loss: dict | None) -> str | None:
    """Why the exact refit must replace the basis in force (None: the basis stays)."""
    if config.pca_exact:
        return "--pca-exact"
    if basis is None:
        return "no basis recorded (first PCA, or an older OUTPUT)"
    if basis.settings != pca_settings(config):
        return "the PCA settings changed"
    if not out.exists(layout.PCA_MODEL):
        return "no saved model"
    tol = config.pca_drift_tolerance
    if loss["variance_loss"] > tol:
        return f"variance loss {loss['variance_loss']:.2e} > tolerance {tol:g}"
    if loss["centre_offset"] > tol:
        return f"centre offset {loss['centre_offset']:.2e} > tolerance {tol:g}"
    return None


def pca_stage(spark: SparkSession, config: PipelineConfig, out: Store, rows: int) -> dict:
    """Fit and project; the manifest's ``pca`` entry (or why PCA was skipped)."""
    if rows < 2:
        log(f"pca: skipped (PCA needs at least 2 feature rows, found {rows})")
        drop_pca(out)
        return {"skipped": f"PCA needs at least 2 feature rows, found {rows}"}
    t = time.perf_counter()
    files = {i.base_name: i.size for i in out.list(layout.FEATURES) if i.base_name.endswith(".parquet")}
    moments, how = current_moments(spark, config, out, files)
    log(f"pca: moments of {moments.n} rows in {time.perf_counter() - t:.2f} s ({how['moments']}: read "
        f"{how['files_read']} files, {how['rows_read']} rows on the {how['on']}; reused {how['rows_reused']} rows)")
    moments_s = time.perf_counter() - t
    basis = None if config.pca_exact else load_basis(out)
    loss = None
    if basis is not None and basis.settings == pca_settings(config):
        loss = basis_loss(basis.fit, moments)
    reason = refit_reason(config, basis, out, loss)
    fit_s = time.perf_counter() - t - moments_s
    projected_files = sorted(files)
    if reason is not None:
        fit = fit_arrays(moments, k=config.pca_k, variance=config.pca_variance, standardize=config.pca_standardize)
        fit_s = time.perf_counter() - t - moments_s
        faults.kill_point("pca")
        drop_basis(out)  # pca/ is about to hold another basis: recorded again once complete
        save_pca_pipeline(spark, spark_model(spark, fit), out, layout.PCA_MODEL)  # no Spark job (fruitlens.mlsave)
        out.delete_tree(layout.PCA)
        out.make_dirs(layout.PCA)
        projected, projected_on = _project(spark, config, out, fit, projected_files, moments.n)
        save_basis(out, Basis(fit, pca_settings(config)))
        summary = fit.summary.as_dict()
        basis_entry = {"basis": "refit", "why_refit": reason}
        log(f"pca: refit ({reason}); projected all {projected} rows")
    else:
        fit = basis.fit
        done = {i.base_name for i in out.list(layout.PCA) if i.base_name.endswith(".parquet")}
        for name in sorted(done - set(files)):  # the projection of a removed or rewritten file
            out.delete(out.fs_path(f"{layout.PCA}/{name}"))
        projected_files = sorted(set(files) - done)
        projected, projected_on = _project(spark, config, out, fit, projected_files, how["rows_read"])
        summary = {**fit.summary.as_dict(), "rows": moments.n, "fit_rows": fit.summary.rows,
                   "variance_kept": loss["variance_kept"]}
        basis_entry = {"basis": "kept"}
        log(f"pca: basis kept (variance loss {loss['variance_loss']:.1e}, centre offset "
            f"{loss['centre_offset']:.1e} <= {config.pca_drift_tolerance:g}); projected {projected} new rows")
    if loss is not None:
        basis_entry.update(variance_loss=loss["variance_loss"], centre_offset=loss["centre_offset"])
    on = "spark" if "spark" in (how["on"], projected_on) else "driver"
    return {**summary, "target_variance": config.pca_variance, "requested_k": config.pca_k, "on": on,
            "incremental": {**how, **basis_entry, "drift_tolerance": config.pca_drift_tolerance,
                            "files_projected": len(projected_files), "rows_projected": projected},
            "seconds": {"moments": round(moments_s, 3), "fit": round(fit_s, 3),
                        "project_and_save": round(time.perf_counter() - t - moments_s - fit_s, 3)}}


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
    """`extract`: a projection of other features would now be stale (the moments record stays valid)."""
    drop_basis(out)
    out.delete_tree(layout.PCA)
    out.delete_tree(layout.PCA_MODEL)

