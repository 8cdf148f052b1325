"""End to end on real photos with real weights, Spark local[*]: `fruitlens run` as a user runs it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import real_images, uri_to_path

from fruitlens.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_output(mixed_input, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out put"
    # 3 bad files of 38 (8 %), on purpose: above the default --max-error-rate (5 %).
    code = main(["run", str(mixed_input["root"]), str(out), "--pca-k", "5", "--batch-size", "8",
                 "--max-error-rate", "0.1", "--no-progress"])
    assert code == 0
    return out


def read(out: Path, name: str) -> dict:
    table = pq.read_table(out / name)
    return {"table": table, "rows": table.to_pylist()}


def test_every_matched_image_is_a_feature_row_or_an_error_row(run_output, mixed_input):
    features = {uri_to_path(r["path"]) for r in read(run_output, "features")["rows"]}
    errors = {uri_to_path(r["path"]): r["error"] for r in read(run_output, "errors")["rows"]}
    assert features == set(mixed_input["good"])
    assert set(errors) == set(mixed_input["bad"])
    for path, reason in mixed_input["bad"].items():
        assert reason in errors[path]
    manifest = json.loads((run_output / "manifest.json").read_text())
    n = len(features) + len(errors)
    assert manifest["counts"] == {"matched": n, "features": len(features), "errors": len(errors),
                                  "decode_errors": len(errors), "read_errors": 0, "processed": n, "new": n,
                                  "reused": 0, "changed": 0, "removed": 0, "retried": 0}


def test_features_have_the_documented_schema_labels_and_splits(run_output):
    table = read(run_output, "features")["table"]
    assert table.schema.names == ["path", "label", "split", "features", "size", "modified"]
    assert str(table.schema.field("features").type) == "list<element: float>"
    rows = table.to_pylist()
    assert all(len(r["features"]) == 1280 for r in rows)
    labels = {(r["label"], r["split"]) for r in rows}
    assert ("Orange ü 2", "Training") in labels and ("Cherry 3", "Test") in labels
    assert ("Odd cases", "Test") in labels
    errors = pq.read_table(run_output / "errors")
    assert errors.schema.names == ["path", "error", "kind", "size", "modified"]
    assert set(errors.column("kind").to_pylist()) == {"decode"}
    sizes = {uri_to_path(r["path"]): r["size"] for r in rows}
    assert all(Path(p).stat().st_size == size for p, size in sizes.items())


def test_spark_features_equal_a_direct_keras_prediction(run_output):
    import keras

    from fruitlens.images import decode_rgb, preprocess

    rows = read(run_output, "features")["rows"]
    paths = [Path(uri_to_path(r["path"])) for r in rows]
    x = preprocess(np.stack([decode_rgb(p.read_bytes()) for p in paths]))
    model = keras.applications.MobileNetV2(weights="imagenet", include_top=False, pooling="avg",
                                           input_shape=(224, 224, 3))
    expected = model.predict(x, verbose=0)
    got = np.array([r["features"] for r in rows], dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-4


def test_pca_matches_numpy_and_the_saved_model_projects_new_rows(run_output):
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import SparkSession

    feats = read(run_output, "features")["rows"]
    x = np.array([r["features"] for r in feats], dtype=np.float64)
    cov = np.cov(x, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    ratios = values / values.sum()

    manifest = json.loads((run_output / "manifest.json").read_text())
    pca = manifest["pca"]
    assert pca["k"] == 5 and pca["rows"] == len(feats)
    np.testing.assert_allclose(pca["explained_variance"], ratios[:5], rtol=1e-6)
    np.testing.assert_allclose(pca["cumulative_variance"], np.cumsum(ratios[:5]), rtol=1e-6)

    projected = {r["path"]: r["pca"] for r in read(run_output, "pca")["rows"]}
    assert set(projected) == {r["path"] for r in feats}
    expected = (x - x.mean(0)) @ vectors[:, :5]
    got = np.array([projected[r["path"]] for r in feats])
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=2e-4)  # eigenvector signs are arbitrary

    spark = SparkSession.builder.getOrCreate()
    model = PipelineModel.load(str(run_output / "pca_model"))
    new = spark.createDataFrame([(r["features"],) for r in feats[:3]], "features array<float>")
    out = model.transform(new.select(array_to_vector("features").alias("vector")))
    again = np.array([r[0] for r in out.select(vector_to_array("pca")).collect()])
    np.testing.assert_allclose(again, got[:3], atol=1e-5)


def test_manifest_records_timings_rates_config_and_versions(run_output):
    m = json.loads((run_output / "manifest.json").read_text())
    assert {"setup", "extract", "pca", "total"} <= set(m["timings_s"])
    assert m["images_per_second"]["extract"] > 0
    assert m["engine"]["name"] == "onnx"
    assert m["config"]["pca_k"] == 5 and m["config"]["batch_size"] == 8
    assert {"pyspark", "numpy", "pillow", "onnxruntime"} <= set(m["versions"])
    # Each image was read and decoded once: no re-evaluation, no second pass.
    assert m["worker_seconds"]["images"] == m["counts"]["matched"]


def test_a_rerun_reuses_everything_and_another_output_is_refused_without_overwrite(run_output, mixed_input,
                                                                                   tmp_path, capsys):
    import shutil

    copy = tmp_path / "again"
    shutil.copytree(run_output, copy)
    before = read(copy, "features")["rows"]
    capsys.readouterr()
    assert main(["run", str(mixed_input["root"]), str(copy), "--pca-k", "5", "--no-progress"]) == 1  # 8 % errors
    assert "3 of 38 images (7.9%) ended as errors (3 decode, 0 read), more than --max-error-rate 0.05" in \
        capsys.readouterr().err
    assert not (copy / "manifest.json").exists()
    assert main(["run", str(mixed_input["root"]), str(copy), "--pca-k", "5", "--no-progress",
                 "--max-error-rate", "0.1"]) == 0
    m = json.loads((copy / "manifest.json").read_text())
    assert m["counts"]["reused"] == m["counts"]["matched"] and m["counts"]["processed"] == 0
    assert m["worker_seconds"]["images"] == 0 and len(m["history"]) == 3
    assert read(copy, "features")["rows"] == before

    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "x.parquet").write_text("not ours")
    capsys.readouterr()
    assert main(["run", str(mixed_input["root"]), str(foreign), "--no-progress"]) == 1
    assert "is not a fruitlens output" in capsys.readouterr().err
    assert (foreign / "data" / "x.parquet").read_text() == "not ours"


def test_pca_can_be_refit_on_an_existing_output(run_output, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_output, copy)
    assert main(["pca", str(copy), "--pca-variance", "0.9", "--no-progress"]) == 0
    m = json.loads((copy / "manifest.json").read_text())
    assert m["pca"]["cumulative_variance"][-1] >= 0.9 > m["pca"]["cumulative_variance"][-2]
    assert m["counts"]["features"] == len(read(copy, "pca")["rows"])
    assert len(read(copy, "pca")["rows"][0]["pca"]) == m["pca"]["k"]


def test_pca_as_spark_jobs_equals_pca_on_the_driver(run_output, tmp_path, monkeypatch):
    """Above ``driver_pca_max_rows`` the same two passes run as Spark jobs: same model, same rows."""
    import shutil

    copy = tmp_path / "spark-pca"
    shutil.copytree(run_output, copy)
    monkeypatch.setenv("FRUITLENS_DRIVER_PCA_MAX_ROWS", "0")
    # --pca-exact: both passes (moments of every file, projection) as Spark tasks, not the moments record.
    assert main(["pca", str(copy), "--pca-k", "5", "--pca-exact", "--no-progress"]) == 0
    on_driver = json.loads((run_output / "manifest.json").read_text())["pca"]
    on_spark = json.loads((copy / "manifest.json").read_text())["pca"]
    assert (on_driver["on"], on_spark["on"]) == ("driver", "spark")
    np.testing.assert_allclose(on_spark["explained_variance"], on_driver["explained_variance"], rtol=1e-9)
    driver_rows = {r["path"]: r["pca"] for r in read(run_output, "pca")["rows"]}
    spark_rows = {r["path"]: r["pca"] for r in read(copy, "pca")["rows"]}
    assert driver_rows.keys() == spark_rows.keys()
    for path, row in spark_rows.items():
        np.testing.assert_allclose(row, driver_rows[path], atol=1e-4)


def _jobs_so_far() -> int:
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    return len(sc.statusTracker().getJobIdsForGroup()) if sc else 0


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "holds no images"),
    ("no-images", "holds no images"),
])
def test_a_wrong_input_fails_before_any_spark_job_naming_the_path(case, message, tmp_path, capsys, run_output):
    src = tmp_path / case
    if case != "missing":
        src.mkdir()
    if case == "no-images":
        (src / "Test" / "Kiwi").mkdir(parents=True)
        (src / "Test" / "Kiwi" / "notes.txt").write_text("x")
    jobs = _jobs_so_far()
    code = main(["run", str(src), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and str(src) in err
    assert _jobs_so_far() == jobs
    assert not (tmp_path / "out").exists()


def test_extract_writes_features_without_pca_and_limit_takes_the_first_images(tmp_path):
    src = real_images("Test", per_class=3, classes=2)[0].parents[1]
    out = tmp_path / "extract"
    assert main(["extract", str(src), str(out), "--limit", "7", "--no-progress", "--engine", "keras"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert {k: m["counts"][k] for k in ("matched", "features", "errors", "new")} == {
        "matched": 7, "features": 7, "errors": 0, "new": 7}
    assert m["pca"] is None and m["engine"]["name"] == "keras"
    assert not (out / "pca").exists()


def test_standardised_pca_matches_numpys_correlation_spectrum(run_output, tmp_path):
    import shutil

    copy = tmp_path / "std"
    shutil.copytree(run_output, copy)
    assert main(["pca", str(copy), "--pca-k", "4", "--pca-standardize", "--no-progress"]) == 0
    x = np.array([r["features"] for r in read(copy, "features")["rows"]], dtype=np.float64)
    std = x.std(0, ddof=1)
    z = (x - x.mean(0))[:, std > 0] / std[std > 0]  # constant features scale to 0, as in Spark
    values = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]
    m = json.loads((copy / "manifest.json").read_text())
    assert m["pca"]["standardize"] is True and m["config"]["pca_standardize"] is True
    np.testing.assert_allclose(m["pca"]["explained_variance"], (values / values.sum())[:4], rtol=1e-6)
    # The saved model (written without Spark jobs, fruitlens.mlsave) scales and projects as the pca rows.
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import SparkSession

    rows = read(copy, "pca")["rows"][:4]
    feats = {r["path"]: r["features"] for r in read(copy, "features")["rows"]}
    model = PipelineModel.load(str(copy / "pca_model"))
    assert model.stages[0].getWithStd() is True
    new = SparkSession.builder.getOrCreate().createDataFrame([(feats[r["path"]],) for r in rows], "features array<float>")
    again = [r[0] for r in model.transform(new.select(array_to_vector("features").alias("vector")))
             .select(vector_to_array("pca")).collect()]
    np.testing.assert_allclose(again, [r["pca"] for r in rows], atol=1e-4)


def test_python_workers_and_their_model_are_reused_across_feature_tasks(tmp_path):
    """Every feature task in a fresh Python worker would rebuild the model each time (~1 s per task): the
    manifest counts the workers that ran the tasks."""
    import os

    from conftest import SAMPLE

    tasks = 3 * (os.cpu_count() or 1)  # local[*]: more tasks than slots, so that workers must be reused
    out = tmp_path / "out"
    assert main(["run", str(SAMPLE / "Test"), str(out), "--limit", str(4 * tasks), "--partitions", str(tasks),
                 "--arrow-batch-size", "4", "--batch-size", "4", "--pca-k", "2", "--no-progress"]) == 0
    spark = json.loads((out / "manifest.json").read_text())["spark"]
    assert spark["feature_tasks"] == tasks > spark["task_slots"]
    assert 1 <= spark["python_workers"] <= spark["task_slots"]


def test_a_small_run_featurizes_in_the_driver_exactly_as_spark_workers_do(run_output, mixed_input, tmp_path,
                                                                          monkeypatch):
    """38 images: the driver featurizes them itself (no Python workers to start); with driver_max_images 0
    Spark's workers do. Same rows, same errors, features equal to float rounding."""
    monkeypatch.setenv("FRUITLENS_DRIVER_MAX_IMAGES", "0")
    out = tmp_path / "spark"
    assert main(["run", str(mixed_input["root"]), str(out), "--pca-k", "5", "--batch-size", "8",
                 "--max-error-rate", "0.1", "--no-progress"]) == 0
    manifests = [json.loads((o / "manifest.json").read_text()) for o in (run_output, out)]
    assert [m["spark"]["extract_on"] for m in manifests] == ["driver", "spark"]
    assert manifests[0]["spark"]["python_workers"] == 0 < manifests[1]["spark"]["python_workers"]
    assert manifests[0]["counts"] == manifests[1]["counts"]
    assert set(manifests[0]["setup_s"]) >= {"listing", "model", "plan", "spark_session"}
    driver, spark = (sorted(read(o, "features")["rows"], key=lambda r: r["path"]) for o in (run_output, out))
    assert [r["path"] for r in driver] == [r["path"] for r in spark]
    np.testing.assert_allclose([r["features"] for r in driver], [r["features"] for r in spark], atol=1e-5)
    errors = [sorted((r["path"], r["kind"]) for r in read(o, "errors")["rows"]) for o in (run_output, out)]
    assert errors[0] == errors[1] and errors[0]
