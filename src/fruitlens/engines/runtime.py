"""The two runtimes an engine runs its model on: ONNX Runtime (an export of the Keras model) and
TensorFlow/Keras itself, with the registry's ``prepare`` (driver) and ``load`` (worker) for each."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fruitlens.engines.model import (
    ModelArtifact,
    ModelError,
    build_keras_model,
    import_tensorflow,
    onnx_export,
    require_tensorflow,
)


class KerasEngine:
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
    def __init__(self, onnx_path: str, threads: int = 0, providers: tuple[str, ...] | None = None, *,
                 spin: bool = True) -> None:
        """``providers``: ONNX Runtime's execution providers in order (default: the ``onnx`` engine's).
        ``spin=False`` for a service: idle intra-op threads must not busy-wait on the cores that decode
        the next photos (a batch job keeps spinning: its next batch is always ready)."""
        import onnxruntime as ort

        if providers is None:
            from fruitlens.engines import ENGINES

            providers = ENGINES["onnx"].providers
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ModelError(f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (it has "
                             f"{', '.join(ort.get_available_providers())}): install the build that does, or pick "
                             "another --engine")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = all cores; Spark passes its task's cpus
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(onnx_path, options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load ONNX model {onnx_path}: {exc}") from None
        self._input = self._session.get_inputs()[0]

    @property
    def image_size(self) -> int:
        """The square input side the model was exported at (224 when the export leaves it open)."""
        side = self._input.shape[1]
        return side if isinstance(side, int) else 224

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input.name: batch})[0].astype(np.float32, copy=False)


# ---------------------------------------------------------------- the registry's prepare and load

def prepare_onnx(spec, weights_path: Path, digest: str, *, image_size: int, **_) -> ModelArtifact:
    """The fp32 export of the weights at ``image_size`` (cached; exported once)."""
    path = onnx_export(weights_path, digest, image_size)
    return ModelArtifact(spec.name, str(path), digest, precision=spec.precision, image_size=image_size)


def prepare_keras(spec, weights_path: Path, digest: str, *, image_size: int, **_) -> ModelArtifact:
    require_tensorflow(f"--engine {spec.name}")
    return ModelArtifact(spec.name, str(weights_path), digest, precision=spec.precision, image_size=image_size)


def load_onnx(spec, path: str, threads: int, *, spin: bool = True) -> OnnxEngine:
    return OnnxEngine(path, threads, spec.providers, spin=spin)


def load_keras(spec, path: str, threads: int, **_) -> KerasEngine:
    return KerasEngine(path, threads)
