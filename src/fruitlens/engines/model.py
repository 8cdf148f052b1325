"""The model every engine runs, and where its files come from: the weights, the cache, the ONNX export.

Keras is the source of truth for the model and its weights. ONNX Runtime runs an ONNX export of that
same Keras model (made once, cached by weights hash and image size) and is several times faster on CPUs;
the equivalence test keeps it within 1e-4 of Keras on real images.

Import-light (no TensorFlow, no ONNX Runtime until a function needs them): the registry
(:mod:`fruitlens.engines`) and the image's model stage (docker/bake-model.sh) import it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fruitlens.errors import FruitlensError

WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + WEIGHTS_FILE
FEATURE_DIM = 1280
INPUT_SHAPE = (224, 224, 3)
#: Input sizes MobileNetV2 may be built at (fully convolutional: the weights fit any of them); 224 is
#: the size the weights were trained at and the default.
IMAGE_SIZES = (224, 160, 128, 96)  # fruitlens.config takes its choices from here
ONNX_OPSET = 17


class ModelError(FruitlensError, RuntimeError):
    """The weights or the exported model cannot be found, read or built."""


@dataclass(frozen=True)
class ModelArtifact:
    """What the driver hands to workers: the engine and one local file it loads."""

    engine: str  # the registered engine (fruitlens.engines.ENGINES) whose ``load`` runs ``path``
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


def onnx_file_name(weights_sha256: str, image_size: int = 224) -> str:
    """The fp32 export's name; 224 keeps the name images bake in (see docker/)."""
    size = "" if image_size == 224 else f"_{image_size}px"
    return f"mobilenet_v2_avg_{weights_sha256[:16]}{size}_opset{ONNX_OPSET}.onnx"


def check_image_size(image_size: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ModelError(f"image size must be one of {', '.join(map(str, IMAGE_SIZES))}, got {image_size}")


def onnx_export(weights_path: str | os.PathLike[str], digest: str, image_size: int = 224) -> Path:
    """The fp32 ONNX export of these weights at this size: from the cache (the image's baked one, or a
    writable fallback), else made once into the cache."""
    name = onnx_file_name(digest, image_size)
    path = cache_dir() / name
    if not path.is_file():
        path = writable_cache() / name
        if not path.is_file():
            export_onnx(weights_path, path, image_size)
    return path


def writable_cache() -> Path:
    """:func:`cache_dir`, or a folder under TMPDIR when it cannot be written: in a pod the image's cache is
    on a read-only root filesystem, and a custom ``.h5`` still needs its export somewhere."""
    cache = cache_dir()
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
