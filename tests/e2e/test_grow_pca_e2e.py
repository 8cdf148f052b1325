"""Incremental PCA end to end (fruitlens.pca_state): real Spark, real photos, grow runs against clean runs.

A grow run reads only the feature files it has not summed yet, refits from the summed moments (equal to a clean
run's PCA within 1e-6 relative), and keeps the basis in force while it fits within the tolerance; `--pca-exact`
and an OUTPUT without the records give the clean result too.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from conftest import SAMPLE

from fruitlens.cli import main
from fruitlens.storage.store import Store

pytestmark = pytest.mark.slow

KNOWN = ("Cherry 3", "Plum 5", "apple_golden_1")
NEW = "Orange 2"
ARGS = ["--commit-size", "32", "--no-progress"]


def copy(src: Path, label: str, start: int, stop: int) -> list[Path]:
    (src / "Training" / label).mkdir(parents=True, exist_ok=True)
    out = []
    for image in sorted((SAMPLE / "Training" / label).glob("*.jpg"))[start:stop]:
        out.append(src / "Training" / label / image.name)
        shutil.copyfile(image, out[-1])
    return out


def rows(out: Path, kind: str) -> dict[str, np.ndarray]:
    table = ds.dataset(str(out / kind), format="parquet").to_table()
    col = "features" if kind == "features" else "pca"
    by_path = dict(zip(table.column("path").to_pylist(), np.array(table.column(col).to_pylist()), strict=True))
    assert len(by_path) == table.num_rows, f"duplicate paths in {kind}"
    return by_path


def basis(out: Path) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO((out / "_fruitlens" / "pca-basis.npz").read_bytes())) as z:
        return {k: z[k] for k in ("mean", "scale", "components")}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_same_pca(got: Path, want: Path) -> None:
    """Same paths, features within 1e-4, the PCA (centre, components, explained variance) within 1e-6 relative."""
    a, b = rows(got, "features"), rows(want, "features")
    assert set(a) == set(b)
    assert max(np.abs(a[p] - b[p]).max() for p in a) <= 1e-4
    x, y = basis(got), basis(want)
    assert x["components"].shape == y["components"].shape
    for key in x:
        assert np.abs(x[key] - y[key]).max() <= 1e-6 * np.abs(y[key]).max(), key
    np.testing.assert_allclose(manifest(got)["pca"]["explained_variance"], manifest(want)["pca"]["explained_variance"],
                               rtol=1e-6)
    p, q = rows(got, "pca"), rows(want, "pca")
    assert set(p) == set(a)
    assert max(np.abs(p[k] - q[k]).max() for k in p) <= 1e-4 * max(np.abs(q[k]).max() for k in q)


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> tuple[Path, Path]:
    """INPUT (150 photos of 3 classes, then 150 more: 75 of those classes, 75 of a new one) and its OUTPUT
    made by a clean run and a grow run."""
    root = tmp_path_factory.mktemp("grow")
    src, out = root / "in", root / "out"
    for label in KNOWN:
        copy(src, label, 0, 50)
    assert main(["run", str(src), str(out), *ARGS]) == 0
    assert manifest(out)["pca"]["incremental"]["moments"] == "full"
    for label in KNOWN:
        copy(src, label, 50, 75)
    copy(src, NEW, 0, 75)
    assert main(["run", str(src), str(out), *ARGS]) == 0
    return src, out


def test_a_grow_run_equals_a_clean_run_over_all_photos(grown, tmp_path):
    src, out = grown
    inc = manifest(out)["pca"]["incremental"]
    assert inc["moments"] == "incremental" and inc["rows_reused"] == 150 and inc["rows_read"] == 150
    # A new class moves the basis beyond the tolerance: the exact refit replaced it, every row projected again.
    assert inc["basis"] == "refit" and inc["rows_projected"] == 300, inc
    cost = manifest(out)["cost"]  # what the grow run did: 150 photos
    assert cost["images"] == 150 and cost["total"] > 0 and cost["per_100k_images"] > 0
    assert [bool(h.get("cost")) for h in manifest(out)["history"]] == [True, True]
    clean = tmp_path / "clean"
    assert main(["run", str(src), str(clean), *ARGS]) == 0
    assert_same_pca(out, clean)


def test_a_grow_run_reads_only_the_new_feature_files_and_keeps_a_basis_that_fits(grown, tmp_path, monkeypatch):
    src, out = grown
    before_files = {p.name for p in (out / "features").glob("*.parquet")}
    before_pca = rows(out, "pca")
    kept = basis(out)
    added = [p for label in KNOWN for p in copy(src, label, 75, 85)]

    reads: list[tuple[str, tuple]] = []
    read_table = Store.read_table

    def counting(self, path, columns=None):
        reads.append((path, tuple(columns or ())))
        return read_table(self, path, columns)

    monkeypatch.setattr(Store, "read_table", counting)
    assert main(["run", str(src), str(out), *ARGS, "--pca-drift-tolerance", "0.5"]) == 0
    monkeypatch.undo()

    new_files = {p.name for p in (out / "features").glob("*.parquet")} - before_files
    feature_reads = {Path(p).name for p, cols in reads if "/features/" in p}
    assert new_files and feature_reads == new_files  # not one committed file read again
    inc = manifest(out)["pca"]["incremental"]
    assert inc["basis"] == "kept" and inc["files_read"] == len(new_files) and inc["rows_projected"] == len(added)
    assert 0 <= inc["variance_loss"] <= 0.5 and inc["centre_offset"] <= 0.5
    # One coordinate system: old rows untouched, new rows projected with the basis in force.
    after_pca, feats = rows(out, "pca"), rows(out, "features")
    assert set(after_pca) == set(feats)
    for path, value in before_pca.items():
        np.testing.assert_array_equal(after_pca[path], value)
    for path in {f"file:{p}" for p in added}:
        want = ((feats[path].astype(np.float64) - kept["mean"]) * kept["scale"]) @ kept["components"]
        np.testing.assert_allclose(after_pca[path], want, rtol=1e-5, atol=1e-5)

    # An OUTPUT from before the records: the moments computed once from every file, then the same PCA.
    (out / "_fruitlens" / "pca-moments.npz").unlink()
    (out / "_fruitlens" / "pca-basis.npz").unlink()
    assert main(["run", str(src), str(out), *ARGS]) == 0
    inc = manifest(out)["pca"]["incremental"]
    assert inc["moments"] == "full" and "no moments record" in inc["why_full"] and inc["basis"] == "refit"
    clean = tmp_path / "clean"
    assert main(["run", str(src), str(clean), *ARGS]) == 0
    assert_same_pca(out, clean)

    # --pca-exact: every feature read, the same result again.
    assert main(["run", str(src), str(out), *ARGS, "--pca-exact"]) == 0
    inc = manifest(out)["pca"]["incremental"]
    assert inc["why_full"] == "--pca-exact" and inc["why_refit"] == "--pca-exact"
    assert inc["rows_read"] == len(feats) and inc["rows_projected"] == len(feats)
    assert_same_pca(out, clean)
