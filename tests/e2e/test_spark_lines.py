"""The two Spark lines fruitlens supports (pyproject: pyspark>=3.5,<4.1) give the same job on the same photos.

Spark 4.0 is the pinned line (.venv, emr-spark-8.0.0); Spark 3.5 is EMR 7.x's, run from .venv-spark35
(scripts/setup-spark35.sh: pyspark 3.5.2, otherwise requirements.lock's pins). Both run this checkout's
source, as `fruitlens run INPUT OUTPUT --train --report` in a subprocess, and their features and PCA are
compared. Missing .venv-spark35 skips here and fails in CI (CI=true), where `make test` makes it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV35 = Path(os.environ.get("FRUITLENS_SPARK35_VENV", REPO / ".venv-spark35"))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def python35() -> str:
    python = VENV35 / "bin" / "python"
    if not python.exists():
        message = f"{python} is missing: run scripts/setup-spark35.sh (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 real photos: 2 classes x (Training, Test) x 6."""
    root = tmp_path_factory.mktemp("lines") / "in"
    for split in ("Training", "Test"):
        for label in ("Cherry 3", "Orange 2"):
            (root / split / label).mkdir(parents=True)
            for src in sorted((SAMPLE / split / label).glob("*.jpg"))[:6]:
                shutil.copyfile(src, root / split / label / src.name)
    return root


def fruitlens(python: str, *args: str, env: dict | None = None) -> dict:
    """`fruitlens ARGS` on ``python`` with this checkout's source first on the path; its JSON summary."""
    environ = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    done = subprocess.run([python, "-m", "fruitlens", *args, "--no-progress"], capture_output=True, text=True,
                          env=environ, timeout=900)
    assert done.returncode == 0, f"{python} fruitlens {' '.join(args)}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows(out: Path, folder: str, column: str) -> dict[str, np.ndarray]:
    table = pq.read_table(out / folder, columns=["path", column]).to_pydict()
    return {path: np.asarray(values, np.float64) for path, values in zip(table["path"], table[column])}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    worst = max(float(np.abs(a[p] - b[p]).max()) for p in a)
    assert worst <= TOLERANCE, f"largest difference {worst}"
    return worst


@pytest.fixture(scope="module")
def runs(python35, photos, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("outputs")
    out = {"4.0": base / "spark40", "3.5": base / "spark35"}
    for line, python in (("4.0", sys.executable), ("3.5", python35)):
        fruitlens(python, "run", str(photos), str(out[line]), "--train", "--report", "--pca-k", "4")
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_each_line_runs_the_whole_job_with_its_own_pyspark(runs):
    """On 3.5 the PCA save failed (DefaultParamsWriter.getMetadataToSave(Params, SparkSession) is 4.0-only)."""
    for line, out in runs.items():
        m = manifest(out)
        assert m["versions"]["pyspark"].startswith(line + ".")
        assert m["counts"]["features"] == 24 and m["counts"]["errors"] == 0
        assert m["pca"]["k"] == 4 and (out / "pca_model" / "metadata" / "part-00000").is_file()
        assert m["classifier"]["test_rows"] == 12
        assert (out / "predictor" / "head.npz").is_file() and (out / "report" / "index.html").is_file()


def test_both_lines_give_the_same_features_and_pca(runs):
    old, new = runs["3.5"], runs["4.0"]
    assert_same(rows(old, "features", "features"), rows(new, "features", "features"))
    assert_same(rows(old, "pca", "pca"), rows(new, "pca", "pca"))
    np.testing.assert_allclose(manifest(old)["pca"]["explained_variance"], manifest(new)["pca"]["explained_variance"],
                               atol=1e-6)
    for out in (old, new):  # the stage metadata came from each line's own DefaultParamsWriter
        stage = json.loads(next((out / "pca_model" / "stages").glob("0_*/metadata/part-00000")).read_text())
        assert stage["class"] == "org.apache.spark.ml.feature.StandardScalerModel"
        assert stage["sparkVersion"] == manifest(out)["versions"]["pyspark"]


def test_the_spark_pca_path_on_35_gives_the_same_pca(runs, python35):
    """PCA as Spark jobs (moments and projection through mapInArrow) on 3.5: what large sets use."""
    old = runs["3.5"]
    # --pca-exact: both passes as Spark tasks on 3.5, not the kept moments record
    fruitlens(python35, "pca", str(old), "--pca-k", "4", "--pca-exact", env={"FRUITLENS_DRIVER_PCA_MAX_ROWS": "0"})
    assert manifest(old)["pca"]["on"] == "spark"
    assert_same(rows(old, "pca", "pca"), rows(runs["4.0"], "pca", "pca"))
