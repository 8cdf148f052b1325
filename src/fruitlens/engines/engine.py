"""Inference engines behind one small interface, and where their model files come from.

Keras is the source of truth for the model and its weights. ONNX Runtime runs an ONNX export of that
same Keras model (made once, cached by weights hash) and is several times faster on CPUs; the
equivalence test keeps it within 1e-4 of Keras on real images.

Driver side: :func:`prepare_model` resolves the weights and, for ONNX, exports once.
Worker side: :func:`load_engine` builds one engine per Python worker process and caches it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fruitlens.errors import FruitlensError

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + WEIGHTS_FILE
FEATURE_DIM = 1280
INPUT_SHAPE = (224, 224, 3)
#: Input sizes MobileNetV2 may be built at (fully convolutional: the weights fit any of them); 224 is
#: the size the weights were trained at and the default.
IMAGE_SIZES = (224, 160, 128, 96)  # the same as fruitlens.config.IMAGE_SIZES
ONNX_OPSET = 17


class ModelError(FruitlensError, RuntimeError):
    """The weights or the exported model cannot be found, read or built."""


class Engine(Protocol):
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 at the model's size S, already preprocessed → (N, 1280) float32."""
        ...


@dataclass(frozen=True)
class ModelArtifact:
    """What the driver hands to workers: the engine and one local file it loads."""

    engine: str  # "onnx" | "keras": which engine class loads ``path``
    path: str
    sha256: str  # of the Keras weights
    precision: str = "fp32"  # "int8": an ONNX Runtime static quantization of the fp32 export
    image_size: int = 224  # the model's input side; photos are resized to it

    @property
    def file_name(self) -> str:
        return Path(self.path).name


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def cache_dir() -> Path:
    """Where ONNX exports are kept (``FRUITLENS_CACHE``; images bake theirs in at build time)."""
    if os.environ.get("FRUITLENS_CACHE"):
        return Path(os.environ["FRUITLENS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fruitlens"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(spec: str) -> Path:
    """``imagenet`` → the file in Keras' cache (Keras downloads it if missing); else a local ``.h5``.

    Remote URIs (s3://...) are fetched by the caller (see ``spark_io.fetch``) before this is called.
    """
    if spec == "imagenet":
        cached = keras_home() / "models" / WEIGHTS_FILE
        if cached.is_file():
            return cached
        try:  # Only here, on the driver, may anything be downloaded (by Keras, into its cache).
            _, keras = import_tensorflow()
            return Path(keras.utils.get_file(WEIGHTS_FILE, WEIGHTS_URL, cache_subdir="models"))
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise ModelError(
                f"ImageNet weights not in Keras' cache ({cached}) and could not be downloaded ({exc}). "
                f"Copy {WEIGHTS_FILE} there, or pass --weights PATH."
            ) from None
    path = Path(spec.removeprefix("file://"))
    if not path.is_file():
        raise ModelError(f"weights file {spec} does not exist; pass --weights imagenet or a .h5 path")
    return path


def import_tensorflow():
    """The one place TensorFlow (and Keras with it) is imported: its native start-up lines are hidden
    unless --verbose (fruitlens.console sets TF_CPP_MIN_LOG_LEVEL and absl's level before this)."""
    from fruitlens import console

    with console.native_stderr_hidden():
        import keras
        import tensorflow as tf

        tf.get_logger().setLevel("DEBUG" if console.verbosity() == "verbose" else "ERROR")
    return tf, keras


def require_tensorflow(what: str) -> None:
    """Fail early and clearly where TensorFlow is needed but absent (the slim image, an install without
    the ``tf`` extra): the ONNX engine with already exported weights never needs it."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return
    if os.environ.get("FRUITLENS_IMAGE_VARIANT") == "slim":
        raise ModelError(f"{what} needs TensorFlow, and this image has none (the slim image). Use the full image "
                         "(fruitlens:oss or fruitlens:emr), or the ONNX engine with the baked-in ImageNet weights "
                         "(--engine onnx --weights imagenet).")
    raise ModelError(f"{what} needs TensorFlow, which is not installed: pip install 'fruitlens[tf]'.")


def build_keras_model(weights_path: str | os.PathLike[str], image_size: int = 224):
    """MobileNetV2, no classifier, global average pool: the 1280-d layer before the top."""
    _, keras = import_tensorflow()

    model = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, pooling="avg", weights=None
    )
    try:
        model.load_weights(str(weights_path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load MobileNetV2 weights from {weights_path}: {exc}") from None
    return model


def export_onnx(weights_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                image_size: int = 224) -> Path:
    """Export the Keras model to ONNX (atomically: a partly written file is never used)."""
    from fruitlens import console

    require_tensorflow(f"exporting the weights {weights_path} to ONNX (new weights need a new export)")
    tf, _ = import_tensorflow()
    with console.native_stderr_hidden():  # the conversion starts TF's runtime: more native lines
        import tf2onnx

        model = build_keras_model(weights_path, image_size)
        spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="input"),)

        @tf.function(input_signature=spec)
        def forward(x):
            return model(x, training=False)

        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(f".tmp{os.getpid()}")
        tf2onnx.convert.from_function(forward, input_signature=spec, opset=ONNX_OPSET, output_path=str(tmp))
        os.replace(tmp, out_path)
    return out_path


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_file_name(weights_sha256: str, image_size: int = 224) -> str:
    """The fp32 export's name; 224 keeps the name images bake in (see docker/)."""
    size = "" if image_size == 224 else f"_{image_size}px"
    return f"mobilenet_v2_avg_{weights_sha256[:16]}{size}_opset{ONNX_OPSET}.onnx"


def prepare_model(engine: str, weights: str, *, image_size: int = 224, calibration=None) -> ModelArtifact:
    """Driver side: resolve the weights once; for ONNX, reuse or make the export for these weights.

    ``onnx-int8`` quantizes that export on ``calibration`` (a :class:`fruitlens.engines.quantize.Calibration`,
    or a function returning one, called only when the quantized model is not cached yet).
    """
    if engine == "auto":
        engine = "onnx" if onnx_available() else "keras"
    if image_size not in IMAGE_SIZES:
        raise ModelError(f"image size must be one of {', '.join(map(str, IMAGE_SIZES))}, got {image_size}")
    weights_path = resolve_weights(weights)
    digest = sha256_file(weights_path)
    if engine == "keras":
        require_tensorflow("--engine keras")
        return ModelArtifact("keras", str(weights_path), digest, image_size=image_size)
    name = onnx_file_name(digest, image_size)
    onnx_path = cache_dir() / name
    if not onnx_path.is_file():
        onnx_path = _writable(cache_dir()) / name
        if not onnx_path.is_file():
            export_onnx(weights_path, onnx_path, image_size)
    if engine == "onnx-int8":
        from fruitlens.engines.quantize import quantized_model

        if calibration is None:
            raise ModelError("the int8 engine needs calibration photos")
        int8_path = quantized_model(onnx_path, calibration)
        return ModelArtifact("onnx", str(int8_path), digest, precision="int8", image_size=image_size)
    return ModelArtifact("onnx", str(onnx_path), digest, image_size=image_size)


def _writable(cache: Path) -> Path:
    """``cache``, or a folder under TMPDIR when it cannot be written: in a pod the image's cache is on a
    read-only root filesystem, and a custom ``.h5`` still needs its export somewhere."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK | os.X_OK):
            return cache
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "fruitlens-cache"
    fallback.mkdir(parents=True, exist_ok=True)
    from fruitlens.progress import log

    log(f"model cache {cache} is not writable (read-only filesystem?): exporting the ONNX model to {fallback} "
        "instead; it lasts as long as that folder (set FRUITLENS_CACHE to a persistent writable place)")
    return fallback


class KerasEngine:
    name = "keras"

    def __init__(self, weights_path: str, threads: int = 0) -> None:
        tf, _ = import_tensorflow()

        if threads:
            try:  # only possible before TF's runtime starts; a reused worker has it set already
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        model = build_keras_model(weights_path)
        # A traced graph, not an eager call: several times faster per batch, as model.predict runs it.
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(batch), dtype=np.float32)


class OnnxEngine:
    name = "onnx"

    def __init__(self, onnx_path: str, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = all cores; Spark passes its task's cpus
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load ONNX model {onnx_path}: {exc}") from None
        self._input = self._session.get_inputs()[0].name

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0].astype(np.float32, copy=False)


_ENGINES: dict[tuple[str, str, int], Engine] = {}
_LOCK = threading.Lock()


def load_engine(engine: str, path: str, threads: int = 0) -> Engine:
    """One engine per process and model file: a reused Spark Python worker builds it once."""
    key = (engine, path, threads)
    with _LOCK:
        if key not in _ENGINES:
            cls = OnnxEngine if engine == "onnx" else KerasEngine
            _ENGINES[key] = cls(path, threads)
        return _ENGINES[key]
