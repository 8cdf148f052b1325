"""`fruitlens bench-engines`: the opt-in faster engines (int8, smaller inputs) — their speed and fidelity.

For each variant, in one process, on the same photos of a sample with Training/ and Test/ folders:
- images/s of the engine alone (same batch size and threads as `fruitlens bench`'s ceiling) on a pool of
  preprocessed photos, and the ratio to fp32 224: the variants take turns batch by batch, so that a
  machine whose speed changes during the run slows them alike;
- the cosine similarity of its 1280-d features to the fp32 224 features of the same photos (mean, min,
  5th percentile);
- Test accuracy of the same classifier (multinomial logistic regression, numpy) trained on its features
  of a fixed class-balanced Training subset, and the difference to fp32 224 in points.
Prints `key: value` lines and returns (or writes) the same figures as JSON. `fruitlens bench` calls
:func:`measure_engines` too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fruitlens.engines import ENGINES, load_engine, prepare_model
from fruitlens.engines.quantize import Calibration, select_calibration
from fruitlens.images import decode_rgb, is_image_path, label_and_split, preprocess

#: (precision, image size); the first is the reference the others are compared with.
VARIANTS = (("fp32", 224), ("int8", 224), ("fp32", 160), ("int8", 160), ("fp32", 128), ("fp32", 96))


#: The engine a variant of each precision runs: the registry's first on the same ONNX Runtime providers as
#: `fruitlens bench`'s default engine (the CPU), so that only precision and size differ.
PRECISIONS = {s.precision: s.name for s in reversed(ENGINES.values()) if s.providers == ENGINES["onnx"].providers}


def variant_name(precision: str, size: int) -> str:
    return f"{precision}-{size}"


def parse_variants(text: str) -> list[tuple[str, int]]:
    """``fp32-224,int8-160`` → [("fp32", 224), ("int8", 160)]; fp32-224 is always measured first."""
    out = [("fp32", 224)]
    for item in filter(None, (t.strip() for t in text.split(","))):
        precision, _, size = item.partition("-")
        if precision not in PRECISIONS or not size.isdigit():
            raise argparse.ArgumentTypeError(f"a variant is PRECISION-SIZE such as int8-224, got {item!r}")
        if (precision, int(size)) not in out:
            out.append((precision, int(size)))
    return out


def cpu_info() -> dict:
    """The CPU model, the SIMD flags int8 inference depends on (VNNI: int8 dot products in one step) and the
    int8 kernel ONNX Runtime picks from them (:func:`int8_kernel`)."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f in ("avx2", "fma", "avx_vnni", "amx_int8") or f.startswith("avx512"))
    return {"model": model, "cores": os.cpu_count(), "flags": wanted,
            "vnni": any("vnni" in f for f in flags), "int8_kernel": int8_kernel(flags)[0]}


#: ONNX Runtime's int8 GEMM/Conv kernels on x86-64 (MLAS, onnxruntime/core/mlas/lib/platform.cpp): the first
#: whose CPU flags are all present is the one MLAS dispatches u8s8 (uint8 activations, int8 weights) to.
INT8_KERNELS = (
    (("amx_tile", "amx_int8"), "AMX", "AMX-INT8 tiles (MlasGemmU8S8DispatchAmx)"),
    (("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"), "AVX-512 VNNI",
     "vpdpbusd on zmm: int8 dot products in one instruction (MlasGemmU8S8KernelAvx512Vnni)"),
    (("avx512f", "avx512bw", "avx512dq", "avx512vl"), "AVX-512 core, no VNNI",
     "vpmaddubsw + vpmaddwd on zmm (MlasGemmU8S8KernelAvx512Core)"),
    (("avx2", "fma", "avx_vnni"), "AVX-VNNI", "vpdpbusd on ymm (MlasGemmU8S8KernelAvxVnni)"),
    (("avx2", "fma"), "AVX2, no VNNI",
     "vpmaddubsw + vpmaddwd on ymm: three instructions per int8 dot product, 16-bit intermediate sums "
     "(MlasGemmU8S8KernelAvx2)"),
)
#: The operators ONNX Runtime runs in int8 once it has fused a QDQ model's DequantizeLinear → op → QuantizeLinear.
INT8_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
                      "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearMul", "QLinearConcat",
                      "NhwcQLinearConv", "QLinearLeakyRelu", "QLinearSigmoid"})
FLOAT_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return set(value.split())
    except OSError:
        pass
    return set()


def int8_kernel(flags: set[str]) -> tuple[str, str]:
    """(name, how) of the x86-64 int8 kernel MLAS picks for these CPU flags (``/proc/cpuinfo``'s spelling)."""
    for needed, name, how in INT8_KERNELS:
        if set(needed) <= flags:
            return name, how
    return "SSE (no AVX2)", "the generic SSE4.1/SSE2 kernels (MlasGemmU8X8DispatchSse*)"


