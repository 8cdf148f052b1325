"""Data-aware rounding of Conv weights to the int8 grid, before ONNX Runtime quantizes them.

Round-to-nearest int8 weights lose most where a Conv's inputs are smooth: Fruits-360's 100x100 photos,
upscaled to 224, make the first depthwise Conv's 3x3 patches almost constant, so its output depends on
each channel's weight *sum*, and nine independent roundings shift that sum (mean cosine to fp32 0.970
with only that Conv's weights rounded). Choosing each rounding against the Conv's real inputs keeps
what the outputs see: GPTQ (Frantar et al., 2022; "optimal brain quantization" one column at a time,
the error of each rounded weight spread over the weights not yet rounded, through the inverse of the
inputs' second moments H = E[x xᵀ]), then bias correction (Nagel et al., 2019: the mean output shift
the rounding leaves, -ΔW·E[x], added to the bias).

:func:`snap_convs` rewrites the fp32 model's Conv weights to values on each output channel's grid
(scale = max|w| / qmax, symmetric, as ONNX Runtime's per-channel int8) and returns those scales, which
the quantizer is then given explicitly, so that it keeps exactly these integers.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: The second-moment matrix is damped by this share of its mean diagonal (GPTQ's default): stable inverses.
DAMPING = 0.01


@dataclass(frozen=True)
class ConvShape:
    """What im2col needs of an ONNX Conv (NCHW, 2-D)."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    group: int

    @classmethod
    def of(cls, node) -> ConvShape:
        from onnx import helper

        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or tuple(a.get("dilations", (1, 1))) != (1, 1):
            raise ValueError(f"Conv {node.name}: auto_pad/dilations are not supported by the int8 rounding")
        kh, kw = a["kernel_shape"]
        t, l, b, r = a.get("pads", (0, 0, 0, 0))
        return cls((kh, kw), tuple(a.get("strides", (1, 1))), (t, l, b, r), int(a.get("group", 1)))


