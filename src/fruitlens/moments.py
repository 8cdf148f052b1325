"""Sufficient statistics for PCA, computed where the rows are: (n, Σx, XᵀX) per partition.

Kept apart from pca.py so the Python workers that run it import only numpy and pyarrow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fruitlens.engines import FEATURE_DIM
from fruitlens.state.schema import FEATURES


@dataclass(frozen=True)
class Moments:
    n: int
    total: np.ndarray  # Σx, (d,)
    gram: np.ndarray  # XᵀX, (d, d)

    @classmethod
    def zero(cls) -> Moments:
        return cls(0, np.zeros(FEATURE_DIM), np.zeros((FEATURE_DIM, FEATURE_DIM)))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.gram + other.gram)

    def __sub__(self, other: Moments) -> Moments:
        """The moments without ``other``'s rows (a removed file's): exact up to float64 rounding, since
        the sums are of float32 features in float64 (see :mod:`fruitlens.pca_state` on the error)."""
        if other.n > self.n:
            raise ValueError(f"cannot remove {other.n} rows from moments of {self.n}")
        return Moments(self.n - other.n, self.total - other.total, self.gram - other.gram)

    def mean(self) -> np.ndarray:
        return self.total / self.n

    def covariance(self) -> np.ndarray:
        """Unbiased sample covariance, as Spark's RowMatrix.computeCovariance."""
        mu = self.mean()
        return (self.gram - self.n * np.outer(mu, mu)) / (self.n - 1)


def moments_of(x: np.ndarray) -> Moments:
    """(n, d) rows → their moments, in float64 (the covariance subtracts n·μμᵀ: float32 would cancel)."""
    x = x.astype(np.float64, copy=False)
    return Moments(len(x), x.sum(axis=0), x.T @ x)


def feature_matrix(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``list<float>`` column of 1280-d vectors → (n, 1280) float32."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    # flatten(), not .values: it honours the offsets of a sliced batch
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)


def partition_moments(batches):
    """mapInArrow: one output row per partition with its (n, Σx, XᵀX)."""
    n, total, gram = 0, np.zeros(FEATURE_DIM), np.zeros((FEATURE_DIM, FEATURE_DIM))
    for batch in batches:
        col = batch.column(FEATURES)
        if len(col) == 0:
            continue
        m = moments_of(feature_matrix(col))
        n, total, gram = n + m.n, total + m.total, gram + m.gram
    yield pa.RecordBatch.from_arrays(
        [pa.array([n], pa.int64()), pa.array([total.tobytes()], pa.binary()),
         pa.array([gram.tobytes()], pa.binary())],
        names=["n", "total", "gram"],
    )




def file_moments(store, paths: list[str]) -> tuple[Moments, dict[str, int]]:
    """The summed moments of the ``features`` column of these committed files (filesystem paths of
    ``store``) and the rows of each, by path: what :mod:`fruitlens.pca_state` adds or subtracts."""
    total, rows = Moments.zero(), {}
    for path in paths:
        m = moments_of(feature_matrix(store.read_table(path, columns=[FEATURES]).column(0)))
        total, rows[path] = total + m, m.n
    return total, rows
