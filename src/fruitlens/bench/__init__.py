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
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fruitlens.cost import EMR_ON_EKS_GB_HOUR, EMR_ON_EKS_VCPU_HOUR
from fruitlens.engines import NAMES, RunInputs, load_engine, prepare_model
from fruitlens.errors import FruitlensError
from fruitlens.images import decode_rgb, is_image_path, preprocess
from fruitlens.state.layout import MANIFEST
from fruitlens.storage.store import Store


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


class ProcessFailed(SystemExit):
    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr
        # -9: the kernel's OOM killer, the usual reason here (or someone's kill -9)
        self.reason = "killed by SIGKILL (out of memory?)" if returncode in (-9, 137) else f"exit {returncode}"
        super().__init__(f"bench: {' '.join(cmd)} failed ({self.reason}):\n{stderr[-3000:]}")


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with RssSampler(proc.pid) as sampler:
        _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise ProcessFailed(cmd, proc.returncode, err)
    return wall, sampler.peak


def decode_throughput(contents: list[bytes], seconds: float = 3.0) -> float:
    """Images/s of one core doing what a worker does per photo before inference: decode, RGB, bicubic
    resize, scale (``preprocess``), over ``contents`` (file bytes already in memory) for ≥ ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(contents):
        preprocess(decode_rgb(contents[done % len(contents)])[None])
        done += 1
    return done / (time.perf_counter() - start)


def ceilings(paths: list[Path], args: argparse.Namespace) -> dict:
    """What no pipeline can beat on this machine: the engine alone, decoding alone, and both together."""
    cores = os.cpu_count() or 1
    contents = [p.read_bytes() for p in paths[: args.pool]]
    pool = preprocess(np.stack([decode_rgb(c) for c in contents]))
    # An engine that calibrates (int8) does so on these photos, as `run` does on INPUT's.
    source = Store(f"file://{os.path.commonpath([str(p) for p in paths])}")
    artifact = prepare_model(args.engine, "imagenet", run=RunInputs(paths=tuple(f"file:{p}" for p in paths),
                                                                    source=source))
    engine = engine_throughput(artifact.engine, artifact.path, pool, args.ceiling_images, args.batch_size)
    decode = decode_throughput(contents)
    # Decoding and inference share the same cores: per image, 1/engine + 1/(cores·decode) seconds of the machine.
    work = 1.0 / (1.0 / engine + 1.0 / (cores * decode))
    out = {"engine": artifact.engine, "engine_images_per_s": round(engine, 2),
           "decode_images_per_s_per_core": round(decode, 2), "work_ceiling_images_per_s": round(work, 2)}
    _say("model_ceiling_images_per_s", engine)
    _say("decode_images_per_s_per_core", decode)
    _say("work_ceiling_images_per_s", work)
    if not args.skip_keras:
        keras_artifact = prepare_model("keras", "imagenet")
        tf_rate = engine_throughput("keras", keras_artifact.path, pool, args.keras_images, args.batch_size)
        out["tensorflow_images_per_s"] = round(tf_rate, 2)
        out["engine_vs_tensorflow"] = round(engine / tf_rate, 2)
        _say("tensorflow_images_per_s", tf_rate)
        _say("engine_vs_tensorflow", engine / tf_rate)
    return out


def ceilings_apart(paths: list[Path], args: argparse.Namespace) -> dict:
    """:func:`ceilings` in a child process: TensorFlow and the engines' arenas (GBs) leave with it, before
    the pipeline and the reference approach run (the latter peaks at ~20 GB on ~20k photos)."""
    plain = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(ceilings, paths, plain).result()


def pipeline_run(root: Path, workdir: Path, args: argparse.Namespace, engine: str) -> dict:
    """`fruitlens run` on ``root`` as a user runs it, as a separate process; figures from its manifest."""
    out = workdir / f"pipeline-{root.name}"
    cmd = [sys.executable, "-m", "fruitlens", "run", str(root), str(out), "--overwrite", "--no-progress",
           "--engine", engine, "--batch-size", str(args.batch_size), "--pca-k", str(args.pca_k)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    wall, peak = run_process(cmd)
    manifest = json.loads((out / MANIFEST).read_text())
    t = manifest["timings_s"]
    slots = manifest["spark"]["task_slots"]
    matched = manifest["counts"]["matched"]
    job_s = t["total"] - t["setup"]  # from the first read to the manifest: the pipeline's own work
    ws = manifest["worker_seconds"]
    decode_wall, infer_wall = ws["decode_resize_s"] / slots, ws["inference_s"] / slots
    shutil.rmtree(out, ignore_errors=True)  # 90k runs: features would fill the disk across sizes
    return {
        "images": matched,
        "process_wall_s": round(wall, 2),
        "process_images_per_s": round(matched / wall, 2),
        "pipeline_images_per_s": round(matched / job_s, 2),
        "extract_images_per_s": round(matched / t["extract"], 2),
        "stages_s": {
            "startup_and_setup": round(wall - job_s, 2),
            "extract": t["extract"],
            "extract_decode_resize": round(decode_wall, 2),
            "extract_inference": round(infer_wall, 2),
            "extract_other": round(t["extract"] - decode_wall - infer_wall, 2),
            "pca": t.get("pca"),
            "manifest_and_rest": round(job_s - t["extract"] - (t.get("pca") or 0), 2),
        },
        "peak_rss_mb": {k: round(v) for k, v in peak.items()},
        "pca_k": manifest["pca"]["k"],
        "pca_variance_kept": round(manifest["pca"]["variance_kept"], 4),
        "task_slots": slots,
    }


def baseline_script() -> Path:
    """``$FRUITLENS_BASELINE_JOB``, else bench/baseline_job.py under the working directory (a checkout's
    root, where `make bench` runs): the reference is not part of the package."""
    script = Path(os.environ.get("FRUITLENS_BASELINE_JOB") or Path("bench") / "baseline_job.py")
    if not script.is_file():
        raise FruitlensError(f"the baseline job {script} is not there: run from a checkout's root (make bench) "
                             "or set FRUITLENS_BASELINE_JOB")
    return script.resolve()


def baseline_run(root: Path, workdir: Path, args: argparse.Namespace) -> dict:
    script = baseline_script()
    out = workdir / f"baseline-{root.name}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    try:
        wall, peak = run_process([sys.executable, str(script), str(root), str(out), str(args.pca_k)]
                                 + ([str(args.limit)] if args.limit else []), env=env)
    except ProcessFailed as exc:  # the reference failing (it can run out of memory) must not lose the bench
        shutil.rmtree(out, ignore_errors=True)
        last = next((line for line in reversed(exc.stderr.splitlines()) if line.strip()), "")
        return {"failed": f"{exc.reason}; last stderr line: {last[:300]}"}
    base = json.loads((out / "baseline.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"process_images_per_s": round(base["images"] / wall, 2), "process_wall_s": round(wall, 2),
            "peak_rss_mb": {k: round(v) for k, v in peak.items()}, **base}


#: On-demand Linux prices, us-east-1, USD (AWS price pages, read 2026-11; they change: check before use).
#: EMR on EKS bills the vCPU and memory a pod requests, from its image pull until it ends, on top of EC2
#: (its rates: fruitlens.cost, the same the manifest's cost estimate uses).
EC2_ON_DEMAND = {  # instance: (USD per hour, vCPUs, GiB, CPU)
    "c6a.xlarge": (0.153, 4, 8, "AMD EPYC Zen 3, AVX2 (this machine's kind)"),
    "c7a.xlarge": (0.20532, 4, 8, "AMD EPYC Zen 4, AVX-512 VNNI/BF16"),
    "c7i.xlarge": (0.1785, 4, 8, "Intel Sapphire Rapids, AVX-512 VNNI, AMX"),
    "m7i.xlarge": (0.2016, 4, 16, "Intel Sapphire Rapids, AVX-512 VNNI, AMX"),
}


def emr_cost_per_100k(images_per_s_per_vcpu: float) -> dict[str, dict]:
    """USD per 100,000 images of feature extraction on EMR on EKS, executors filling whole nodes, at the
    per-vCPU rate measured here (the fixed cost of a job, its driver pod and image pulls, comes on top)."""
    out = {}
    for name, (price, vcpus, gib, cpu) in EC2_ON_DEMAND.items():
        node_hours = 100_000 / (images_per_s_per_vcpu * vcpus) / 3600
        hourly = price + vcpus * EMR_ON_EKS_VCPU_HOUR + gib * EMR_ON_EKS_GB_HOUR
        out[name] = {"usd": round(node_hours * hourly, 4), "node_hours": round(node_hours, 4), "cpu": cpu}
    return out


def bench(args: argparse.Namespace) -> dict:
    roots = [Path(i) for i in args.input]
    sets = {root: sample_paths(root, args.limit) for root in roots}
    for root, paths in sets.items():
        if not paths:
            raise SystemExit(f"bench: no images under {root}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fruitlens-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "inputs": [str(r) for r in roots]}
    for key in ("processor", "cpu_flags", "cpus"):
        _say(key, results["machine"][key] if key != "cpu_flags" else " ".join(results["machine"][key]))

    # The same photos for every ceiling: the first input's first `pool` photos.
    results["ceilings"] = ceil = ceilings_apart(sets[roots[0]], args)
    if args.variants:  # the opt-in engines: speed (taking turns on one pool) and fidelity vs fp32 224
        # In a child process: its pools and six engines (GBs) are then returned to the OS before the
        # pipeline runs and the reference approach, which needs all the memory it can get.
        engines_json = workdir / "engines.json"
        subprocess.run([sys.executable, "-m", "fruitlens", "bench-engines", str(args.variants), "--batch-size",
                        str(args.batch_size), "--json", str(engines_json)], check=True)
        results["engines"] = json.loads(engines_json.read_text())

    results["runs"] = []
    quick = argparse.Namespace(**{**vars(args), "skip_keras": True})
    latest = None if args.variants else ceil  # ceilings measured with nothing run since
    for root in roots:
        _say("input", f"{root} ({len(sets[root])} images)")
        # The host's speed drifts over minutes (shared machine): the ratios use the ceilings measured right
        # before and right after this run (on the same photos as the first ones), averaged.
        before = latest or ceilings_apart(sets[roots[0]], quick)
        run = pipeline_run(root, workdir, args, ceil["engine"])
        after = latest = ceilings_apart(sets[roots[0]], quick)
        run["input"] = str(root)
        run["ceilings"] = {"before": before, "after": after}
        near = {key: round((before[key] + after[key]) / 2, 2) for key in
                ("engine_images_per_s", "decode_images_per_s_per_core", "work_ceiling_images_per_s")}
        run["ceilings"]["mean"] = near
        n = run["images"]
        run["extract_vs_work_ceiling"] = round(run["extract_images_per_s"] / near["work_ceiling_images_per_s"], 3)
        best = max(before["work_ceiling_images_per_s"], after["work_ceiling_images_per_s"])
        run["extract_vs_best_work_ceiling"] = round(run["extract_images_per_s"] / best, 3)
        run["pipeline_vs_model_ratio"] = round(run["pipeline_images_per_s"] / near["engine_images_per_s"], 3)
        for key in ("process_images_per_s", "process_wall_s", "extract_images_per_s", "extract_vs_work_ceiling",
                    "extract_vs_best_work_ceiling", "pipeline_vs_model_ratio"):
            _say(f"{key}_{n}", run[key])
        for key, value in run["stages_s"].items():
            _say(f"stage_{key}_s_{n}", value)
        for key, value in run["peak_rss_mb"].items():
            _say(f"peak_rss_{key}_{n}", value)
        if args.baseline:
            run["baseline"] = baseline_run(root, workdir, args)
            if "failed" in run["baseline"]:
                _say(f"baseline_failed_{n}", run["baseline"]["failed"])
            else:
                run["speedup_vs_baseline"] = round(
                    run["process_images_per_s"] / run["baseline"]["process_images_per_s"], 2)
                _say(f"baseline_process_images_per_s_{n}", run["baseline"]["process_images_per_s"])
                _say(f"speedup_vs_baseline_{n}", run["speedup_vs_baseline"])
            latest = None  # the reference ran since: the next run's "before" is measured again
        results["runs"].append(run)
    # Cost at scale, from the steady state of the largest run (its extract stage, per task slot = vCPU).
    largest = max(results["runs"], key=lambda r: r["images"])
    per_vcpu = largest["extract_images_per_s"] / largest["task_slots"]
    results["emr_on_eks_cost_per_100k_images"] = {"images_per_s_per_vcpu": round(per_vcpu, 2),
                                                  **emr_cost_per_100k(per_vcpu)}
    for name, cost in emr_cost_per_100k(per_vcpu).items():
        _say(f"emr_on_eks_usd_per_100k_images_{name.replace('.', '_')}", cost["usd"])
    # Memory must not grow with the number of images: each run's peak vs the previous (smaller) one.
    by_size = sorted(results["runs"], key=lambda r: r["images"])
    for small, big in zip(by_size, by_size[1:]):
        ratio = round(big["peak_rss_mb"]["total_mb"] / max(small["peak_rss_mb"]["total_mb"], 1), 3)
        results.setdefault("peak_rss_growth", {})[f"{big['images']}_vs_{small['images']}"] = ratio
        _say(f"peak_rss_total_ratio_{big['images']}_vs_{small['images']}", ratio)

    report = Path(args.json or workdir / "bench.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(results, indent=2) + "\n")
    _say("json", report)
    return results


def _say(key: str, value) -> None:
    print(f"{key}: {round(value, 3) if isinstance(value, float) else value}", flush=True)


def cpu_flags() -> list[str]:
    """The SIMD flags that decide inference speed (AVX2/FMA, AVX-512 and its VNNI/BF16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "avx_vnni", "amx")))
    except OSError:
        pass
    return []


