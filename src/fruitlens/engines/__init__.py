"""The engine registry: the one place that knows each inference engine.

An engine is a name (``--engine``), the precision of the model it runs, its ONNX Runtime execution
providers (for ONNX engines), how the driver makes and caches its model file (``prepare``) and how a
worker turns that file into something that predicts (``load``). Everything else asks this module: config
takes its ``--engine`` choices from :data:`NAMES`, the pipeline, bench and train call :func:`prepare_model`,
the workers :func:`load_engine`, and OUTPUT keeps (:func:`keep_in_output`) and the manifest records
(:func:`describe`) what the engine says. Import-light: an engine's module (TensorFlow, ONNX Runtime) is
imported only when that engine is prepared or loaded.

Adding an engine is one :class:`EngineSpec` in :data:`ENGINES` below, plus its functions if no existing
ones fit (a GPU ONNX engine needs none: its providers are data).
"""
from __future__ import annotations

import importlib
import importlib.util
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fruitlens.engines.model import FEATURE_DIM, IMAGE_SIZES, ModelArtifact, ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ENGINES", "FEATURE_DIM", "IMAGE_SIZES", "NAMES", "Engine", "EngineSpec", "ModelArtifact", "ModelError",
           "RunInputs", "describe", "keep_in_output", "load_engine", "open_engine", "prepare_model", "register", "resolve", "spec"]


class Engine(Protocol):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 at the model's size S, already preprocessed → (N, 1280) float32."""
        ...


@dataclass(frozen=True)
class RunInputs:
    """What a run offers an engine whose model needs more than the weights: OUTPUT (a model an earlier
    run kept there; None with --overwrite) and INPUT's photos (``paths`` read from the ``source`` Store),
    e.g. to calibrate on."""

    out: Any = None
    paths: tuple[str, ...] = ()
    source: Any = None


@dataclass(frozen=True)
class EngineSpec:
    """One engine. ``prepare``, ``load`` and the optional hooks are ``"module:function"`` references,
    imported when first used:

    - ``prepare(spec, weights_path, digest, *, image_size, calibration, run) -> ModelArtifact`` (driver)
    - ``load(spec, path, threads, *, spin=True) -> Engine`` (worker; ``threads`` 0 = all cores; ``spin``:
      whether idle runtime threads busy-wait, see :func:`open_engine`)
    - ``keep(out, artifact)``: after OUTPUT's settings are checked, keep what a resumed run needs there
    - ``describe(artifact) -> dict``: what the manifest's ``engine`` entry adds
    """

    name: str
    runtime: str  # the library that runs the model; the manifest's engine "name"
    prepare: str
    load: str
    precision: str = "fp32"
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, in order of preference
    requires: str = ""  # the module that must be importable for the engine to work (``auto`` checks it)
    keep: str = ""
    describe: str = ""

    def call(self, hook: str, *args, **kwargs):
        module, _, function = getattr(self, hook).partition(":")
        return getattr(importlib.import_module(module), function)(self, *args, **kwargs)

    def available(self) -> bool:
        return not self.requires or importlib.util.find_spec(self.requires) is not None


_CPU = ("CPUExecutionProvider",)
ENGINES: dict[str, EngineSpec] = {s.name: s for s in (
    EngineSpec("onnx", "onnx", "fruitlens.engines.runtime:prepare_onnx", "fruitlens.engines.runtime:load_onnx",
               providers=_CPU, requires="onnxruntime"),
    EngineSpec("onnx-int8", "onnx", "fruitlens.engines.quantize:prepare", "fruitlens.engines.runtime:load_onnx",
               precision="int8", providers=_CPU, requires="onnxruntime",
               keep="fruitlens.engines.quantize:keep", describe="fruitlens.engines.quantize:describe"),
    EngineSpec("keras", "keras", "fruitlens.engines.runtime:prepare_keras", "fruitlens.engines.runtime:load_keras",
               requires="tensorflow"),
)}
#: What ``auto`` tries, in order: the first engine whose library is installed.
AUTO = ("onnx", "keras")
#: ``--engine`` choices.
NAMES = ("auto", *ENGINES)


def register(engine: EngineSpec) -> None:
    """Add an engine (tests register a fake one); ``--engine`` choices are fixed at import, so a
    registered engine is for code that names it, not for the command line."""
    ENGINES[engine.name] = engine


def resolve(name: str) -> str:
    """``auto`` → the first installed engine of :data:`AUTO`; a registered name as it is."""
    if name == "auto":
        return next((n for n in AUTO if ENGINES[n].available()), AUTO[-1])
    if name not in ENGINES:
        raise ModelError(f"unknown engine {name!r}; known: {', '.join(NAMES)}")
    return name


def spec(name: str) -> EngineSpec:
    return ENGINES[resolve(name)]


def prepare_model(engine: str, weights: str, *, image_size: int = 224, calibration=None,
                  run: RunInputs | None = None) -> ModelArtifact:
    """Driver side: resolve the weights once and make (or find in the cache) the engine's model file.

    ``calibration`` (a :class:`fruitlens.engines.quantize.Calibration`, or a function returning one) or
    ``run`` is for engines whose model depends on photos (``onnx-int8``)."""
    from fruitlens.engines import model

    engine_spec = spec(engine)
    model.check_image_size(image_size)
    weights_path = model.resolve_weights(weights)
    return engine_spec.call("prepare", weights_path, model.sha256_file(weights_path), image_size=image_size,
                            calibration=calibration, run=run)


_LOADED: dict[tuple[str, str, int], Engine] = {}
_LOCK = threading.Lock()


def load_engine(engine: str, path: str, threads: int = 0) -> Engine:
    """Worker side: one engine per process and model file (a reused Spark Python worker builds it once)."""
    key = (engine, path, threads)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = open_engine(engine, path, threads)
        return _LOADED[key]


def open_engine(engine: str, path: str, threads: int = 0, *, spin: bool = True) -> Engine:
    """A new engine on ``path``, not cached: for a process that replaces its model (`fruitlens serve` drops
    the old engine after a swap) or loads it once (`predict`). ``spin=False``: idle runtime threads sleep
    instead of busy-waiting, for a service whose cores also decode photos between engine calls."""
    return spec(engine).call("load", path, threads, spin=spin)


def keep_in_output(out, artifact: ModelArtifact) -> None:
    """Keep in OUTPUT what a resumed run and `train` need of this engine's model (int8: the model itself)."""
    engine_spec = ENGINES[artifact.engine]
    if engine_spec.keep:
        engine_spec.call("keep", out, artifact)


def describe(artifact: ModelArtifact) -> dict:
    """The manifest's account of the engine that made the features."""
    engine_spec = ENGINES[artifact.engine]
    entry = {"name": engine_spec.runtime, "precision": artifact.precision, "image_size": artifact.image_size,
             "model_file": artifact.file_name, "weights_sha256": artifact.sha256}
    if engine_spec.describe:
        entry.update(engine_spec.call("describe", artifact))
    return entry
