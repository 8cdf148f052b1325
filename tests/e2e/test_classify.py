"""From features to fruit names: `run --train --report`, `train`, `predict`, `export`, the report in a real
headless Chromium, and the walk-through notebook — end to end on a real subset of the sample."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SAMPLE, real_images, truncated_jpeg, uri_to_path

from fruitlens.classify.train import metrics_from_confusion
from fruitlens.cli import main

TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 5
CLASSES = sorted(p.name for p in (SAMPLE / "Test").iterdir() if p.is_dir())
MISLABELLED = "mislabelled.jpg"
N_TEST = TEST_PER_CLASS * len(CLASSES) + 1


# ---------------------------------------------------------------- fast: the maths, without Spark or weights

def test_metrics_from_a_known_confusion_matrix():
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 2, 2]])  # rows true, columns predicted
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7, abs=1e-6),
                                   "support": 4}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.4)
    f1 = [6 / 7, 2 * 0.4 * 1.0 / 1.4, 2 / 3]
    assert m["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "rows_true_columns_predicted": cm.tolist()}


def _tiny_engine(path: Path) -> None:
    """A stand-in for MobileNetV2 with the same interface: (N,224,224,3) float → (N,3) channel means."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["Identity:0"], axes=[1, 2], keepdims=0)], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_exported_graph_computes_the_predictor_head(tmp_path, rng):
    """Preprocess → engine → centre/scale → project → Gemm → Softmax in ONNX equals the numpy head."""
    import onnxruntime as ort

    from fruitlens.classify.export import build_model
    from fruitlens.classify.predictor import Head

    _tiny_engine(tmp_path / "engine.onnx")
    head = Head(labels=["x", "y", "z", "w"], coefficients=rng.normal(size=(4, 2)), intercepts=rng.normal(size=4),
                mean=rng.normal(size=3) * 0.1, scale=np.array([2.0, 0.0, 1.5]), components=rng.normal(size=(3, 2)))
    model = build_model(tmp_path / "engine.onnx", head)
    images = rng.integers(0, 256, size=(5, 224, 224, 3), dtype=np.uint8)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"images": images})[0]
    x = images.astype(np.float64) / 127.5 - 1
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, head.probabilities(x.mean(axis=(1, 2))), atol=1e-5)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == ["x", "y", "z", "w"]


def test_predict_on_an_output_without_a_predictor_says_what_to_run(tmp_path, capsys):
    photo = real_images(per_class=1, classes=1)[0]
    assert main(["predict", str(tmp_path), str(photo)]) == 1
    err = capsys.readouterr().err
    assert "predictor lacks model.onnx" in err and f"fruitlens train {tmp_path}" in err


def tiny_predictor(folder: Path, rng) -> None:
    """OUTPUT/predictor as train writes it, around the tiny engine (3 features, 2 components, 3 classes)."""
    folder.mkdir(parents=True)
    _tiny_engine(folder / "model.onnx")
    np.savez(folder / "head.npz", coefficients=rng.normal(size=(3, 2)) * 5, intercepts=rng.normal(size=3),
             mean=np.zeros(3), scale=np.ones(3), components=rng.normal(size=(3, 2)))
    (folder / "labels.json").write_text(json.dumps(["a", "b", "c"]))


# ---------------------------------------------------------------- end to end on real photos

def _subset(root: Path) -> Path:
    """10 Training + 5 Test photos of each of the sample's 10 classes, one truncated JPEG, and one
    mislabelled Test photo (a photo of the first class in the last class' folder): a sure mistake."""
    for split, n in (("Training", TRAIN_PER_CLASS), ("Test", TEST_PER_CLASS)):
        for src in real_images(split, per_class=n):
            dst = root / split / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    (root / "Test" / CLASSES[0] / "truncated.jpg").write_bytes(truncated_jpeg())
    shutil.copyfile(real_images("Test", per_class=20, classes=1)[-1], root / "Test" / CLASSES[-1] / MISLABELLED)
    return root


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    return _subset(tmp_path_factory.mktemp("subset") / "fruits")


@pytest.fixture(scope="module")
def trained(subset, tmp_path_factory) -> Path:
    """`fruitlens run INPUT OUTPUT --train --report`, in one job."""
    out = tmp_path_factory.mktemp("trained") / "out"
    code = main(["run", str(subset), str(out), "--pca-variance", "0.95", "--batch-size", "16",
                 "--no-progress", "--train", "--report"])
    assert code == 0
    return out


def _test_photos(subset: Path) -> list[Path]:
    return sorted(p for p in (subset / "Test").rglob("*.jpg") if p.name != "truncated.jpg")


