"""Explore int8 quantization settings: fidelity on the bench-engines photos, speed vs fp32 in one process.

Not part of the package: a measuring tool for choosing `fruitlens.engines.quantize`'s settings (issue 12).
For each config: quantize the fp32 224 export (calibrated like `run --engine onnx-int8`: a class-balanced
choice of Training photos), then
- the cosine of its features to fp32's on the photos `fruitlens bench-engines` uses (60 Training photos per
  class + every Test photo = 2,770 on the sample), mean / min / 5th percentile;
- images/s of int8 and fp32 taking turns on 256 Test photos (2 threads, batch 64), and their ratio.
Appends one JSON line per config to OUT (default /tmp/int8x/results.jsonl).

    PYTHONPATH=src python bench/int8_explore.py ../shared/data/fruits-360-sample base calib300 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fruitlens.bench.engines import _cosine, _features, balanced, interleaved_speed
from fruitlens.engines.engine import OnnxEngine, prepare_model
from fruitlens.engines.quantize import select_calibration
from fruitlens.images import decode_rgb, is_image_path, preprocess

WORK = Path("/tmp/int8x")


def first_and_last(k: int):
    return lambda convs, adds, *_: [*convs[:k], convs[-1]]


def fp32_pool(exclude):
    """... and the global average pool + squeeze (the features themselves) kept fp32."""
    return lambda convs, adds, pool: [*exclude(convs, adds), *pool]


BASE = {"calib": 100, "method": "MinMax", "format": "QDQ", "act": "QUInt8", "weight": "QInt8",
        "per_channel": True, "reduce_range": False, "exclude": first_and_last(6), "extra": {},
        "u8u8_kernels": False, "rr_on": None, "rr_axis": True, "gptq": False}


def kind(graph, node) -> str:
    """depthwise | expand (1x1 followed by ReLU6, or the first Conv) | project (1x1, linear output)."""
    if any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "depthwise"
    consumers = [n.op_type for n in graph.node if node.output[0] in n.input]
    return "expand" if "Clip" in consumers else "project"


def reduce_range_on(*kinds: str):
    """7-bit weights only for these kinds of Conv (a TensorQuantOverrides per weight tensor)."""
    return lambda graph: [n for n in graph.node if n.op_type == "Conv" and kind(graph, n) in kinds]


# name -> overrides of BASE: the configs measured in docs/performance.md ("second round")
EXPAND = reduce_range_on("expand")
CONFIGS = {
    "base": {},  # the previous setting: first 6 + last Conv fp32
    "calib300": {"calib": 300},
    "first4": {"exclude": first_and_last(4)},
    # ORT's session option session.x64quantprecision=1: U8U8 kernels, no int16 saturation of u8 x s8 pairs
    "u8u8_kernels": {"u8u8_kernels": True},
    "u8u8_kernels_first1": {"u8u8_kernels": True, "exclude": first_and_last(1)},
    # 7-bit weights: u8 x s7 pair sums fit in int16, so the fast U8S8 kernels cannot saturate
    "rr": {"reduce_range": True},
    "rr_first1": {"reduce_range": True, "exclude": first_and_last(1)},
    # without "axis", ORT's override makes those weights per-tensor
    "rr_project_per_tensor": {"rr_on": reduce_range_on("project"), "rr_axis": False},
    "rr_expand_per_tensor": {"rr_on": EXPAND, "rr_axis": False},
    "rr_expand": {"rr_on": EXPAND},
    "rr_expand_first3": {"rr_on": EXPAND, "exclude": first_and_last(3)},  # chosen
    "rr_expand_first3_only": {"rr_on": EXPAND, "exclude": lambda convs, adds, *_: convs[:3]},
    "rr_expand_first6_only": {"rr_on": EXPAND, "exclude": lambda convs, adds, *_: convs[:6]},
    "rr_expand_first2_only": {"rr_on": EXPAND, "exclude": lambda convs, adds, *_: convs[:2]},
    "rr_expand_first1": {"rr_on": EXPAND, "exclude": first_and_last(1)},
    "rr_expand_f3_fpool": {"rr_on": EXPAND, "exclude": fp32_pool(first_and_last(3))},
    "rr_expand_f3only_fpool": {"rr_on": EXPAND, "exclude": fp32_pool(lambda convs, adds, *_: convs[:3])},
    # which of the first three Convs costs the fidelity: two of them fp32, the third int8
    "rr_expand_int8_conv1": {"rr_on": EXPAND, "exclude": lambda convs, *_: [convs[1], convs[2], convs[-1]]},
    "rr_expand_int8_dw0": {"rr_on": EXPAND, "exclude": lambda convs, *_: [convs[0], convs[2], convs[-1]]},
    "rr_expand_int8_proj0": {"rr_on": EXPAND, "exclude": lambda convs, *_: [convs[0], convs[1], convs[-1]]},
    # GPTQ rounding + bias correction (fruitlens.engines.rounding) of every int8 Conv's weights
    "gptq_rr_expand_first3": {"gptq": True, "rr_on": EXPAND, "exclude": first_and_last(3)},
    "gptq_rr_expand_all": {"gptq": True, "rr_on": EXPAND, "exclude": lambda *_: []},
    "gptq_rr_expand_last": {"gptq": True, "rr_on": EXPAND, "exclude": lambda convs, *_: [convs[-1]]},
    "gptq_rr_expand_first1": {"gptq": True, "rr_on": EXPAND, "exclude": lambda convs, *_: [convs[0]]},
    "gptq_rr_all": {"gptq": True, "rr_on": reduce_range_on("expand", "project", "depthwise"), "exclude": lambda *_: []},
}


def session(path: str, u8u8_kernels: bool = False) -> OnnxEngine:
    engine = OnnxEngine.__new__(OnnxEngine)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    if u8u8_kernels:
        options.add_session_config_entry("session.x64quantprecision", "1")
    engine._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    engine._input = engine._session.get_inputs()[0].name
    return engine


def load_photos(sample: Path) -> tuple[np.ndarray, list[str]]:
    listing = {s: sorted(str(p) for p in (sample / s).rglob("*") if p.is_file() and is_image_path(p.name))
               for s in ("Training", "Test")}
    paths = balanced(listing["Training"], 60) + listing["Test"]  # as bench_engines.measure_engines
    cache = WORK / "pixels224.npy"
    if not cache.exists():
        pixels = preprocess(np.stack([decode_rgb(Path(p).read_bytes(), (224, 224)) for p in paths]))
        np.save(cache, pixels)
    return np.load(cache, mmap_mode="r"), listing["Training"]


def quantize(fp32: str, out: Path, cfg: dict, calib_pixels: np.ndarray) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(fp32, str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        adds = [n.name for n in graph.node if n.op_type == "Add"]
        pool = [n.name for n in graph.node if n.op_type in ("GlobalAveragePool", "Squeeze")]
        input_name = graph.input[0].name
        extra = dict(cfg["extra"])
        if cfg["gptq"]:
            from fruitlens.engines.rounding import scale_overrides, snap_convs

            model = onnx.load(str(pre))
            excluded = set(cfg["exclude"](convs, adds, pool))
            seven_bit = {n.name for n in cfg["rr_on"](graph)} if cfg["rr_on"] else set()
            todo = [c for c in convs if c not in excluded]
            scales = snap_convs(model, todo, (np.ascontiguousarray(calib_pixels[i:i + 10])
                                              for i in range(0, len(calib_pixels), 10)),
                                {c: 64 if c in seven_bit else 127 for c in todo})
            onnx.save(model, str(pre))
            extra["TensorQuantOverrides"] = scale_overrides(scales)
        elif cfg["rr_on"]:
            override = {"reduce_range": True, **({"axis": 0} if cfg["rr_axis"] else {})}
            extra["TensorQuantOverrides"] = {n.input[1]: [override] for n in cfg["rr_on"](graph)}

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(calib_pixels[i:i + 10] for i in range(0, len(calib_pixels), 10))

            def get_next(self):
                b = next(self._it, None)
                return None if b is None else {input_name: np.ascontiguousarray(b)}

        quantize_static(str(pre), str(out), Reader(), quant_format=getattr(QuantFormat, cfg["format"]),
                        activation_type=getattr(QuantType, cfg["act"]),
                        weight_type=getattr(QuantType, cfg["weight"]), per_channel=cfg["per_channel"],
                        reduce_range=cfg["reduce_range"],
                        calibrate_method=getattr(CalibrationMethod, cfg["method"]),
                        nodes_to_exclude=cfg["exclude"](convs, adds, pool), extra_options=extra)


def speed_only(ns) -> int:
    """fp32 and every named model take turns on the same 256 Test photos: their ratios share one load."""
    pixels, _ = load_photos(ns.sample)
    pool = np.ascontiguousarray(pixels[-256:])
    engines = {"fp32": OnnxEngine(prepare_model("onnx", "imagenet", image_size=224).path, threads=2)}
    engines |= {name: session(str(WORK / f"{name}.onnx"), {**BASE, **CONFIGS[name]}["u8u8_kernels"])
                for name in ns.configs}
    speed = interleaved_speed(engines, dict.fromkeys(engines, pool), 64, ns.rounds)
    row = {"speed_only": {name: {"ips": round(v, 1), "ratio": round(v / speed["fp32"], 3)}
                          for name, v in speed.items()}, "rounds": ns.rounds}
    print(json.dumps(row), flush=True)
    with ns.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sample", type=Path)
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--out", type=Path, default=WORK / "results.jsonl")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--speed-only", action="store_true",
                    help="only time fp32 and the configs' already-made models, all taking turns in one loop")
    ns = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    if ns.speed_only:
        return speed_only(ns)
    pixels, training = load_photos(ns.sample)
    fp32 = prepare_model("onnx", "imagenet", image_size=224).path
    ref_engine = OnnxEngine(fp32, threads=2)
    ref_file = WORK / "ref224.npy"
    if not ref_file.exists():
        np.save(ref_file, _features(ref_engine, pixels, 64))
    ref = np.load(ref_file)
    test_pool = np.ascontiguousarray(pixels[-256:])  # Test photos (the listing ends with them)
    for name in ns.configs:
        cfg = {**BASE, **CONFIGS[name]}
        chosen = select_calibration(training, cfg["calib"], root=str(ns.sample))
        calib = preprocess(np.stack([decode_rgb(Path(p).read_bytes(), (224, 224)) for p in chosen]))
        model = WORK / f"{name}.onnx"
        t = time.perf_counter()
        quantize(fp32, model, cfg, calib)
        quant_s = time.perf_counter() - t
        engine = session(str(model), cfg["u8u8_kernels"])
        cos = _cosine(_features(engine, pixels, 64), ref)
        speed = interleaved_speed({"fp32": ref_engine, "int8": engine}, {"fp32": test_pool, "int8": test_pool},
                                  64, ns.rounds)
        row = {"config": name, "photos": len(pixels), "cos_mean": round(float(cos.mean()), 5),
               "cos_min": round(float(cos.min()), 5), "cos_p5": round(float(np.percentile(cos, 5)), 5),
               "fp32_ips": round(speed["fp32"], 1), "int8_ips": round(speed["int8"], 1),
               "ratio": round(speed["int8"] / speed["fp32"], 3), "quantize_s": round(quant_s, 1)}
        print(json.dumps(row), flush=True)
        with ns.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
