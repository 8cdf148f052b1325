"""A fake engine for the feature stage's mechanics, registered like the real ones (fruitlens.engines):
no TensorFlow, no ONNX Runtime. Its features are a fixed sample of the preprocessed pixels, so a test
can tell which photo a feature row was made from, and it records the batch sizes it was called with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fruitlens.engines import FEATURE_DIM, EngineSpec, ModelArtifact, register
from fruitlens.engines.model import writable_cache

NAME = "fake"
SPEC = EngineSpec(NAME, "fake", prepare="fakes.fake_engine:prepare", load="fakes.fake_engine:load")
register(SPEC)

#: The batch sizes ``predict`` was called with, in this process.
CALLS: list[int] = []


def sample(image_size: int) -> np.ndarray:
    """Which of the S*S*3 preprocessed values make the 1280 features."""
    return np.linspace(0, image_size * image_size * 3 - 1, FEATURE_DIM).astype(np.int64)


def features_of(pixels: np.ndarray) -> np.ndarray:
    """What the fake engine returns for (N, S, S, 3) preprocessed pixels."""
    return pixels.reshape(len(pixels), -1)[:, sample(pixels.shape[1])].astype(np.float32)


class FakeEngine:
    def __init__(self, indexes: np.ndarray) -> None:
        self.indexes = indexes

    def predict(self, batch: np.ndarray) -> np.ndarray:
        CALLS.append(len(batch))
        return batch.reshape(len(batch), -1)[:, self.indexes].astype(np.float32)


def prepare(spec, weights_path: Path, digest: str, *, image_size: int, **_) -> ModelArtifact:
    """The "model file" the driver ships: the sample's indexes, in the cache like a real export."""
    path = writable_cache() / f"fake_{digest[:16]}_{image_size}px.npy"
    np.save(path, sample(image_size))
    return ModelArtifact(spec.name, str(path), digest, precision=spec.precision, image_size=image_size)


def load(spec, path: str, threads: int, **_) -> FakeEngine:
    return FakeEngine(np.load(path))
