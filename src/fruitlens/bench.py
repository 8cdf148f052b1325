"""`fruitlens bench`: the model's ceiling, the whole pipeline, and their ratio — in one run, same images.

1. ceiling: the chosen engine alone, one process, all cores, preprocessed batches in memory;
   TensorFlow/Keras alone the same way, for the engine's speed-up;
2. pipeline: `fruitlens run` as a user runs it (a separate process, Spark local[*]), with the per-stage
   split from its manifest and the peak RSS of the driver (JVM + Python) and of the Python workers;
3. optionally the common public approach (bench/baseline_job.py) on the same images.
Prints `key: value` lines and writes the same figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fruitlens.engine import load_engine, prepare_model
from fruitlens.images import decode_rgb, is_image_path, preprocess


def sample_paths(root: Path, limit: int | None) -> list[Path]:
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p.name))
    return paths[:limit] if limit else paths


def engine_throughput(engine: str, model_path: str, pool: np.ndarray, images: int, batch: int) -> float:
    """Images/s of ``engine.predict`` alone over ``images`` images (cycling through ``pool``)."""
    model = load_engine(engine, model_path, threads=os.cpu_count() or 0)
    model.predict(pool[:batch])  # warm-up: first-call allocations are not throughput
    done, start = 0, time.perf_counter()
    while done < images:
        i = done % len(pool)
        chunk = pool[i:i + batch]
        model.predict(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - start)


class RssSampler:
    """Peak resident memory of a process tree, split into the JVM+driver and the Python workers."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.peak = {"driver_mb": 0.0, "workers_mb": 0.0, "total_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            driver = workers = 0
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:  # processes come and go (Python workers); count those still there
                    rss = proc.memory_info().rss
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                    workers += rss
                else:
                    driver += rss
            for key, value in (("driver_mb", driver), ("workers_mb", workers), ("total_mb", driver + workers)):
                self.peak[key] = max(self.peak[key], value / 2**20)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with RssSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, sampler.peak


def bench(args: argparse.Namespace) -> dict:
    root = Path(args.input)
    paths = sample_paths(root, args.limit)
    if not paths:
        raise SystemExit(f"bench: no images under {root}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fruitlens-bench-"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": cpu_model()},
        "images": len(paths),
        "input": str(root),
    }

    # The same images for every measurement: the first `pool_size` decoded once for the ceilings.
    pool = preprocess(np.stack([decode_rgb(p.read_bytes()) for p in paths[: args.pool]]))
    artifact = prepare_model(args.engine, "imagenet")
    results["engine"] = artifact.engine
    ceiling = engine_throughput(artifact.engine, artifact.path, pool, min(len(paths), args.ceiling_images),
                                args.batch_size)
    results["model_ceiling_images_per_s"] = round(ceiling, 2)
    _say("model_ceiling_images_per_s", ceiling)
    if not args.skip_keras:
        keras_artifact = prepare_model("keras", "imagenet")
        tf_rate = engine_throughput("keras", keras_artifact.path, pool, min(len(paths), args.keras_images),
                                    args.batch_size)
        results["tensorflow_images_per_s"] = round(tf_rate, 2)
        results["engine_vs_tensorflow"] = round(ceiling / tf_rate, 2)
        _say("tensorflow_images_per_s", tf_rate)
        _say("engine_vs_tensorflow", ceiling / tf_rate)
    del pool

    out = workdir / "pipeline-out"
    cmd = [sys.executable, "-m", "fruitlens", "run", str(root), str(out), "--overwrite", "--no-progress",
           "--engine", artifact.engine, "--batch-size", str(args.batch_size), "--pca-k", str(args.pca_k)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    wall, peak = run_process(cmd)
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["timings_s"]
    slots = manifest["spark"]["task_slots"]
    matched = manifest["counts"]["matched"]
    job_s = t["total"] - t["setup"]  # from the first read to the manifest: the pipeline's own work
    ws = manifest["worker_seconds"]
    decode_wall, infer_wall = ws["decode_resize_s"] / slots, ws["inference_s"] / slots
    pipeline = {
        "images": matched,
        "pipeline_images_per_s": round(matched / job_s, 2),
        "process_images_per_s": round(matched / wall, 2),
        "process_wall_s": round(wall, 2),
        "stages_s": {
            "startup_and_setup": round(wall - job_s, 2),
            "decode_resize": round(decode_wall, 2),
            "inference": round(infer_wall, 2),
            "read_write_and_overhead": round(t["extract"] - decode_wall - infer_wall, 2),
            "pca": t.get("pca"),
        },
        "peak_rss_mb": {k: round(v) for k, v in peak.items()},
        "pca_k": manifest["pca"]["k"],
        "pca_variance_kept": round(manifest["pca"]["variance_kept"], 4),
        "task_slots": slots,
    }
    results["pipeline"] = pipeline
    results["pipeline_vs_model_ratio"] = round(pipeline["pipeline_images_per_s"] / ceiling, 3)
    for key in ("pipeline_images_per_s", "process_images_per_s", "process_wall_s"):
        _say(key, pipeline[key])
    _say("pipeline_vs_model_ratio", results["pipeline_vs_model_ratio"])
    for key, value in pipeline["stages_s"].items():
        _say(f"stage_{key}_s", value)
    for key, value in pipeline["peak_rss_mb"].items():
        _say(f"peak_rss_{key}", value)
    _say("pca_variance_kept", pipeline["pca_variance_kept"])

    if args.baseline:
        script = Path(__file__).resolve().parents[2] / "bench" / "baseline_job.py"
        base_out = workdir / "baseline-out"
        shutil.rmtree(base_out, ignore_errors=True)
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        bwall, bpeak = run_process([sys.executable, str(script), str(root), str(base_out), str(args.pca_k)]
                                   + ([str(args.limit)] if args.limit else []), env=env)
        base = json.loads((base_out / "baseline.json").read_text())
        results["baseline"] = {"process_images_per_s": round(base["images"] / bwall, 2),
                               "process_wall_s": round(bwall, 2), "peak_rss_mb": {k: round(v) for k, v in bpeak.items()},
                               **base}
        results["speedup_vs_baseline"] = round(pipeline["process_images_per_s"] / results["baseline"]["process_images_per_s"], 2)
        _say("baseline_process_images_per_s", results["baseline"]["process_images_per_s"])
        _say("speedup_vs_baseline", results["speedup_vs_baseline"])

    report = Path(args.json or workdir / "bench.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(results, indent=2) + "\n")
    _say("json", report)
    return results


def _say(key: str, value) -> None:
    print(f"{key}: {round(value, 3) if isinstance(value, float) else value}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure the model ceiling vs the whole pipeline on the same images")
    p.add_argument("input", help="local folder of images (e.g. ../shared/data/fruits-360-sample/Test)")
    p.add_argument("--limit", type=int, help="use the first N images (sorted by path)")
    p.add_argument("--engine", default="auto", choices=("auto", "onnx", "keras"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pca-k", type=int, default=50)
    p.add_argument("--pool", type=int, default=256, help="distinct preprocessed images for the ceilings")
    p.add_argument("--ceiling-images", type=int, default=2048, help="images timed for the engine ceiling")
    p.add_argument("--keras-images", type=int, default=256, help="images timed for TensorFlow's throughput")
    p.add_argument("--skip-keras", action="store_true")
    p.add_argument("--baseline", action="store_true", help="also time the common public approach")
    p.add_argument("--workdir", help="where outputs go (default: a temp folder)")
    p.add_argument("--json", help="write the figures here (default: WORKDIR/bench.json)")
    p.set_defaults(func=lambda ns: bool(bench(ns)) and 0)
