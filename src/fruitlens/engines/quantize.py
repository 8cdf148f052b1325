"""The opt-in int8 engine: ONNX Runtime static quantization of the fp32 export, calibrated on real photos.

Where the calibration photos come from: the job's own INPUT. :func:`select_calibration` picks a
deterministic, class-balanced set of :data:`CALIBRATION_IMAGES` photos (the Training split when there is
one); the driver reads and decodes them. The quantized model is cached next to the fp32 export, keyed by
(fp32 export's sha256 — which covers weights and image size —, the calibration photos' digest, the
quantization settings), and shipped to the workers like the fp32 file.

A growing INPUT would pick other calibration photos, hence another model, hence features that do not
mix: so OUTPUT keeps the int8 model its features were made with (``_fruitlens/model-int8-*.onnx``), and a
resumed run, `fruitlens train` and `predict` use that one.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fruitlens.engines.model import (
    ModelArtifact,
    ModelError,
    cache_dir,
    onnx_export,
    sha256_file,
    writable_cache,
)
from fruitlens.engines.rounding import scale_overrides, snap_convs
from fruitlens.images import DecodeError, decode_rgb, label_and_split, preprocess

#: Photos the activation ranges are calibrated on: enough for stable ranges, a few seconds to decode and run.
CALIBRATION_IMAGES = 100
#: What was measured best on an AVX2 CPU without VNNI; see docs/performance.md. Part of the cache key: a
#: change makes a new model.
SETTINGS = {
    "format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": True,
    "reduce_range": "7-bit weights in the 1x1 Convs before a ReLU6", "calibration": "minmax",
    "fp32_nodes": "none", "rounding": "GPTQ + bias correction on the calibration photos", "pre_process": True,
}


@dataclass(frozen=True)
class Calibration:
    """The photos (their bytes, as read) the activation ranges are measured on."""

    names: tuple[str, ...]
    contents: tuple[bytes, ...]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for content in self.contents:
            h.update(hashlib.sha256(content).digest())
        return h.hexdigest()

    def pixels(self, image_size: int) -> np.ndarray:
        """Decoded and preprocessed as the pipeline does; undecodable photos are skipped."""
        decoded = []
        for content in self.contents:
            try:
                decoded.append(decode_rgb(content, (image_size, image_size)))
            except DecodeError:
                continue
        if not decoded:
            raise ModelError("none of the calibration photos could be decoded: the int8 engine needs "
                             "readable photos in INPUT")
        return preprocess(np.stack(decoded))


def select_calibration(paths: Iterable[str], n: int = CALIBRATION_IMAGES, *, root: str = "") -> list[str]:
    """A deterministic, class-balanced choice of ``n`` paths: Training photos when INPUT has a Training split.

    Within a class, photos are ordered by a hash of their path below ``root`` (not by name: Fruits-360's
    consecutive names are near-identical frames of one rotation), then taken round-robin over classes.
    """
    paths = list(paths)
    training = [p for p in paths if label_and_split(p)[1].lower() == "training"]
    by_class: dict[str, list[str]] = defaultdict(list)
    for p in training or paths:
        by_class[label_and_split(p)[0]].append(p)

    def key(p: str) -> str:
        return hashlib.sha1(p.removeprefix(root).encode()).hexdigest()

    queues = [sorted(v, key=key) for _, v in sorted(by_class.items())]
    chosen: list[str] = []
    for i in range(max((len(q) for q in queues), default=0)):
        chosen += [q[i] for q in queues if i < len(q)]
        if len(chosen) >= n:
            break
    return chosen[:n]


def calibration_from(paths: Iterable[str], read: Callable[[str], bytes], *, root: str = "",
                     n: int = CALIBRATION_IMAGES) -> Calibration:
    chosen = select_calibration(paths, n, root=root)
    if not chosen:
        raise ModelError("the int8 engine calibrates on INPUT's photos, and INPUT has none")
    return Calibration(tuple(chosen), tuple(read(p) for p in chosen))


def quantized_model(fp32_path: str | os.PathLike[str],
                    calibration: Calibration | Callable[[], Calibration]) -> Path:
    """The int8 model of ``fp32_path`` for ``calibration``: from the cache, else made (atomically) and cached."""
    if callable(calibration):
        calibration = calibration()
    key = hashlib.sha256(json.dumps([sha256_file(fp32_path), calibration.digest, SETTINGS],
                                    sort_keys=True).encode()).hexdigest()
    name = f"{Path(fp32_path).stem}_int8_{key[:16]}.onnx"
    for folder in (cache_dir(), writable_cache()):
        if (folder / name).is_file():
            return folder / name
    out = writable_cache() / name
    quantize(fp32_path, out, calibration)
    return out


def input_size(onnx_path: str | os.PathLike[str]) -> int:
    """The square input side of an NHWC image model (the export fixes it)."""
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value)


def quantize(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str], calibration: Calibration) -> Path:
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = calibration.pixels(input_size(fp32_path))
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="fruitlens-quantize-") as tmp:
        # ORT's own graph clean-up first (folds the Pads into the Convs): fewer tensors to quantize.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)  # static shapes: no sympy needed
        model = onnx.load(str(pre))
        graph = model.graph
        convs = [node.name for node in graph.node if node.op_type == "Conv"]
        input_name = graph.input[0].name
        clipped = {i for node in graph.node if node.op_type == "Clip" for i in node.input}
        # The 1x1 Convs before a ReLU6 read the linear block outputs, whose uint8 zero point is ~128: on
        # CPUs without VNNI, ORT's u8 x s8 kernels add products in pairs into int16, and these saturate.
        # 7-bit weights cannot (mean cosine 0.979 -> 0.987 before the rounding below); 7 bits everywhere
        # loses more than it saves.
        expand = {node.name for node in graph.node
                  if node.op_type == "Conv" and node.output[0] in clipped
                  and not any(a.name == "group" and a.i > 1 for a in node.attribute)}  # not depthwise
        # Every Conv int8, its weights rounded against its real inputs (fruitlens.engines.rounding): round-to-nearest
        # made the first Convs unusable in int8 (mean cosine 0.92 with the first depthwise Conv int8), so
        # they had to stay fp32, which cost the speed. The quantizer is given the very scales the rounding
        # used, so it keeps those integers.
        scales = snap_convs(model, convs, (pixels[i:i + 10] for i in range(0, len(pixels), 10)),
                            {c: 64 if c in expand else 127 for c in convs})
        onnx.save(model, str(pre))

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._batches = iter(pixels[i:i + 10] for i in range(0, len(pixels), 10))

            def get_next(self):
                batch = next(self._batches, None)
                return None if batch is None else {input_name: batch}

        tmp_out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=False, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": scale_overrides(scales)},
        )
        model = onnx.load(str(tmp_out))
        for k, v in {"fruitlens_precision": "int8", "fruitlens_calibration_sha256": calibration.digest,
                     "fruitlens_calibration_images": str(len(pixels)),
                     "fruitlens_quantization": json.dumps(SETTINGS, sort_keys=True)}.items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staged = out_path.with_suffix(f".tmp{os.getpid()}")
        onnx.save(model, str(staged))
        os.replace(staged, out_path)
    return out_path


def model_info(onnx_path: str | os.PathLike[str]) -> dict:
    """What the quantized model says about itself (for the manifest)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return {"calibration_sha256": props.get("fruitlens_calibration_sha256"),
            "calibration_images": int(props.get("fruitlens_calibration_images", 0)) or None,
            "quantization": json.loads(props.get("fruitlens_quantization", "null")),
            "model_sha256": sha256_file(onnx_path)}


