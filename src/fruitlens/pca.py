"""PCA with Spark ML on the feature vectors: centre (optionally scale), fit, choose k, project, save.

Spark fits PCA from a distributed covariance (a k x k Gramian summed over partitions), so memory on the
driver depends on the feature size (1280), never on the number of images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.storagelevel import StorageLevel

from fruitlens.engine import FEATURE_DIM


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


def fit_pca(
    features: DataFrame, *, k: int | None, variance: float | None, standardize: bool
) -> tuple[PipelineModel, PcaSummary]:
    """Fit on ``features`` (column ``features``: array<float>); exactly one of ``k``/``variance``."""
    vectors = features.select(array_to_vector("features").alias("vector")).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows = vectors.count()
        if rows < 2:
            raise ValueError(f"PCA needs at least 2 feature rows, found {rows}")
        scaler = StandardScaler(inputCol="vector", outputCol="scaled", withMean=True, withStd=standardize).fit(vectors)
        scaled = scaler.transform(vectors).select("scaled").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if k is None:
                full = PCA(k=FEATURE_DIM, inputCol="scaled", outputCol="pca").fit(scaled)
                k = choose_k(full.explainedVariance.toArray(), variance)
            model = PCA(k=k, inputCol="scaled", outputCol="pca").fit(scaled)
        finally:
            scaled.unpersist()
    finally:
        vectors.unpersist()
    explained = [float(v) for v in model.explainedVariance.toArray()]
    summary = PcaSummary(
        k=k,
        explained_variance=explained,
        cumulative_variance=[float(v) for v in np.cumsum(explained)],
        standardize=standardize,
        rows=rows,
    )
    # Saved as one model: a vector column "vector" in, centred (scaled) and projected "pca" out.
    return PipelineModel(stages=[scaler, model]), summary


def project(model: PipelineModel, features: DataFrame) -> DataFrame:
    """(path, label, split, features) → (path, label, split, pca array<float>)."""
    vectors = features.select("path", "label", "split", array_to_vector("features").alias("vector"))
    return model.transform(vectors).select(
        "path", "label", "split", vector_to_array("pca", dtype="float32").alias("pca")
    )
