"""Projecting feature rows onto the principal components, file by file, on the driver or in the Python workers.

The fitted arrays (mean, scale, components: 1280 x k doubles, ~2 MB at k=187) travel to the workers as one
broadcast variable (fruitlens.pca_stage), not inside every task's closure (Spark warned of multi-MB tasks);
each file is then one matrix product. The saved Spark ML ``PipelineModel`` computes the same
thing for users (a test keeps the two within 1e-5). Kept light: workers import only numpy and pyarrow.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from fruitlens.moments import feature_matrix
from fruitlens.state.schema import FEATURES, pca_table


def project_batch(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(n, d) features → (n, k): centre, scale (1 or 1/std; 0 for constant features), project."""
    return ((x.astype(np.float64) - mean) * scale) @ components


def project_table(table: pa.Table | pa.RecordBatch, mean: np.ndarray, scale: np.ndarray,
                  components: np.ndarray) -> pa.Table:
    """(path, label, split, features) rows → (path, label, split, pca list<float>)."""
    x = feature_matrix(table.column(FEATURES))
    return pca_table(table, project_batch(x, mean, scale, components).astype(np.float32))


def project_files(store, paths: list[str], folder: str, mean: np.ndarray, scale: np.ndarray,
                  components: np.ndarray) -> int:
    """Project committed feature files (filesystem paths of ``store``) each into ``folder``/<same name>
    (path, label, split, pca): one projection file per feature file, so a grow run projects only its
    new files and a removed file's projection goes with it. Returns the rows projected."""
    from fruitlens.state.schema import CARRIED

    rows = 0
    for path in paths:
        table = store.read_table(path, columns=[*CARRIED, FEATURES])
        store.write_table(f"{folder}/{path.rsplit('/', 1)[1]}", project_table(table, mean, scale, components))
        rows += table.num_rows
    return rows
