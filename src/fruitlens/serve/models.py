"""The model served, and newer ones swapped in without downtime.

`fruitlens train` writes OUTPUT/predictor/{head.npz, labels.json, model.onnx} and predictor.json last
(:mod:`fruitlens.state.layout` names them).
A load reads predictor.json, the other files, then predictor.json again: it is accepted only if both
reads agree and model.onnx is the one predictor.json names (its sha256), so a half-written predictor is
never served. The swap is one reference assignment on the event loop; each batch holds the handle its
photos were decoded for, so requests in flight finish on the old model, which is freed with them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fruitlens.classify.predictor import Predictor
from fruitlens.state import layout
from fruitlens.storage import uris
from fruitlens.storage.store import Store, StoreOptions

log = logging.getLogger("fruitlens.serve")
INFO_FILE = layout.PREDICTOR_INFO


class ModelNotReady(Exception):
    """No complete predictor in OUTPUT (yet): not trained, or being written right now."""


@dataclass(eq=False)
class ModelHandle:
    predictor: Predictor
    info: dict  # version, trained_at, test_accuracy (+ classes, precision, image_size)
    marker: str  # predictor.json's text when loaded: unchanged text = nothing to do

    @property
    def public(self) -> dict:
        return {k: self.info.get(k) for k in ("version", "trained_at", "test_accuracy")}


class PredictorSource:
    """OUTPUT/predictor, local or S3, read through the one storage stack (pyarrow)."""

    def __init__(self, output: str, options: StoreOptions | None = None) -> None:
        self.uri = uris.qualify(output)
        self.store = Store(self.uri, options or StoreOptions.from_environment())

    def marker(self) -> str | None:
        return self.store.read_text(f"{layout.PREDICTOR}/{INFO_FILE}")

    def load(self, *, batch_size: int, threads: int, known: ModelHandle | None = None) -> ModelHandle | None:
        """A new handle, or None when predictor.json is what ``known`` was loaded from (or the same model)."""
        first = self.marker()
        if first is None:
            raise ModelNotReady(f"{self.uri}/predictor/{INFO_FILE} not found: run `fruitlens train {self.uri}`")
        if known is not None and first == known.marker:
            return None
        tmp = Path(tempfile.mkdtemp(prefix="fruitlens-serve-"))
        try:
            blobs = {}
            for name in layout.PREDICTOR_FILES:
                try:
                    blobs[name] = self.store.read_bytes(self.store.fs_path(f"{layout.PREDICTOR}/{name}"))
                except (OSError, FileNotFoundError) as exc:
                    raise ModelNotReady(f"{self.uri}/predictor/{name}: {exc}") from None
                (tmp / name).write_bytes(blobs[name])
            if self.marker() != first:
                raise ModelNotReady(f"{self.uri}/predictor changed while it was read (a train is writing it)")
            info = json.loads(first)
            sha = hashlib.sha256(blobs[layout.PREDICTOR_MODEL]).hexdigest()
            if info.get("engine_sha256") and info["engine_sha256"] != sha:
                raise ModelNotReady(f"{self.uri}/predictor/model.onnx is not the one {INFO_FILE} names")
            version = _version(blobs, sha)
            if known is not None and version == known.info["version"]:
                return None
            predictor = Predictor(tmp, batch_size=batch_size, threads=threads, spin=False)
            labels = predictor.labels
            if info.get("classes") not in (None, len(labels)):
                raise ModelNotReady(f"{self.uri}/predictor/labels.json has {len(labels)} labels, "
                                    f"{INFO_FILE} says {info['classes']}")
            side = predictor.size[0]
            for n in sorted({1, batch_size}):  # first calls allocate: not on a user's request
                predictor.probabilities(np.zeros((n, side, side, 3), np.uint8))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # ORT and the head hold what they need in memory
        return ModelHandle(predictor, {
            "version": version, "trained_at": info.get("trained_at"), "test_accuracy": info.get("accuracy"),
            "classes": len(labels), "labels": labels, "precision": info.get("precision"),
            "image_size": side}, first)


def _version(blobs: dict[str, bytes], engine_sha: str) -> str:
    """What the model computes decides its version (not npz timestamps): re-publishing is no swap."""
    digest = hashlib.sha256(blobs[layout.PREDICTOR_LABELS])
    with np.load(io.BytesIO(blobs[layout.PREDICTOR_HEAD])) as npz:
        for key in sorted(npz.files):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(npz[key]).tobytes())
    digest.update(engine_sha.encode())
    return digest.hexdigest()[:12]