@pytest.mark.slow
def test_run_train_records_test_accuracy_and_metrics(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    metrics = json.loads((trained / "classifier" / "metrics.json").read_text())
    clf = manifest["classifier"]
    assert clf["split"] == "folders" and clf["on"] == "pca"
    assert clf["train_rows"] == TRAIN_PER_CLASS * len(CLASSES)
    assert clf["test_rows"] == metrics["test_rows"] == N_TEST
    assert clf["accuracy"] == metrics["accuracy"] and clf["macro_f1"] == metrics["macro_f1"]
    cm = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    assert metrics["confusion_matrix"]["labels"] == CLASSES
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert [m["support"] for m in metrics["per_class"].values()] == [TEST_PER_CLASS] * 9 + [TEST_PER_CLASS + 1]
    assert metrics["accuracy"] > 0.5, "MobileNetV2 features of 10 fruits are far better than chance"
    wrong = metrics["misclassified"]
    assert len(wrong) == cm.sum() - np.trace(cm) >= 1
    mislabelled = next(w for w in wrong if w["path"].endswith(MISLABELLED))
    assert (mislabelled["label"], mislabelled["predicted"]) == (CLASSES[-1], CLASSES[0])
    assert "train" in manifest["timings_s"]
    assert json.loads((trained / "predictor" / "labels.json").read_text()) == CLASSES


@pytest.fixture(scope="module")
def spark_probabilities(trained, subset):
    """The Spark models (pca_model then classifier) on the Test photos' features: path → (label, probs)."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.getActiveSession()
    features = spark.read.parquet(str(trained / "features")).where("split = 'Test'")
    pca = PipelineModel.load(str(trained / "pca_model")).transform(
        features.select("path", array_to_vector("features").alias("vector")))
    scored = PipelineModel.load(str(trained / "classifier")).transform(
        pca.select("path", F.col("pca").alias("vector")))
    rows = scored.select("path", "predicted_label", vector_to_array("probability").alias("p")).collect()
    return {uri_to_path(r["path"]): (r["predicted_label"], np.array(r["p"])) for r in rows}


@pytest.mark.slow
def test_predict_labels_photos_like_the_spark_model(trained, subset, spark_probabilities):
    from fruitlens.classify.predictor import Predictor

    photos = _test_photos(subset)
    predictor = Predictor.load(str(trained))
    results = predictor.predict_files([str(p) for p in photos], top_k=len(CLASSES))
    assert set(spark_probabilities) == {str(p) for p in photos}
    for r in results:
        label, p = spark_probabilities[r["path"]]
        assert r["label"] == label
        ours = np.array([next(t["probability"] for t in r["top"] if t["label"] == name) for name in predictor.labels])
        np.testing.assert_allclose(ours, p, atol=1e-4)


@pytest.mark.slow
def test_predict_cli_json_errors_and_imports_neither_spark_nor_tensorflow(trained, subset, tmp_path):
    folder = subset / "Test" / CLASSES[0]  # 5 photos + the truncated one
    (tmp_path / "notes.jpg").write_text("not an image")
    code = (
        "import json, sys\n"
        "from fruitlens.cli import main\n"
        f"rc = main(['predict', {str(trained)!r}, {str(folder)!r}, {str(tmp_path / 'notes.jpg')!r},\n"
        "            '--json', '--top-k', '2'])\n"
        "loaded = [m for m in ('pyspark', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(json.dumps({'rc': rc, 'loaded': loaded}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    status = json.loads(done.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "loaded": []}, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    by_path = {Path(x["path"]).name: x for x in lines}
    assert len(lines) == TEST_PER_CLASS + 2
    assert "cannot decode" in by_path["truncated.jpg"]["error"]
    assert "not an image" in by_path["notes.jpg"]["error"]
    good = [x for x in lines if "error" not in x]
    assert all(set(x) == {"path", "label", "probability", "top"} and len(x["top"]) == 2 for x in good)
    assert all(x["top"][0] == {"label": x["label"], "probability": x["probability"]} for x in good)
    # Only failures: exit status 1.
    assert main(["predict", str(trained), str(tmp_path / "notes.jpg")]) == 1


@pytest.mark.slow
def test_exported_onnx_agrees_with_predict(trained, subset, tmp_path):
    import onnxruntime as ort

    from fruitlens.classify.predictor import Predictor
    from fruitlens.images import decode_rgb

    target = tmp_path / "fruitlens.onnx"
    assert main(["export", str(trained), str(target)]) == 0
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(uint8)")]
    labels = json.loads(session.get_modelmeta().custom_metadata_map["labels"])
    photos = _test_photos(subset)
    images = np.stack([decode_rgb(p.read_bytes()) for p in photos])
    exported = session.run(None, {"images": images})[0]
    predictor = Predictor.load(str(trained))
    assert labels == predictor.labels
    np.testing.assert_allclose(exported, predictor.probabilities(images), atol=1e-4)
    assert target.stat().st_size > 8e6  # the MobileNetV2 weights are inside


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # part of the test environment: fail loudly, never skip
        pytest.fail("chromium not found: run .ci/setup.d/50-chromium.sh (Debian's chromium package)")
    return exe


def _headless(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--hide-scrollbars", "--window-size=1200,2400", "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_loads_in_headless_chromium_without_console_errors(trained, tmp_path):
    from PIL import Image, ImageStat

    page = trained / "report" / "index.html"
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    for section in ("Counts and errors", "Stage timings", "Estimated cost", "per 100k images", "explained variance curve", "2-D PCA map",
                    "confusion matrix", "Misclassified test photos", "Configuration and versions", "truncated.jpg"):
        assert section in html, section
    assert html.count("data:image/png;base64,") >= 3  # variance curve, PCA map, confusion matrix
    assert f'alt="{MISLABELLED}"' in html and "data:image/jpeg;base64," in html  # its thumbnail

    shot = tmp_path / "report.png"
    done = _headless(page.as_uri(), tmp_path, f"--screenshot={shot}")
    console = [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
    assert shot.is_file(), done.stderr[-2000:]
    assert console == [], console
    with Image.open(shot) as img:
        grey = img.convert("L")
        assert img.size == (1200, 2400)
        assert ImageStat.Stat(grey).stddev[0] > 20, "the screenshot is blank"
        assert len(grey.getcolors(1 << 16)) > 50, "the screenshot has no figures"
    dom = _headless(page.as_uri(), tmp_path, "--dump-dom").stdout
    n_images = html.count("<img ")
    assert f'data-images-ok="{n_images}"' in dom, "an inline image did not decode"
    if os.environ.get("FRUITLENS_KEEP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FRUITLENS_KEEP_SCREENSHOT"])


@pytest.mark.slow
def test_walkthrough_notebook_runs(subset, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "examples" / "walkthrough.ipynb", as_version=4)
    env = {"FRUITLENS_NOTEBOOK_INPUT": str(subset), "FRUITLENS_NOTEBOOK_OUTPUT": str(tmp_path / "out")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process' environment
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "examples")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "test accuracy" in outputs
    assert (tmp_path / "out" / "predictor" / "model.onnx").is_file()
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the PCA map and the predicted photo


@pytest.mark.slow
def test_train_on_raw_features_and_without_split_folders(trained, subset, tmp_path, capsys):
    """`--on features`: no PCA in the head or the exported graph; both still agree with each other."""
    import onnxruntime as ort
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruitlens.classify.predictor import Predictor
    from fruitlens.classify.train import split_rows
    from fruitlens.images import decode_rgb

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    assert main(["train", str(out), "--on", "features"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classifier"]["on"] == "features"
    assert printed["accuracy"] == manifest["classifier"]["accuracy"] > 0.5
    assert manifest["counts"] == json.loads((trained / "manifest.json").read_text())["counts"]  # kept
    predictor = Predictor.load(str(out))
    assert predictor.head.components is None and predictor.head.coefficients.shape == (len(CLASSES), 1280)
    assert main(["export", str(out), str(tmp_path / "m.onnx")]) == 0
    photos = _test_photos(subset)[:8]
    images = np.stack([decode_rgb(p.read_bytes()) for p in photos])
    exported = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": images})[0]
    np.testing.assert_allclose(exported, predictor.probabilities(images), atol=1e-4)

    # No Training/Test folders: a seeded 80/20 split, the same for the same seed.
    spark = SparkSession.getActiveSession()
    rows = spark.read.parquet(str(trained / "pca")).withColumn("split", F.lit(""))
    train_a, test_a, how = split_rows(rows, seed=7)
    train_b, _, _ = split_rows(rows, seed=7)
    assert how == "random 80%/20% (seed 7)"
    paths = {r.path for r in train_a.collect()}
    assert paths == {r.path for r in train_b.collect()}
    assert len(paths) + test_a.count() == rows.count() and 0.6 < len(paths) / rows.count() < 0.95


@pytest.mark.slow
def test_train_refuses_weights_other_than_the_runs_before_any_work(trained):
    from pyspark.sql import SparkSession

    from fruitlens.classify.train import TrainError, train
    from fruitlens.storage.store import Store

    before = (trained / "classifier" / "metrics.json").stat().st_mtime_ns
    with pytest.raises(TrainError, match="are not the run's"):
        train(SparkSession.getActiveSession(), Store(trained.as_uri()), weights_sha256="0" * 64)
    assert (trained / "classifier" / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_report_before_training_says_what_to_run(trained, tmp_path):
    out = tmp_path / "untrained"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("classifier", "predictor", "report"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("classifier")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / ".manifest.json.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old text
    assert main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert html.count("No classifier yet: run `fruitlens train OUTPUT`") == 2  # summary and the photo grid
    assert "2-D PCA map" in html and "truncated.jpg" in html
