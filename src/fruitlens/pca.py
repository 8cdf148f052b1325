"""PCA on the feature vectors: distributed moments → eigendecomposition → a Spark ML model.

Each partition reduces its rows to (n, Σx, XᵀX) with one BLAS call (float64), the partials are
tree-reduced on the executors, and the driver eigendecomposes the 1280 x 1280 covariance once, so
memory on the driver depends on the feature size, never on the number of images. Spark ML's own
``PCA.fit`` does the same statistics one row at a time plus a full SVD per fit (seconds each, twice when
k comes from a variance target); the result here is the same and is saved as standard Spark ML
models (``StandardScalerModel`` → ``PCAModel`` in a ``PipelineModel``) that project new images.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame, SparkSession

from fruitlens.engines import FEATURE_DIM
from fruitlens.moments import Moments, feature_matrix, moments_of, partition_moments
from fruitlens.progress import log
from fruitlens.state.schema import CARRIED, FEATURES, PCA, PCA_DDL
from fruitlens.storage.store import Store


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


def compute_moments(features: DataFrame) -> Moments:
    partials = features.select(FEATURES).mapInArrow(partition_moments, "n long, total binary, gram binary")
    return (
        partials.rdd.map(lambda r: Moments(r.n, np.frombuffer(r.total), np.frombuffer(r.gram).reshape(FEATURE_DIM, -1)))
        .treeReduce(lambda a, b: a + b, depth=2)
    )


def eigen(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a covariance matrix."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    # A deterministic sign (largest |loading| positive), so reruns give the same projections.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


def fit_pca(
    features: DataFrame, *, k: int | None, variance: float | None, standardize: bool
) -> tuple[PipelineModel, PcaSummary]:
    """Fit on ``features`` (column ``features``: array<float>); exactly one of ``k``/``variance``."""
    t = time.perf_counter()
    moments = compute_moments(features)
    log(f"pca: moments of {moments.n} rows in {time.perf_counter() - t:.2f} s (Spark)")
    return fit_from_moments(features.sparkSession, moments, k=k, variance=variance, standardize=standardize)


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


# -- the same two passes on the driver, for feature sets that fit one machine's disk bandwidth ---------
# Streaming the committed Parquet files with pyarrow (one file, i.e. one batch of ≤ 256 rows, in memory
# per thread) costs milliseconds per file and no Spark job, task or Python worker at all; for the
# few-thousand-image runs that dominate use, Spark's job latency was most of the PCA's time.


def _chunks(files: list[str], n: int) -> list[list[str]]:
    return [files[i::n] for i in range(n) if files[i::n]]


def driver_moments(store: Store, files: list[str], *, threads: int = 2) -> Moments:
    """(n, Σx, XᵀX) of the ``features`` column of ``files``, read and reduced on the driver."""

    def reduce(chunk: list[str]) -> Moments:
        total = Moments.zero()
        for path in chunk:
            total = total + moments_of(feature_matrix(store.read_table(path, columns=[FEATURES]).column(0)))
        return total

    parts = _chunks(files, threads)
    with ThreadPoolExecutor(max_workers=max(1, len(parts))) as pool:
        partials = list(pool.map(reduce, parts))
    return sum(partials, Moments.zero())


def driver_project(model: PipelineModel, store: Store, files: list[str], folder: str, *, threads: int = 2) -> int:
    """Project each features file into ``folder``/<same name> (path, label, split, pca); returns rows."""
    from fruitlens.projection import project_table

    arrays = projection_arrays(model)

    def write(path: str) -> int:
        table = store.read_table(path, columns=[*CARRIED, FEATURES])
        store.write_table(f"{folder}/{path.rsplit('/', 1)[1]}", project_table(table, *arrays))
        return table.num_rows

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(write, files))


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


def project(model: PipelineModel, features: DataFrame) -> DataFrame:
    """(path, label, split, features) → (path, label, split, pca array<float>), in the Python workers."""
    from fruitlens.projection import make_projector

    arrays = features.sparkSession.sparkContext.broadcast(projection_arrays(model))
    return features.select(*CARRIED, FEATURES).mapInArrow(make_projector(arrays), PCA_DDL)
