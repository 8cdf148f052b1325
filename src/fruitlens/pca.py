"""PCA on the feature vectors: moments → eigendecomposition → a Spark ML model.

The moments (n, Σx, XᵀX, float64) of the feature files are summed per file (fruitlens.pca_stage,
kept in OUTPUT by fruitlens.pca_state), and the driver eigendecomposes the 1280 x 1280 covariance once, so
memory on the driver depends on the feature size, never on the number of images. Spark ML's own
``PCA.fit`` does the same statistics one row at a time plus a full SVD per fit (seconds each, twice when
k comes from a variance target); the result here is the same and is saved as standard Spark ML
models (``StandardScalerModel`` → ``PCAModel`` in a ``PipelineModel``) that project new images.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import SparkSession

from fruitlens.engines import FEATURE_DIM
from fruitlens.moments import Moments
from fruitlens.progress import log
from fruitlens.state.schema import PCA


@dataclass(frozen=True)
class PcaSummary:
    k: int
    explained_variance: list[float]  # ratio per kept component
    cumulative_variance: list[float]
    standardize: bool
    rows: int

    def as_dict(self) -> dict:
        out = asdict(self)
        out["variance_kept"] = self.cumulative_variance[-1] if self.cumulative_variance else 0.0
        return out


def choose_k(explained: np.ndarray | list[float], target: float) -> int:
    """The fewest leading components whose explained-variance ratios add up to ``target``."""
    cumulative = np.cumsum(np.asarray(explained, dtype=np.float64))
    reached = np.nonzero(cumulative >= target - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else len(cumulative)


def eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a covariance matrix."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    # A deterministic sign (largest |loading| positive), so reruns give the same projections.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


@dataclass(frozen=True)
class Fit:
    """A PCA fitted from moments, as plain arrays: what :func:`projection.project_batch` applies."""

    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,) the features' standard deviations (the scaler's, used when standardized)
    scale: np.ndarray  # (d,) 1, or 1/std (0 for a constant feature) when standardized
    components: np.ndarray  # (d, k)
    summary: PcaSummary

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.mean, self.scale, self.components


def fit_arrays(moments: Moments, *, k: int | None, variance: float | None, standardize: bool) -> Fit:
    """Eigendecompose the covariance of ``moments`` (numpy only: no Spark)."""
    if moments.n < 2:
        raise ValueError(f"PCA needs at least 2 feature rows, found {moments.n}")
    cov = moments.covariance()
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    scale = np.ones_like(std)
    if standardize:  # correlation matrix; constant features scale to 0, as StandardScaler does
        scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
        cov = cov * np.outer(scale, scale)
    t = time.perf_counter()
    values, vectors = eigen(cov)
    log(f"pca: eigendecomposition in {time.perf_counter() - t:.2f} s")
    ratios = values / values.sum() if values.sum() > 0 else np.zeros_like(values)
    if k is None:
        k = choose_k(ratios, variance)
    k = min(k, FEATURE_DIM)
    summary = PcaSummary(
        k=k,
        explained_variance=[float(v) for v in ratios[:k]],
        cumulative_variance=[float(v) for v in np.cumsum(ratios[:k])],
        standardize=standardize,
        rows=moments.n,
    )
    return Fit(moments.mean(), std, scale, vectors[:, :k], summary)


def spark_model(spark: SparkSession, fit: Fit) -> PipelineModel:
    """The Spark ML form of ``fit``: a vector column "vector" in, centred (scaled) and projected "pca" out."""
    scaler = _scaler_model(spark, mean=fit.mean, std=fit.std, standardize=fit.summary.standardize)
    pca = _pca_model(spark, fit.components, np.asarray(fit.summary.explained_variance))
    return PipelineModel(stages=[scaler, pca])


def fit_from_moments(
    spark: SparkSession, moments: Moments, *, k: int | None, variance: float | None, standardize: bool
) -> tuple[PipelineModel, PcaSummary]:
    """Eigendecompose the covariance of ``moments`` → the Spark ML model and its summary."""
    fit = fit_arrays(moments, k=k, variance=variance, standardize=standardize)
    return spark_model(spark, fit), fit.summary


def _jvm_vector(spark: SparkSession, values: np.ndarray):
    jvm = spark.sparkContext._jvm
    return jvm.org.apache.spark.ml.linalg.Vectors.dense(_jdoubles(spark, values))


def _jdoubles(spark: SparkSession, values: np.ndarray):
    gateway = spark.sparkContext._gateway
    out = gateway.new_array(gateway.jvm.double, len(values))
    # py4j copies element by element; 1280 x k doubles is at most ~1.6M calls-free via bytes below.
    buf = np.ascontiguousarray(values, dtype=">f8").tobytes()
    jbuf = spark.sparkContext._jvm.java.nio.ByteBuffer.wrap(bytearray(buf)).asDoubleBuffer()
    jbuf.get(out)
    return out


def _scaler_model(spark: SparkSession, *, mean: np.ndarray, std: np.ndarray, standardize: bool):
    jvm = spark.sparkContext._jvm
    java = jvm.org.apache.spark.ml.feature.StandardScalerModel(
        "fruitlens_scaler", _jvm_vector(spark, std), _jvm_vector(spark, mean)
    )
    model = StandardScalerModel(java)
    model._set(inputCol="vector", outputCol="scaled", withMean=True, withStd=standardize)
    model._transfer_params_to_java()
    return model


def _pca_model(spark: SparkSession, components: np.ndarray, explained: np.ndarray):
    jvm = spark.sparkContext._jvm
    rows, cols = components.shape
    # DenseMatrix is column-major: the flattened transpose is the column-major layout.
    matrix = jvm.org.apache.spark.ml.linalg.DenseMatrix(rows, cols, _jdoubles(spark, components.T.reshape(-1)))
    java = jvm.org.apache.spark.ml.feature.PCAModel("fruitlens_pca", matrix, _jvm_vector(spark, explained))
    model = PCAModel(java)
    model._set(inputCol="scaled", outputCol=PCA, k=cols)
    model._transfer_params_to_java()
    return model


def projection_arrays(model: PipelineModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, components) of a fitted model: what :func:`projection.project_batch` applies."""
    scaler, pca = model.stages
    mean = scaler.mean.toArray() if scaler.getWithMean() else np.zeros(scaler.std.size)
    std = scaler.std.toArray()
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0) if scaler.getWithStd() else np.ones_like(std)
    return mean, scale, pca.pc.toArray()
