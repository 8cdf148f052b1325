"""Engines on real images with the real ImageNet weights: ONNX Runtime must compute Keras' function."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import real_images

from fruitlens.engines import FEATURE_DIM, ModelError, prepare_model
from fruitlens.engines.model import build_keras_model
from fruitlens.engines.runtime import KerasEngine, OnnxEngine
from fruitlens.images import decode_rgb, preprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    paths = real_images("Test", per_class=4) + real_images("Training", per_class=2)
    return preprocess(np.stack([decode_rgb(p.read_bytes()) for p in paths]))


@pytest.fixture(scope="module")
def keras_features(batch) -> np.ndarray:
    import keras

    model = keras.applications.MobileNetV2(weights="imagenet", include_top=False, pooling="avg",
                                           input_shape=(224, 224, 3))
    return model.predict(batch, verbose=0)


def test_keras_engine_is_mobilenetv2_imagenet_pooled(batch, keras_features):
    artifact = prepare_model("keras", "imagenet")
    out = KerasEngine(artifact.path, threads=1).predict(batch)
    assert out.shape == (len(batch), FEATURE_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(out, keras_features, atol=1e-5, rtol=0)


def test_the_pooled_layer_is_the_one_before_the_classifier(batch):
    """layers[-2] of the full model (top) = global average pool = our no-top avg-pooled output."""
    model = build_keras_model(prepare_model("keras", "imagenet").path)
    assert model.layers[-1].__class__.__name__ == "GlobalAveragePooling2D"
    assert model.output_shape == (None, FEATURE_DIM)


def test_onnx_engine_equals_keras_within_1e_4_on_real_images(batch, keras_features):
    artifact = prepare_model("onnx", "imagenet")
    assert artifact.path.endswith(".onnx")
    out = OnnxEngine(artifact.path, threads=2).predict(batch)
    diff = np.abs(out - keras_features).max()
    assert diff <= 1e-4, f"ONNX differs from Keras by {diff}"
    assert np.abs(keras_features).max() > 1.0  # real activations, not zeros


def test_the_onnx_export_is_made_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITLENS_CACHE", str(tmp_path))
    first = prepare_model("onnx", "imagenet")
    mtime = (tmp_path / first.file_name).stat().st_mtime_ns
    second = prepare_model("onnx", "imagenet")
    assert second == first and (tmp_path / first.file_name).stat().st_mtime_ns == mtime


def test_a_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="weights file .*nope.h5 does not exist"):
        prepare_model("onnx", str(tmp_path / "nope.h5"))