def kernel_path(model_path: str, image_size: int, *, threads: int = 0, flags: set[str] | None = None) -> dict:
    """What ONNX Runtime ran for this model here: its providers, the operators it executed (from one profiled
    run: int8 ones such as QLinearConv, or float Convs where it did not fuse the QDQ nodes), and for int8 the
    MLAS kernel these CPU flags select."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(model_path).with_suffix("")) + "-profile"
    session = ort.InferenceSession(model_path, options, providers=list(ENGINES["onnx"].providers))
    feed = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in feed.shape]
    if len(shape) == 4:  # NHWC or NCHW: the image size where the model leaves it free
        shape = [1, *[image_size if not isinstance(d, int) else d for d in feed.shape[1:]]]
    session.run(None, {feed.name: np.zeros(shape, np.float32)})
    profile = Path(session.end_profiling())
    ops: dict[str, int] = defaultdict(int)
    providers: set[str] = set()
    try:
        for event in json.loads(profile.read_text()):
            args = event.get("args", {})
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and "op_name" in args:
                ops[args["op_name"]] += 1
                providers.add(args.get("provider", ""))
    finally:
        profile.unlink(missing_ok=True)
    int8_ops = {k: v for k, v in sorted(ops.items()) if k in INT8_OPS}
    float_ops = {k: v for k, v in sorted(ops.items()) if k in FLOAT_OPS}
    out = {"onnxruntime": ort.__version__, "providers": session.get_providers(),
           "node_providers": sorted(p for p in providers if p), "int8_ops": int8_ops, "float_ops": float_ops}
    if int8_ops:
        name, how = int8_kernel(cpu_flags() if flags is None else flags)
        out.update(kernel=name, kernel_detail=how,
                   path=", ".join(f"{k} x{v}" for k, v in int8_ops.items()) + f" on MLAS {name}"
                   + (f" (and float {', '.join(f'{k} x{v}' for k, v in float_ops.items())})" if float_ops else ""))
    else:
        out.update(kernel="fp32", path="float kernels (MLAS sgemm/conv: " + (
            "AVX-512F" if {"avx512f"} <= (cpu_flags() if flags is None else flags) else "FMA3/AVX2") + ")")
    return out


def balanced(paths: list[str], per_class: int) -> list[str]:
    """A fixed, class-balanced subset (the same choice as the int8 calibration: hash order per class)."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        by_class[label_and_split(p)[0]].append(p)
    return [p for _, ps in sorted(by_class.items()) for p in select_calibration(ps, per_class)]


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, *, l2: float = 1e-3, steps: int = 300):
    """Multinomial logistic regression on standardised features, full-batch gradient descent (Nesterov).

    Deterministic and small: the point is the same classifier for every variant, not the best one."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = np.zeros((z.shape[1], classes))
    b = np.zeros(classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(classes)[y]
    lr, momentum = 0.5, 0.9
    for _ in range(steps):
        lw, lb = w + momentum * vw, b + momentum * vb
        logits = z @ lw + lb
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(z)
        vw = momentum * vw - lr * (z.T @ grad + l2 * lw)
        vb = momentum * vb - lr * grad.sum(0)
        w, b = w + vw, b + vb
    return lambda feats: (((feats - mean) / std) @ w + b).argmax(1)


def _features(engine, pixels: np.ndarray, batch: int) -> np.ndarray:
    out = np.empty((len(pixels), 1280), dtype=np.float32)
    for i in range(0, len(pixels), batch):
        out[i:i + batch] = engine.predict(pixels[i:i + batch])
    return out


def interleaved_speed(engines: dict, pools: dict, batch: int, rounds: int) -> dict[str, float]:
    """Images/s of each engine over its pool, after a warm-up, the engines taking turns batch by batch
    (``rounds`` passes): this host's speed drifts by 10-20 % within seconds, and turns of a whole pass
    (~2 s) let that drift land on one engine (int8 / fp32 ratios of 1.5-2.0 from one pass to the next);
    turns of one batch share it (1.61-1.65 in three runs)."""
    seconds = dict.fromkeys(engines, 0.0)
    for name, engine in engines.items():
        engine.predict(pools[name][:batch])
    for _ in range(rounds):
        for i in range(0, max(len(p) for p in pools.values()), batch):
            for name, engine in engines.items():
                chunk = pools[name][i:i + batch]
                if len(chunk):
                    start = time.perf_counter()
                    engine.predict(chunk)
                    seconds[name] += time.perf_counter() - start
    return {name: rounds * len(pools[name]) / seconds[name] for name in engines}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def measure_engines(sample: str | os.PathLike[str], *, variants=VARIANTS, train_per_class: int = 60,
                    batch: int = 64, threads: int | None = None, weights: str = "imagenet",
                    pool: int = 256, rounds: int = 4, say=print) -> dict:
    """The figures of every variant (see the module docstring); ``say`` gets each `key: value` line."""
    root = Path(sample)
    listing = {split: sorted(str(p) for p in (root / split).rglob("*") if p.is_file() and is_image_path(p.name))
               for split in ("Training", "Test")}
    if not listing["Training"] or not listing["Test"]:
        raise SystemExit(f"bench-engines: {root} needs Training/<class>/ and Test/<class>/ photos")
    train_paths, test_paths = balanced(listing["Training"], train_per_class), listing["Test"]
    labels = sorted({label_and_split(p)[0] for p in train_paths})
    index = {name: i for i, name in enumerate(labels)}
    y_train = np.array([index[label_and_split(p)[0]] for p in train_paths])
    y_test = np.array([index.get(label_and_split(p)[0], -1) for p in test_paths])
    paths = train_paths + test_paths
    contents = [Path(p).read_bytes() for p in paths]
    calibration_paths = select_calibration(listing["Training"], root=str(root))  # as `run --engine onnx-int8`
    calibration = Calibration(tuple(calibration_paths), tuple(Path(p).read_bytes() for p in calibration_paths))
    threads = threads or os.cpu_count() or 0

    result: dict = {"cpu": cpu_info(), "threads": threads, "batch_size": batch, "sample": str(root),
                    "train_images": len(train_paths), "test_images": len(test_paths),
                    "calibration_images": len(calibration_paths), "variants": {}}
    say(f"engines.cpu: {result['cpu']['model']} ({', '.join(result['cpu']['flags'])})")
    reference: dict = {}
    engines, pools, rows = {}, {}, {}
    for precision, size in variants:  # fidelity: every photo through every variant
        name = variant_name(precision, size)
        t = time.perf_counter()
        artifact = prepare_model(PRECISIONS[precision], weights, image_size=size, calibration=calibration)
        prepare_s = time.perf_counter() - t
        pixels = preprocess(np.stack([decode_rgb(c, (size, size)) for c in contents]))
        engines[name] = load_engine(artifact.engine, artifact.path, threads)
        kernels = kernel_path(artifact.path, size, threads=threads) if artifact.path.endswith(".onnx") else None
        feats = _features(engines[name], pixels, batch)
        pools[name] = pixels[len(train_paths):len(train_paths) + pool].copy()  # Test photos
        del pixels
        reference.setdefault("features", feats)
        cos = _cosine(feats, reference["features"])
        predict = fit_softmax(feats[:len(train_paths)], y_train, len(labels))
        accuracy = float((predict(feats[len(train_paths):]) == y_test).mean())
        reference.setdefault("accuracy", accuracy)
        rows[name] = {"precision": precision, "image_size": size, "model_file": artifact.file_name,
                      "cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
                      "cosine_p5": round(float(np.percentile(cos, 5)), 5), "test_accuracy": round(accuracy, 5),
                      "accuracy_delta_points": round(100 * (accuracy - reference["accuracy"]), 2),
                      "prepare_s": round(prepare_s, 1), "kernel_path": kernels}
    speed = interleaved_speed(engines, pools, batch, rounds)  # speed: the same pool, taking turns
    first = variant_name(*variants[0])
    result["speed"] = {"pool_images": min(pool, len(test_paths)), "rounds": rounds}
    for name, row in rows.items():
        row["images_per_s"] = round(speed[name], 1)
        row["speedup_vs_fp32_224"] = round(speed[name] / speed[first], 3)
        result["variants"][name] = row
        for key in ("images_per_s", "speedup_vs_fp32_224", "cosine_mean", "cosine_min", "cosine_p5",
                    "test_accuracy", "accuracy_delta_points"):
            say(f"engines.{name}.{key}: {row[key]}")
        if row["kernel_path"]:
            say(f"engines.{name}.kernel_path: {row['kernel_path']['path']}")
    return result


def _main(ns: argparse.Namespace) -> int:
    from fruitlens import console

    console.configure("quiet")
    result = measure_engines(ns.sample, variants=ns.variants, train_per_class=ns.train_per_class,
                             batch=ns.batch_size, threads=ns.threads, weights=ns.weights, pool=ns.pool,
                             rounds=ns.rounds)
    if ns.json:
        Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"engines.json: {ns.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench-engines", help="speed and fidelity of the opt-in engines (int8, --image-size)")
    p.add_argument("sample", help="folder with Training/<class>/ and Test/<class>/ photos "
                   "(e.g. ../shared/data/fruits-360-sample)")
    p.add_argument("--variants", type=parse_variants, default=list(VARIANTS),
                   help="comma-separated PRECISION-SIZE, e.g. int8-224,fp32-160 (fp32-224, the reference, "
                        "always runs first; default: " + ",".join(variant_name(*v) for v in VARIANTS) + ")")
    p.add_argument("--train-per-class", type=int, default=60, help="Training photos per class the "
                   "classifier is fitted on (default 60); it is scored on every Test photo")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, help="engine threads (default: all cores, as `fruitlens bench`)")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--pool", type=int, default=256, help="Test photos each engine is timed on (default 256)")
    p.add_argument("--rounds", type=int, default=4, help="timed passes per engine, taking turns (default 4)")
    p.add_argument("--json", help="write the figures here as JSON")
    p.set_defaults(func=_main)
