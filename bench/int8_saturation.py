"""Where an int8 QDQ model's 1x1 Convs saturate on x86 CPUs without VNNI (a diagnostic for issue 12).

ONNX Runtime's u8 x s8 kernels there multiply pairs of adjacent input channels and add each pair into
int16 (`vpmaddubsw`), which saturates beyond +-32,767. For every non-depthwise 1x1 Conv of the quantized
model, this replays that arithmetic in numpy on its uint8 inputs (the fp32 model's activations on a few
bench photos, quantized with the model's own scale and zero point) and prints the share of saturated
pair sums and the relative error they make in the Conv's int32 output.

    PYTHONPATH=src python bench/int8_saturation.py MODEL_INT8.onnx [PHOTOS.npy]

PHOTOS.npy: preprocessed NHWC float32 photos (default: the cache `bench/int8_explore.py` writes).
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process

from fruitlens.engines.engine import prepare_model


def main(model: str, photos: str = "/tmp/int8x/pixels224.npy") -> int:
    graph = onnx.load(model).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    pixels = np.load(photos, mmap_mode="r")
    x = np.ascontiguousarray(pixels[np.linspace(0, len(pixels) - 1, 8).astype(int)])
    convs = []  # (Conv, fp32 input tensor, scale, zero point, int8 weights) of each int8 1x1 Conv
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        dq_x, dq_w = producer.get(conv.input[0]), producer.get(conv.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue  # kept fp32
        w = init[dq_w.input[0]]
        if w.shape[2:] != (1, 1) or any(a.name == "group" and a.i > 1 for a in conv.attribute):
            continue  # depthwise and 3x3 Convs: other kernels
        q = producer[dq_x.input[0]]
        convs.append((conv.name, q.input[0], float(init[q.input[1]]), int(init[q.input[2]]), w[:, :, 0, 0]))

    pre = "/tmp/int8x/fp32-pre.onnx"  # the fp32 graph the quantizer saw, with the Conv inputs as outputs
    quant_pre_process(prepare_model("onnx", "imagenet").path, pre, skip_symbolic_shape=True)
    fp32 = onnx.load(pre)
    for _, tensor, *_ in convs:
        fp32.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(fp32.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    acts = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))

    for name, tensor, scale, zp, w in convs:
        a = acts[tensor].transpose(0, 2, 3, 1) if acts[tensor].shape[1] == w.shape[1] else acts[tensor]
        a = np.clip(np.round(a / scale) + zp, 0, 255).reshape(-1, w.shape[1]).astype(np.int32)
        a = a[:: max(1, len(a) // 4000)]  # ~4,000 pixels
        w = w.astype(np.int32)
        if w.shape[1] % 2:
            a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
        pairs = np.einsum("pjk,ojk->poj", a.reshape(len(a), -1, 2), w.reshape(len(w), -1, 2))
        saturated = np.clip(pairs, -32768, 32767)
        exact, got = pairs.sum(-1) - zp * w.sum(1), saturated.sum(-1) - zp * w.sum(1)
        print(f"{name:12s} cin={w.shape[1]:4d} zero_point={zp:3d} "
              f"saturated_pairs={(pairs != saturated).mean():.2e} "
              f"relative_error={np.linalg.norm(exact - got) / (np.linalg.norm(exact) + 1e-9):.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
