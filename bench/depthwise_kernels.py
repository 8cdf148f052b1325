"""Time ONNX Runtime's depthwise 3x3 Conv kernels alone: fp32 against int8 (QDQ, u8 activations, s8 weights).

Not part of the package: a measuring tool behind docs/performance.md's account of the int8 speed-up (issue
12). It builds one-Conv models of MobileNetV2's depthwise shapes, batch 64, and reads each kernel's own time
from ORT's profiler (layout reorders and (de)quantization excluded), 1 thread as a Spark task runs it:
- fp32: ORT's NCHWc depthwise Conv (+ fused ReLU);
- int8 sym: weights with zero point 0 and a multiple of 16 channels, so MLAS takes its symmetric kernel,
  which requantizes as it goes (ConvSym);
- int8 other: 136 channels, not a multiple of 16: MLAS's generic depthwise kernel (int32 out, then
  requantized), to show which path the model's Convs take.

    .venv/bin/python bench/depthwise_kernels.py
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fruitlens.bench import cpu_flags, cpu_model

BATCH = 64
RUNS = 5
THREADS = int(os.environ.get("THREADS", "1"))  # a Spark task runs 1; the bench-engines ceiling 2


def depthwise_model(channels: int, side: int, int8: bool) -> bytes:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(channels, 1, 3, 3)).astype(np.float32)
    conv = dict(group=channels, pads=[1, 1, 1, 1])
    if int8:
        inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                 numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                 numpy_helper.from_array(np.round(w * 20).clip(-127, 127).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.full(channels, 0.05, np.float32), "ws"),
                 numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
                 numpy_helper.from_array(np.array(0, np.uint8), "yz")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
                 helper.make_node("Conv", ["xd", "wd"], ["c"], **conv),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
                 helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    else:
        inits = [numpy_helper.from_array(w, "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], **conv), helper.make_node("Relu", ["c"], ["y"])]
    shape = [BATCH, channels, side, side]
    graph = helper.make_graph(nodes, "depthwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def kernel_ms(model: bytes, channels: int, side: int, workdir: str) -> dict[str, float]:
    """Mean ms per run of each op kind, from ORT's profile (after one warm-up run)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, "profile")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((BATCH, channels, side, side), dtype=np.float32)
    for _ in range(RUNS + 1):
        session.run(None, {"x": x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000
    return {op: round(ms / (RUNS + 1), 2) for op, ms in totals.items()}


def main() -> None:
    print(f"cpu: {cpu_model()}; flags: {' '.join(cpu_flags())}")
    print(f"onnxruntime: {ort.__version__}; batch {BATCH}, {THREADS} thread(s); ms per run of the Conv kernel alone")
    with tempfile.TemporaryDirectory() as workdir:
        for channels, side in [(144, 56), (192, 28), (384, 14), (960, 7), (136, 56)]:
            fp32 = kernel_ms(depthwise_model(channels, side, False), channels, side, workdir)["Conv"]
            int8 = kernel_ms(depthwise_model(channels, side, True), channels, side, workdir)["QLinearConv"]
            path = "sym" if channels % 16 == 0 else "other"
            print(f"{channels}x{side}x{side}: fp32 {fp32:.1f}  int8 ({path}) {int8:.1f}  int8/fp32 speed {fp32 / int8:.2f}x")


if __name__ == "__main__":
    main()
