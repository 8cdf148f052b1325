"""`fruitlens predict`: label photos with what `fruitlens train` exported, without Spark or TensorFlow.

The same steps as the pipeline (``images.decode_rgb`` → ``images.preprocess`` → the ONNX engine), then
the head from OUTPUT/predictor/head.npz in float64, as Spark ML computes it: centre (and scale) →
project on the PCA components → multinomial logistic regression → softmax.
Only numpy, Pillow and ONNX Runtime are imported here (pyarrow's S3 client for an s3:// OUTPUT).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fruitlens.engines import open_engine
from fruitlens.errors import FruitlensError
from fruitlens.images import DecodeError, decode_rgb, is_image_path, preprocess
from fruitlens.projection import project_batch
from fruitlens.state import layout
from fruitlens.storage import uris


class PredictorError(FruitlensError, FileNotFoundError):
    """OUTPUT has no exported predictor (run `fruitlens train OUTPUT` first)."""


@dataclass(frozen=True)
class Head:
    """The arrays after the engine: optional PCA (mean, scale, components) and the softmax classifier."""

    labels: list[str]
    coefficients: np.ndarray  # (classes, k)
    intercepts: np.ndarray    # (classes,)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    components: np.ndarray | None = None  # (1280, k)

    @classmethod
    def load(cls, folder: Path) -> Head:
        labels = json.loads((folder / layout.PREDICTOR_LABELS).read_text())
        with np.load(folder / layout.PREDICTOR_HEAD) as npz:
            arrays = {k: npz[k].astype(np.float64) for k in npz.files}
        return cls(labels=labels, **arrays)

    def project(self, features: np.ndarray) -> np.ndarray:
        if self.components is None:
            return features.astype(np.float64)
        return project_batch(features, self.mean, self.scale, self.components)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.project(features) @ self.coefficients.T + self.intercepts
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def local_predictor_dir(output: str) -> Path:
    """OUTPUT/predictor as a local folder: local paths and file: URIs as they are, s3:// downloaded once."""
    loc = uris.parse(output)
    if not loc.is_local:
        return _download(uris.qualify(output))
    folder = Path(loc.path).expanduser() / layout.PREDICTOR
    missing = [f for f in layout.PREDICTOR_FILES if not (folder / f).is_file()]
    if missing:
        raise PredictorError(f"{folder} lacks {', '.join(missing)}: run `fruitlens train {output}` first")
    return folder


def _download(root: str) -> Path:
    from fruitlens.storage.store import Store, StoreError, StoreOptions

    out = Store(root, StoreOptions.from_environment().with_bucket_regions(root))
    target = Path(tempfile.mkdtemp(prefix="fruitlens-predictor-"))
    for name in layout.PREDICTOR_FILES:
        try:
            (target / name).write_bytes(out.read_file(f"{layout.PREDICTOR}/{name}"))
        except StoreError as exc:
            raise PredictorError(f"{exc}; run `fruitlens train` on this OUTPUT first, and check the "
                                 "credentials") from None
    return target


class Predictor:
    """Engine + head; ``predict_files`` gives one result dict per path, errors included, in input order."""

    def __init__(self, folder: Path, *, batch_size: int = 32, threads: int = 0, spin: bool = True) -> None:
        # model.onnx: the ONNX model the features were made with (fp32 or int8): the onnx engine runs either.
        # Not the per-process cache of load_engine: `fruitlens serve` loads each new model once and drops the
        # old one; spin=False for a service (idle ONNX Runtime threads must not busy-wait on the cores).
        self.engine = open_engine("onnx", str(folder / layout.PREDICTOR_MODEL), threads, spin=spin)
        # Photos are resized to the size the features were made at: the model's own input size.
        self.size = (self.engine.image_size, self.engine.image_size)
        self.head = Head.load(folder)
        self.batch_size = batch_size

    @classmethod
    def load(cls, output: str, **kwargs) -> Predictor:
        return cls(local_predictor_dir(output), **kwargs)

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def decode(self, content: bytes) -> np.ndarray:
        """Photo bytes → (S, S, 3) uint8 RGB as the pipeline decodes them (`fruitlens serve` calls this too)."""
        return decode_rgb(content, self.size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB at the model's size S (``self.size``) → (N, classes) float64."""
        feats = [self.engine.predict(preprocess(images[i:i + self.batch_size]))
                 for i in range(0, len(images), self.batch_size)]
        return self.head.probabilities(np.concatenate(feats)) if feats else np.zeros((0, len(self.labels)))

    def predict_files(self, paths: list[str], top_k: int = 3) -> list[dict]:
        contents: list[bytes | OSError] = []
        for path in paths:
            try:
                contents.append(Path(path).read_bytes())
            except OSError as exc:
                contents.append(exc)
        return self.predict_bytes(paths, contents, top_k)

    def predict_bytes(self, names: list[str], contents: list, top_k: int = 3) -> list[dict]:
        """One result per (name, photo bytes); an undecodable photo gets ``{"path", "error"}``."""
        results: list[dict] = [{} for _ in names]
        decoded, where = [], []
        for i, (name, content) in enumerate(zip(names, contents, strict=True)):
            try:
                if isinstance(content, OSError):
                    raise content
                decoded.append(self.decode(content))
                where.append(i)
            except (OSError, DecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                results[i] = {"path": name, "error": reason}
        if decoded:
            probs = self.probabilities(np.stack(decoded))
            for i, p in zip(where, probs, strict=True):
                results[i] = self.result(names[i], p, top_k)
        return results

    def result(self, path: str, p: np.ndarray, top_k: int) -> dict:
        """One photo's probabilities → ``{path, label, probability, top}`` (rounded to 1e-6)."""
        order = np.argsort(-p, kind="stable")[:max(1, top_k)]
        top = [{"label": self.labels[j], "probability": round(float(p[j]), 6)} for j in order]
        return {"path": path, "label": top[0]["label"], "probability": top[0]["probability"], "top": top}


def expand_paths(items: list[str]) -> list[str]:
    """Files as given; folders → their image files (any depth, sorted). A missing path stays, to be reported."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image_path(f.name))
        else:
            out.append(item)
    return out
