"""The feature stage's mechanics (fruitlens.featurize.make_featurizer) without Spark, TensorFlow or ONNX
Runtime: the function Spark runs on a partition, run here in a process set up as a Python worker is
(SparkFiles' root holds the shipped model file), with the fake engine (tests/fakes/fake_engine.py).
Batching, one commit per batch, decode vs read errors, retried reads, order and progress."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import real_images
from fakes import fake_engine
from pyspark import SparkFiles

from fruitlens.config import PipelineConfig
from fruitlens.engines import prepare_model
from fruitlens.featurize import SUMMARY_FIELDS, make_featurizer
from fruitlens.images import decode_rgb, preprocess
from fruitlens.progress import ImageProgress
from fruitlens.state.layout import ERRORS as ERRORS_DIR
from fruitlens.state.layout import FEATURES as FEATURES_DIR
from fruitlens.state.ledger import batch_name
from fruitlens.state.schema import DECODE, READ
from fruitlens.storage.store import Store, StoreOptions

SIZE = 96  # the smallest model size: the fake engine does not care, the test runs faster


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """This process as a Spark Python worker: SparkFiles' root holds the file the driver shipped."""
    monkeypatch.setenv("FRUITLENS_CACHE", str(tmp_path / "cache"))
    artifact = prepare_model(fake_engine.NAME, "imagenet", image_size=SIZE)
    files = tmp_path / "spark-files"
    files.mkdir()
    shutil.copy(artifact.path, files / artifact.file_name)
    monkeypatch.setattr(SparkFiles, "_root_directory", str(files))
    monkeypatch.setattr(SparkFiles, "_is_running_on_worker", True)
    fake_engine.CALLS.clear()
    return artifact


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """INPUT: 7 real photos in two classes, one text file named .jpg, one listed file that is gone."""
    root = tmp_path / "in"
    files = {}
    for i, photo in enumerate(real_images("Test", per_class=4, classes=2)[:7]):
        dest = root / "Test" / photo.parent.name / f"{i}_{photo.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        files[f"photo{i}"] = Path(shutil.copyfile(photo, dest))
    files["text"] = root / "Test" / "odd" / "text.jpg"
    files["text"].parent.mkdir(parents=True)
    files["text"].write_bytes(b"not an image\n")
    files["gone"] = root / "Test" / "odd" / "gone.jpg"
    return files


def rows_of(paths) -> list[tuple[str, int, int]]:
    """The driver's listing rows: (Spark path, size, modified_us)."""
    return [(f"file:{p}", p.stat().st_size if p.exists() else 10, 1_000 + i) for i, p in enumerate(paths)]


def run(artifact, rows, tmp_path, **kwargs) -> list[dict]:
    Store(f"file://{tmp_path / 'out'}").make_dirs(FEATURES_DIR, ERRORS_DIR)  # as the driver does before
    settings = {k: kwargs.pop(k) for k in ("retry_timeout", "max_image_mpx") if k in kwargs}
    config = PipelineConfig(output=str(tmp_path / "out"), batch_size=kwargs.pop("batch_size", 2),
                            commit_size=kwargs.pop("commit_size", 3), **settings)
    featurize = make_featurizer(artifact, config, input_uri=f"file://{tmp_path / 'in'}",
                                output_uri=f"file://{tmp_path / 'out'}", options=StoreOptions(), **kwargs)
    return [dict(zip(SUMMARY_FIELDS, s, strict=True)) for s in featurize(iter(rows))]


def expected_features(path: Path) -> np.ndarray:
    return fake_engine.features_of(preprocess(decode_rgb(path.read_bytes(), (SIZE, SIZE))[None]))[0]


