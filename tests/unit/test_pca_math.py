"""The PCA arithmetic without Spark: moments, covariance, choice of k, eigenvector signs."""
from __future__ import annotations

import numpy as np

from fruitlens.moments import Moments
from fruitlens.pca import choose_k, eigen


def test_moments_summed_over_partitions_give_numpys_covariance(rng):
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 5.0
    parts = [Moments(len(p), p.sum(0), p.T @ p) for p in np.array_split(x, 4)]
    total = parts[0] + parts[1] + parts[2] + parts[3]
    np.testing.assert_allclose(total.covariance(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total.mean(), x.mean(0), rtol=1e-12)


def test_choose_k_is_the_fewest_components_reaching_the_target():
    ratios = [0.5, 0.3, 0.15, 0.05]
    assert choose_k(ratios, 0.5) == 1
    assert choose_k(ratios, 0.8) == 2
    assert choose_k(ratios, 0.81) == 3
    assert choose_k(ratios, 1.0) == 4


def test_eigen_sorts_descending_with_a_deterministic_sign(rng):
    a = rng.normal(size=(50, 5))
    cov = np.cov(a, rowvar=False)
    values, vectors = eigen(cov)
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(cov @ vectors, vectors * values, atol=1e-10)
    assert np.all(vectors[np.abs(vectors).argmax(0), np.arange(5)] > 0)
    v2 = eigen(cov)[1]
    np.testing.assert_array_equal(vectors, v2)


def test_partition_moments_read_sliced_arrow_batches_correctly(rng):
    import pyarrow as pa

    from fruitlens.moments import partition_moments

    x = rng.normal(size=(23, 1280)).astype(np.float32)
    table = pa.table({"features": pa.array(list(x), type=pa.list_(pa.float32()))})
    out = next(partition_moments(iter(table.to_batches(max_chunksize=5))))  # slices share one buffer
    assert out.column("n")[0].as_py() == 23
    total = np.frombuffer(out.column("total")[0].as_py())
    gram = np.frombuffer(out.column("gram")[0].as_py()).reshape(1280, 1280)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(total, x64.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gram, x64.T @ x64, rtol=1e-10, atol=1e-9)
