"""The Parquet schemas of OUTPUT's committed rows and of the PCA projection, named once.

Adding a column: declare it here (schema and table builder) and compute it where rows are made
(:mod:`fruitlens.featurize`); readers select the columns they need by these names.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

PATH, LABEL, SPLIT = "path", "label", "split"
FEATURES = "features"
PCA = "pca"
ERROR, KIND = "error", "kind"
SIZE, MODIFIED = "size", "modified"

#: The source file's version (``size``, ``modified``) on every committed row: what the ledger compares.
_SOURCE = [pa.field(SIZE, pa.int64()), pa.field(MODIFIED, pa.timestamp("us", tz="UTC"))]
#: Columns that describe the photo: carried from the features into the projection.
CARRIED = (PATH, LABEL, SPLIT)
_CARRIED_FIELDS = [pa.field(PATH, pa.string()), pa.field(LABEL, pa.string()), pa.field(SPLIT, pa.string())]

FEATURES_SCHEMA = pa.schema([*_CARRIED_FIELDS, pa.field(FEATURES, pa.list_(pa.float32())), *_SOURCE])
#: ``kind``: "decode" (not a usable image: a verdict until the file changes) or "read" (could not be read
#: at the time: retried by the next run). Error files written before the column existed hold decode errors.
ERRORS_SCHEMA = pa.schema([pa.field(PATH, pa.string()), pa.field(ERROR, pa.string()),
                           pa.field(KIND, pa.string()), *_SOURCE])
DECODE, READ = "decode", "read"
PCA_SCHEMA = pa.schema([*_CARRIED_FIELDS, pa.field(PCA, pa.list_(pa.float32()))])
#: The same, as Spark's DDL (``mapInArrow``'s output schema).
PCA_DDL = ", ".join(f"{name} string" for name in CARRIED) + f", {PCA} array<float>"
#: What the ledger reads of every committed file (never the feature vectors).
INDEX_COLUMNS = [PATH, SIZE, MODIFIED]


def _modified(modified: list[int]) -> pa.Array:
    return pa.array(modified, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _vectors(matrix: np.ndarray) -> pa.ListArray:
    """(n, d) float32 → list<float> rows, without a Python loop."""
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1)))


def features_table(paths: list[str], labels: list[str], splits: list[str], sizes: list[int],
                   modified: list[int], features: np.ndarray) -> pa.Table:
    """The committed form of feature rows (``features``: (n, 1280) float32)."""
    return pa.Table.from_arrays(
        [pa.array(paths, pa.string()), pa.array(labels, pa.string()), pa.array(splits, pa.string()),
         _vectors(features), pa.array(sizes, pa.int64()), _modified(modified)],
        schema=FEATURES_SCHEMA)


def errors_table(paths: list[str], errors: list[str], kinds: list[str], sizes: list[int],
                 modified: list[int]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(paths, pa.string()), pa.array(errors, pa.string()), pa.array(kinds, pa.string()),
         pa.array(sizes, pa.int64()), _modified(modified)],
        schema=ERRORS_SCHEMA)


def pca_table(carried: pa.Table | pa.RecordBatch, projected: np.ndarray) -> pa.Table:
    """The projection of feature rows: their :data:`CARRIED` columns and ``pca`` ((n, k) float32)."""
    return pa.Table.from_arrays([*(carried.column(name) for name in CARRIED), _vectors(projected)],
                                schema=PCA_SCHEMA)
