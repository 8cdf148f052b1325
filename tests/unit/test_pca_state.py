"""The incremental PCA's arithmetic and records without Spark (fruitlens.pca_state)."""
from __future__ import annotations

import numpy as np
import pytest

from fruitlens.engines import FEATURE_DIM
from fruitlens.moments import moments_of
from fruitlens.pca import fit_arrays
from fruitlens.pca_state import (
    Basis,
    MomentsRecord,
    basis_loss,
    forget,
    load_basis,
    load_moments,
    save_basis,
    save_moments,
)
from fruitlens.state import layout
from fruitlens.state.schema import features_table
from fruitlens.storage.store import Store


def features(rng, n: int, shift: float = 0.0, d: int = 96) -> np.ndarray:
    """Non-negative, correlated rows like MobileNetV2's pooled ReLU6 outputs (values 0..6); fewer than 1280
    columns where only the arithmetic is tested (an eigendecomposition of 1280 x 1280 takes seconds here)."""
    base = rng.gamma(0.5, 1.0, size=(n, 16)) @ rng.uniform(0, 0.3, size=(16, d))
    return np.clip(base + shift + rng.normal(0, 0.05, size=(n, d)), 0, 6).astype(np.float32)


def test_moments_add_and_subtract_back_to_a_clean_sum(rng):
    a, b, c = features(rng, 300), features(rng, 200), features(rng, 100)
    whole = moments_of(np.vstack([a, c]))
    grown = moments_of(a) + moments_of(b) + moments_of(c)
    back = grown - moments_of(b)  # b's file removed
    assert back.n == whole.n
    np.testing.assert_allclose(back.total, whole.total, rtol=1e-12)
    cov, want = back.covariance(), whole.covariance()
    assert np.abs(cov - want).max() <= 1e-10 * np.abs(want).max()
    with pytest.raises(ValueError, match="cannot remove 300 rows from moments of 200"):
        moments_of(b) - moments_of(a)


def test_a_refit_from_summed_moments_equals_a_clean_fit_within_1e_6(rng):
    parts = [features(rng, 256) for _ in range(6)]
    summed = sum((moments_of(p) for p in parts[1:]), moments_of(parts[0]))
    clean = moments_of(np.vstack(parts))
    for standardize in (False, True):
        x = fit_arrays(summed, k=None, variance=0.99, standardize=standardize)
        y = fit_arrays(clean, k=None, variance=0.99, standardize=standardize)
        assert x.summary.k == y.summary.k
        for got, want in zip(x.arrays, y.arrays, strict=True):
            assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_basis_loss_is_zero_for_the_exact_fit_and_matches_the_rows(rng):
    x = features(rng, 800)
    m = moments_of(x)
    exact = fit_arrays(m, k=20, variance=None, standardize=False)
    loss = basis_loss(exact, m)
    assert loss["variance_loss"] < 1e-10 and loss["centre_offset"] < 1e-20
    assert loss["variance_kept"] == pytest.approx(exact.summary.cumulative_variance[-1], rel=1e-9)

    old = fit_arrays(moments_of(x[:400]), k=20, variance=None, standardize=False)
    loss = basis_loss(old, m)
    # The same figures, computed from the rows themselves.
    y = (x.astype(np.float64) - old.mean) @ old.components
    centred = (x - x.mean(0)).astype(np.float64)
    kept_var = ((centred @ old.components) ** 2).sum() / (len(x) - 1)
    best = np.linalg.eigvalsh(np.cov(centred, rowvar=False))[::-1][:20].sum()
    assert loss["variance_loss"] == pytest.approx(1 - kept_var / best, rel=1e-6)
    assert loss["centre_offset"] == pytest.approx((y.mean(0) @ y.mean(0)) / kept_var, rel=1e-6)
    assert 0 < loss["variance_loss"] < 0.05


def test_new_rows_of_a_new_kind_are_a_loss_beyond_the_default_tolerance(rng):
    old = features(rng, 2000)
    same, other = features(rng, 30), features(rng, 300, shift=0.5)
    kept = fit_arrays(moments_of(old), k=None, variance=0.95, standardize=False)
    assert basis_loss(kept, moments_of(np.vstack([old, same])))["variance_loss"] < 1e-3
    loss = basis_loss(kept, moments_of(np.vstack([old, other])))
    assert max(loss["variance_loss"], loss["centre_offset"]) > 1e-3


def test_records_round_trip_through_output(tmp_path, rng):
    out = Store(str(tmp_path))
    out.make_dirs(layout.STATE)
    assert load_moments(out) is None and load_basis(out) is None
    m = moments_of(features(rng, 50))
    save_moments(out, MomentsRecord(m, {"part-a.parquet": (50, 123)}))
    got = load_moments(out)
    assert got.files == {"part-a.parquet": (50, 123)} and got.moments.n == 50
    np.testing.assert_array_equal(got.moments.gram, m.gram)
    fit = fit_arrays(m, k=3, variance=None, standardize=True)
    save_basis(out, Basis(fit, {"k": 3, "variance": None, "standardize": True}))
    back = load_basis(out)
    assert back.settings == {"k": 3, "variance": None, "standardize": True} and back.k == 3
    for a, b in zip(back.fit.arrays, fit.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.fit.summary == fit.summary
    (tmp_path / layout.PCA_MOMENTS).write_bytes(b"not a record")
    assert load_moments(out) is None  # a damaged record is recomputed, never trusted


def _commit(out: Store, name: str, x: np.ndarray) -> str:
    n = len(x)
    out.write_table(f"{layout.FEATURES}/{name}", features_table(
        [f"file:/in/{name}/{i}.jpg" for i in range(n)], ["a"] * n, ["train"] * n, [1] * n, [0] * n, x))
    return out.fs_path(f"{layout.FEATURES}/{name}")


def test_forget_takes_a_removed_files_rows_out_of_the_record(tmp_path, rng):
    out = Store(str(tmp_path))
    out.make_dirs(layout.FEATURES, layout.STATE)
    a, b = features(rng, 40, d=FEATURE_DIM), features(rng, 30, d=FEATURE_DIM)
    pa_, pb = _commit(out, "part-a.parquet", a), _commit(out, "part-b.parquet", b)
    size = {n: (tmp_path / layout.FEATURES / n).stat().st_size for n in ("part-a.parquet", "part-b.parquet")}
    save_moments(out, MomentsRecord(moments_of(a) + moments_of(b),
                                    {"part-a.parquet": (40, size["part-a.parquet"]),
                                     "part-b.parquet": (30, size["part-b.parquet"])}))
    assert forget(out, [str(tmp_path / layout.ERRORS / "part-b.parquet")]) == 0  # not a features file
    assert forget(out, [pb]) == 30
    got = load_moments(out)
    assert set(got.files) == {"part-a.parquet"} and got.moments.n == 40
    np.testing.assert_allclose(got.moments.gram, moments_of(a).gram, rtol=1e-12, atol=1e-9)
    assert forget(out, [pb]) == 0  # already out

    # A file that is not the one the record summed (other rows): the record is dropped, recomputed later.
    _commit(out, "part-a.parquet", a[:10])
    assert forget(out, [pa_]) == 0 and load_moments(out) is None
