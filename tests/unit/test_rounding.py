"""The int8 weight rounding (fruitlens.engines.rounding): patches as ONNX's Conv sees them, GPTQ on the grid and
better than round-to-nearest, and the quantizer keeping exactly the rounded integers."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fruitlens.engines.rounding import (
    ConvShape,
    PatchMoments,
    bias_correction,
    gptq,
    patches,
    scale_overrides,
    snap_convs,
)

# The Conv shapes MobileNetV2's export has: 3x3 stride 2 with TF's asymmetric padding, depthwise 3x3, 1x1.
SHAPES = {
    "stem": (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]), 3, 8, 1),
    "depthwise_s2": (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], group=6), 6, 6, 6),
    "depthwise": (dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], group=6), 6, 6, 6),
    "pointwise": (dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0]), 6, 10, 1),
}


def conv_model(attrs: dict, cin: int, cout: int, group: int, w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, cin, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_patches_times_weights_is_onnx_conv(shape):
    attrs, cin, cout, group = SHAPES[shape]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(cout, cin // group, *attrs["kernel_shape"])).astype(np.float32)
    b = rng.normal(size=cout).astype(np.float32)
    x = rng.normal(size=(2, cin, 9, 9)).astype(np.float32)
    model = conv_model(attrs, cin, cout, group, w, b)
    want = run(model, x)  # N, O, Ho, Wo
    p = patches(x, ConvShape.of(model.graph.node[0]))  # G, N*Ho*Wo, K
    per_group = w.reshape(group, cout // group, -1)
    got = np.einsum("gnk,grk->gnr", p, per_group).reshape(group, 2, *want.shape[2:], cout // group)
    got = got.transpose(1, 0, 4, 2, 3).reshape(want.shape) + b[None, :, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def smooth_inputs(n: int = 4, c: int = 6) -> np.ndarray:
    """Upscaled-photo-like inputs: each channel nearly constant over a 3x3 patch."""
    rng = np.random.default_rng(1)
    coarse = rng.uniform(0, 6, size=(n, c, 3, 3))
    return (np.kron(coarse, np.ones((1, 1, 3, 3))) + rng.normal(0, 0.01, size=(n, c, 9, 9))).astype(np.float32)


@pytest.mark.parametrize("qmax", [127, 64])
def test_gptq_weights_sit_on_each_channels_grid_and_beat_round_to_nearest(qmax):
    attrs, cin, cout, group = SHAPES["depthwise"]
    rng = np.random.default_rng(2)
    # Depthwise kernels whose taps nearly cancel (edge detectors), as BatchNorm folding leaves them.
    w = rng.normal(size=(cout, 1, 3, 3)).astype(np.float32)
    w -= w.mean(axis=(2, 3), keepdims=True) * 0.98
    shape = ConvShape.of(conv_model(attrs, cin, cout, group, w, np.zeros(cout, np.float32)).graph.node[0])
    moments = PatchMoments(shape)
    x = smooth_inputs()
    moments.add(x)
    snapped, scale = gptq(w, moments, qmax)

    q = snapped.reshape(cout, -1) / scale[:, None]
    np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # on the grid
    assert np.abs(np.round(q)).max(1).tolist() == [qmax] * cout  # the scale round-to-nearest gives: kept
    np.testing.assert_allclose(scale, np.abs(w).reshape(cout, -1).max(1) / qmax, rtol=1e-6)

    p = patches(x, shape)  # G, positions, 9
    def output_error(candidate):
        d = (candidate - w).reshape(cout, 1, -1)
        return float(np.mean(np.einsum("gnk,grk->gnr", p, d) ** 2))
    nearest = np.round(w.reshape(cout, -1) / scale[:, None]) * scale[:, None]
    assert output_error(snapped) < 0.5 * output_error(nearest.reshape(w.shape))

    # Bias correction takes out the mean shift the rounding leaves.
    shift = bias_correction(w, snapped, moments)
    mean_error = (np.einsum("gnk,grk->gr", p, (snapped - w).reshape(cout, 1, -1)) / p.shape[1]).reshape(cout)
    np.testing.assert_allclose(shift, mean_error, rtol=1e-4, atol=1e-9)


def test_the_quantizer_keeps_the_rounded_integers_and_the_bias_is_corrected():
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    attrs, cin, cout, group = SHAPES["depthwise"]
    rng = np.random.default_rng(3)
    w = rng.normal(size=(cout, 1, 3, 3)).astype(np.float32)
    b = rng.normal(size=cout).astype(np.float32)
    model = conv_model(attrs, cin, cout, group, w, b)
    x = smooth_inputs()
    scales = snap_convs(model, ["conv"], [x], {"conv": 127})
    snapped = numpy_helper.to_array(model.graph.initializer[0])
    corrected = numpy_helper.to_array(model.graph.initializer[1])
    assert not np.allclose(corrected, b)  # the rounding's mean shift was taken out of the bias

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x}])

        def get_next(self):
            return next(self.batches, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(fp32))
        overrides = scale_overrides(scales)
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"TensorQuantOverrides": overrides})
        quantized = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer}
    weights = next(v for v in quantized.values() if v.dtype == np.int8 and v.shape == w.shape)
    scale = next(v for k, v in quantized.items() if v.dtype == np.float32 and v.shape == (cout,) and "scale" in k)
    np.testing.assert_allclose(weights * scale[:, None, None, None], snapped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scale, scales["w"], rtol=1e-7)
