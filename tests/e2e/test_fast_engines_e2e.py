"""The opt-in engines end to end on real photos: int8 and smaller image sizes against fp32 224, runs that
record and keep them, bench-engines (the slow half of tests/unit/test_fast_engines.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import real_images

from fruitlens.cli import main
from fruitlens.engines.quantize import Calibration, select_calibration
from fruitlens.images import decode_rgb, preprocess


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """3 classes x (8 Training + 3 Test) real photos."""
    root = tmp_path_factory.mktemp("engines_in")
    for split, n in (("Training", 8), ("Test", 3)):
        for photo in real_images(split, per_class=n, classes=3):
            dest = root / split / photo.parent.name / photo.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(photo.read_bytes())
    return root


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_the_int8_model_gives_features_close_to_fp32_on_real_photos():
    from fruitlens.engines import prepare_model
    from fruitlens.engines.quantize import model_info
    from fruitlens.engines.runtime import OnnxEngine

    training = [str(p) for p in real_images("Training", per_class=40)]
    chosen = select_calibration(training, 100)
    calibration = Calibration(tuple(chosen), tuple(Path(p).read_bytes() for p in chosen))
    fp32 = prepare_model("onnx", "imagenet")
    int8 = prepare_model("onnx-int8", "imagenet", calibration=calibration)
    assert (int8.precision, int8.image_size, int8.sha256) == ("int8", 224, fp32.sha256)
    made = Path(int8.path).stat().st_mtime_ns
    again = prepare_model("onnx-int8", "imagenet", calibration=lambda: calibration)  # cached, not remade
    assert again.path == int8.path and Path(again.path).stat().st_mtime_ns == made
    info = model_info(int8.path)
    assert (info["calibration_sha256"], info["calibration_images"]) == (calibration.digest, 100)

    photos = preprocess(np.stack([decode_rgb(p.read_bytes()) for p in real_images("Test", per_class=4)]))
    ref = OnnxEngine(fp32.path, threads=2).predict(photos)
    got = OnnxEngine(int8.path, threads=2).predict(photos)
    assert got.shape == ref.shape == (len(photos), 1280)
    cos = _cosine(got, ref)
    # Every Conv is int8 (none left in fp32), its weights rounded by GPTQ: measured here (AVX2, no VNNI) on
    # the bench's 2,770 photos, mean 0.988, min 0.971; round-to-nearest gave 0.85 / 0.55 with every Conv
    # int8, 0.987 / 0.964 with the first 3 kept fp32 (docs/performance.md). The issue asks >= 0.98.
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, (cos.mean(), cos.min())
    import onnx

    graph = onnx.load(int8.path).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 52 and all(n.input[1] in dequantized for n in convs)  # int8 weights everywhere


@pytest.mark.slow
def test_a_smaller_image_size_builds_the_same_weights_at_that_size():
    from fruitlens.engines import prepare_model
    from fruitlens.engines.runtime import OnnxEngine

    art = prepare_model("onnx", "imagenet", image_size=128)
    engine = OnnxEngine(art.path, threads=2)
    assert engine.image_size == 128
    photos = [p.read_bytes() for p in real_images("Test", per_class=2)]
    small = engine.predict(preprocess(np.stack([decode_rgb(c, (128, 128)) for c in photos])))
    full = OnnxEngine(prepare_model("onnx", "imagenet").path, threads=2).predict(
        preprocess(np.stack([decode_rgb(c) for c in photos])))
    cos = _cosine(small, full)
    assert small.shape == (len(photos), 1280) and 0.7 < cos.mean() < 0.9999  # same network, other scale


@pytest.mark.slow
def test_run_at_160_records_the_size_and_a_resume_at_224_is_refused(small_input, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    assert main(["run", str(small_input), str(out), "--image-size", "160", "--pca-k", "3", "--no-progress"]) == 0
    features = pq.read_table(out / "features").column("features").to_pylist()
    assert len(features) == 33 and {len(f) for f in features} == {1280}
    settings = json.loads((out / "_fruitlens" / "settings.json").read_text())
    assert (settings["image_size"], settings["precision"]) == ([160, 160], "fp32")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["image_size"] == 160 and manifest["engine"]["precision"] == "fp32"
    assert manifest["config"]["image_size"] == 160
    capsys.readouterr()
    assert main(["run", str(small_input), str(out), "--no-progress"]) == 1
    assert "was built with image_size=[160, 160], this run has image_size=[224, 224]" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_run_keeps_its_model_and_train_predict_export_use_it_at_its_size(small_input, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "out"
    assert main(["run", str(small_input), str(out), "--engine", "onnx-int8", "--image-size", "160",
                 "--pca-k", "3", "--train", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    engine = manifest["engine"]
    assert (engine["name"], engine["precision"], engine["image_size"], engine["calibration_images"]) == (
        "onnx", "int8", 160, 24)  # the manifest names the runtime, as before the engine registry
    pinned = out / engine["pinned"]
    assert pinned.is_file() and engine["model_sha256"] == json.loads(
        (out / "_fruitlens" / "settings.json").read_text())["model_sha256"]
    # train shipped the very model the features were made with
    assert (out / "predictor" / "model.onnx").read_bytes() == pinned.read_bytes()
    assert manifest["classifier"]["precision"] == "int8" and manifest["classifier"]["image_size"] == 160

    capsys.readouterr()  # predict decodes at the model's size (160): a 224 input would fail in ONNX Runtime
    photo = real_images("Test", per_class=1, classes=1)[0]
    assert main(["predict", str(out), str(photo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == photo.parent.name
    assert main(["export", str(out), str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [160, 160, 3]

    capsys.readouterr()  # a resume with fp32 is refused naming the precision
    assert main(["run", str(small_input), str(out), "--image-size", "160", "--no-progress"]) == 1
    assert "was built with precision='int8', this run has precision='fp32'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_engines_reports_speed_and_fidelity_per_variant(small_input):
    from fruitlens.bench.engines import measure_engines

    lines: list[str] = []
    result = measure_engines(small_input, variants=[("fp32", 224), ("fp32", 96)], train_per_class=8,
                             threads=2, say=lines.append)
    ref, small = result["variants"]["fp32-224"], result["variants"]["fp32-96"]
    assert (ref["cosine_mean"], ref["speedup_vs_fp32_224"], ref["accuracy_delta_points"]) == (1.0, 1.0, 0.0)
    assert 0.5 < small["cosine_min"] <= small["cosine_mean"] < 0.999  # a smaller input is another feature
    assert result["test_images"] == 9 and result["train_images"] == 24 and "avx2" in result["cpu"]["flags"]
    assert "engines.fp32-96.cosine_mean: " + str(small["cosine_mean"]) in lines