def test_each_commit_batch_is_one_features_file_in_order_with_inference_in_batches(worker, photos, tmp_path):
    good = [photos[f"photo{i}"] for i in range(7)]
    rows = rows_of(good)
    summaries = run(worker, rows, tmp_path, batch_size=2, commit_size=3)

    batches = [rows[0:3], rows[3:6], rows[6:7]]
    assert [s["file"] for s in summaries] == [batch_name(b) for b in batches]  # in order, one per batch
    assert [(s["images"], s["features"], s["errors"]) for s in summaries] == [(3, 3, 0), (3, 3, 0), (1, 1, 0)]
    assert fake_engine.CALLS == [2, 1, 2, 1, 1]  # batch_size within each commit batch
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / FEATURES_DIR).iterdir()) == sorted(s["file"] for s in summaries)
    assert not any((out / ERRORS_DIR).iterdir())  # no errors, no errors file
    for summary, batch in zip(summaries, batches, strict=True):
        table = pq.read_table(out / FEATURES_DIR / summary["file"]).to_pydict()
        assert table["path"] == [r[0] for r in batch]  # the rows' order within a file
        assert table["size"] == [r[1] for r in batch]
        assert table["label"] == [Path(r[0]).parent.name for r in batch] and set(table["split"]) == {"Test"}
        for path, feats in zip(table["path"], table["features"], strict=True):  # each row is its own photo's
            np.testing.assert_array_equal(np.array(feats, np.float32), expected_features(Path(path[5:])))


def test_undecodable_and_unreadable_files_are_error_rows_of_their_kind(worker, photos, tmp_path):
    rows = rows_of([photos["photo0"], photos["text"], photos["gone"], photos["photo1"]])
    (summary,) = run(worker, rows, tmp_path, commit_size=4)
    assert (summary["images"], summary["features"], summary["errors"], summary["read_errors"]) == (4, 2, 2, 1)

    out = tmp_path / "out"
    assert pq.read_table(out / FEATURES_DIR / summary["file"]).column("path").to_pylist() == [rows[0][0], rows[3][0]]
    errors = pq.read_table(out / ERRORS_DIR / summary["file"]).to_pydict()
    assert errors["path"] == [rows[1][0], rows[2][0]]
    assert errors["kind"] == [DECODE, READ]  # a decode error is a verdict; a read error is tried again
    assert "not an image" in errors["error"][0]
    assert errors["error"][1].startswith("file vanished since the listing")


def test_a_read_that_fails_for_a_while_is_retried_and_one_that_keeps_failing_is_a_read_error(
        worker, photos, tmp_path, monkeypatch):
    flaky, broken = f"{photos['photo0']}", f"{photos['photo1']}"
    failures = {flaky: 1, broken: 10**6}
    real = Store.read_bytes

    def read_bytes(self, path):
        if failures.get(path, 0) > 0:
            failures[path] -= 1
            raise PermissionError(13, "Permission denied", path)
        return real(self, path)

    monkeypatch.setattr(Store, "read_bytes", read_bytes)
    rows = rows_of([photos["photo0"], photos["photo1"], photos["photo2"]])
    (summary,) = run(worker, rows, tmp_path, retry_timeout=1.0)

    assert (summary["features"], summary["errors"], summary["read_errors"]) == (2, 1, 1)
    assert failures[flaky] == 0 and failures[broken] < 10**6 - 1  # retried: once, then for the budget
    out = tmp_path / "out"
    features = pq.read_table(out / FEATURES_DIR / summary["file"]).to_pydict()
    assert features["path"] == [rows[0][0], rows[2][0]]
    np.testing.assert_array_equal(np.array(features["features"][0], np.float32), expected_features(photos["photo0"]))
    errors = pq.read_table(out / ERRORS_DIR / summary["file"]).to_pydict()
    assert errors["kind"] == [READ] and errors["error"][0].startswith("cannot read file (retried for 1 s)")


def test_each_committed_batch_reports_its_images_to_the_driver(worker, photos, tmp_path):
    rows = rows_of([photos[f"photo{i}"] for i in range(7)] + [photos["text"]])
    with ImageProgress("extract", enabled=False) as progress:
        summaries = run(worker, rows, tmp_path, commit_size=3, progress=progress.address)
        deadline = time.monotonic() + 5
        while progress.done < len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert progress.done == len(rows) == sum(s["images"] for s in summaries)


def test_an_empty_partition_commits_nothing(worker, tmp_path):
    assert run(worker, [], tmp_path) == []
    assert not any((tmp_path / "out" / FEATURES_DIR).iterdir())