def patches(x: np.ndarray, shape: ConvShape) -> np.ndarray:
    """(N, C, H, W) → (G, positions, K): each group's input patches, K = C/G · kh · kw, in the weights'
    flattening order (channel, row, column)."""
    t, l, b, r = shape.pads
    x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    kh, kw = shape.kernel
    sh, sw = shape.strides
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # N C Ho Wo kh kw
    n, c, ho, wo = win.shape[:4]
    g = shape.group
    win = win.reshape(n, g, c // g, ho, wo, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(g, n * ho * wo, (c // g) * kh * kw)


class PatchMoments:
    """E[x xᵀ] and E[x] of one Conv's input patches, per group, accumulated batch by batch."""

    def __init__(self, shape: ConvShape) -> None:
        self.shape = shape
        self.xx: np.ndarray | None = None
        self.x: np.ndarray | None = None
        self.count = 0

    def add(self, batch: np.ndarray) -> None:
        for image in batch:  # one at a time: an early depthwise Conv's patches are ~90 MB per photo
            p = np.ascontiguousarray(patches(image[None], self.shape), dtype=np.float32)
            # float32 products (BLAS) within a photo, float64 sums across photos
            xx, x = np.matmul(p.transpose(0, 2, 1), p).astype(np.float64), p.sum(1).astype(np.float64)
            self.xx = xx if self.xx is None else self.xx + xx
            self.x = x if self.x is None else self.x + x
            self.count += p.shape[1]


def gptq(weights: np.ndarray, moments: PatchMoments, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(O, C/G, kh, kw) fp32 weights → (the same on each output channel's grid, the per-channel scales).

    Columns are rounded in order of decreasing input energy (GPTQ's "act order"); every row keeps the
    scale round-to-nearest would give it (its largest weight stays exactly ±qmax)."""
    g = moments.shape.group
    o = weights.shape[0]
    w = weights.reshape(g, o // g, -1).astype(np.float64)  # (G, rows, K)
    scale = np.abs(w).max(2, keepdims=True) / qmax
    scale[scale == 0] = 1.0
    h = moments.xx / moments.count
    k = h.shape[1]
    damp = DAMPING * np.maximum(np.einsum("gkk->gk", h).mean(1), 1e-12)
    h = h + damp[:, None, None] * np.eye(k)
    order = np.argsort(-np.einsum("gkk->gk", h).mean(0))  # one order for all groups: vectorised
    h = h[:, order][:, :, order]
    w = w[:, :, order]
    # Upper Cholesky factor of H⁻¹: row i holds how rounding column i moves the later ones.
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    q = np.empty_like(w)
    for i in range(k):
        col = w[:, :, i:i + 1]
        rounded = np.clip(np.round(col / scale), -qmax, qmax) * scale
        q[:, :, i:i + 1] = rounded
        err = (col - rounded) / u[:, i, i][:, None, None]
        w[:, :, i:] -= err * u[:, None, i, i:]
    inverse = np.argsort(order)
    q = q[:, :, inverse]
    return q.reshape(weights.shape), scale.reshape(o)


def bias_correction(before: np.ndarray, after: np.ndarray, moments: PatchMoments) -> np.ndarray:
    """The per-output-channel mean shift the new weights make, to subtract from the bias: ΔW · E[x]."""
    g = moments.shape.group
    o = before.shape[0]
    delta = (after - before).reshape(g, o // g, -1).astype(np.float64)
    mean = moments.x / moments.count  # (G, K)
    return np.einsum("grk,gk->gr", delta, mean).reshape(o)


def snap_convs(model, conv_names: Iterable[str], batches: Iterable[np.ndarray], qmax: dict[str, int]) -> dict:
    """Round the named Convs' weights of ``model`` (an onnx ModelProto, fp32, changed in place) to their
    int8 grids, GPTQ + bias correction, on the inputs ``batches`` (model inputs, NHWC float32) give them.

    ``qmax``: per Conv name, 127 (int8) or 64 (7-bit, ONNX Runtime's reduce_range). Returns
    {weight tensor name: per-output-channel scales (float32)} for the quantizer's overrides."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    nodes = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    wanted = [nodes[name] for name in conv_names]
    moments = {n.name: PatchMoments(ConvShape.of(n)) for n in wanted}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = sorted({n.input[0] for n in wanted})
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in inputs])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as named
    from fruitlens.engines import ENGINES  # the Convs' inputs as the int8 engine's providers compute them

    session = ort.InferenceSession(probe.SerializeToString(), options, providers=list(ENGINES["onnx-int8"].providers))
    feed = session.get_inputs()[0].name
    for batch in batches:
        values = dict(zip(inputs, session.run(inputs, {feed: batch})))
        for n in wanted:
            moments[n.name].add(values[n.input[0]])
    initializers = {i.name: i for i in model.graph.initializer}
    scales = {}
    for n in wanted:
        w_init, b_init = initializers[n.input[1]], initializers[n.input[2]]
        before = numpy_helper.to_array(w_init)
        after, scale = gptq(before, moments[n.name], qmax[n.name])
        bias = numpy_helper.to_array(b_init).astype(np.float64) - bias_correction(before, after, moments[n.name])
        w_init.CopyFrom(numpy_helper.from_array(after.astype(np.float32), w_init.name))
        b_init.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b_init.name))
        scales[w_init.name] = scale.astype(np.float32)
    return scales


def scale_overrides(scales: dict) -> dict:
    """:func:`snap_convs`' scales as ``quantize_static``'s per-channel TensorQuantOverrides (the axis goes
    in the first channel's entry; without it ORT makes the weight per-tensor)."""
    return {name: [{"scale": np.float32(v), "zero_point": np.int8(0), **({"axis": 0} if i == 0 else {})}
                   for i, v in enumerate(per_channel)] for name, per_channel in scales.items()}