# ---------------------------------------------------------------- the registry's hooks (fruitlens.engines)

def prepare(spec, weights_path: Path, digest: str, *, image_size: int, calibration=None, run=None) -> ModelArtifact:
    """The fp32 export quantized on ``calibration``; in a run (``run``: fruitlens.engines.RunInputs), OUTPUT's
    own int8 model when it has one (a resumed run), else one calibrated on INPUT's photos."""
    fp32 = onnx_export(weights_path, digest, image_size)
    pinned = from_output(run.out, spec, fp32, digest, image_size) if run is not None and run.out is not None else None
    if pinned is not None:
        return pinned
    if calibration is None and run is not None:
        source = run.source
        calibration = lambda: calibration_from(  # noqa: E731 - read only when the model is not cached yet
            run.paths, lambda p: source.read_bytes(source.path_of(p)), root=source.uri)
    if calibration is None:
        raise ModelError("the int8 engine needs calibration photos")
    return ModelArtifact(spec.name, str(quantized_model(fp32, calibration)), digest, precision=spec.precision,
                         image_size=image_size)


def keep(spec, out, artifact: ModelArtifact) -> None:
    """Keep the int8 model in OUTPUT (once), so resumed runs and `train` use this very model."""
    name = pinned_name(artifact)
    if not out.exists(name):
        out.write_bytes(name, Path(artifact.path).read_bytes())


def describe(spec, artifact: ModelArtifact) -> dict:
    return {**model_info(artifact.path), "pinned": pinned_name(artifact)}


# ---------------------------------------------------------------- OUTPUT keeps the model of its features

def pinned_name(artifact: ModelArtifact) -> str:
    from fruitlens.state.layout import pinned_int8

    return pinned_int8(artifact.sha256, artifact.image_size)


def from_output(out, spec, fp32_path: Path, digest: str, image_size: int) -> ModelArtifact | None:
    """The int8 model OUTPUT's features were made with (same weights and size), copied to the local cache."""
    pinned = ModelArtifact(spec.name, "", digest, precision=spec.precision, image_size=image_size)
    name = pinned_name(pinned)
    if not out.exists(name):
        return None
    data = out.read_bytes(out.fs_path(name))
    local = writable_cache() / f"{fp32_path.stem}_int8_pinned_{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    if not local.is_file():
        staged = local.with_suffix(f".tmp{os.getpid()}")
        staged.write_bytes(data)
        os.replace(staged, local)
    return ModelArtifact(spec.name, str(local), digest, precision=spec.precision, image_size=image_size)