def machine() -> dict:
    import psutil

    return {"processor": cpu_model(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure the ceilings (engine, decode) vs the whole pipeline on the same images")
    p.add_argument("input", nargs="+", help="local folders of images, each run in turn (e.g. "
                   "../shared/data/fruits-360-sample/Test); the ceilings use the first")
    p.add_argument("--limit", type=int, help="use the first N images (sorted by path)")
    p.add_argument("--engine", default="auto", choices=NAMES, help="the engine timed (int8: calibrated on the "
                   "first input's photos, as `run` does)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pca-k", type=int, default=50)
    p.add_argument("--pool", type=int, default=256, help="distinct preprocessed images for the ceilings")
    p.add_argument("--ceiling-images", type=int, default=2048, help="images timed for the engine ceiling")
    p.add_argument("--keras-images", type=int, default=256, help="images timed for TensorFlow's throughput")
    p.add_argument("--skip-keras", action="store_true")
    p.add_argument("--baseline", action="store_true", help="also time the common public approach on each input")
    p.add_argument("--variants", metavar="SAMPLE", help="also the opt-in engines (int8, smaller inputs): speed and "
                   "fidelity on SAMPLE's Training/ and Test/ photos, as `fruitlens bench-engines SAMPLE`")
    p.add_argument("--workdir", help="where outputs go (default: a temp folder)")
    p.add_argument("--json", help="write the figures here (default: WORKDIR/bench.json)")
    p.set_defaults(func=lambda ns: bool(bench(ns)) and 0)
