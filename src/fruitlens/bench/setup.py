"""`make bench-setup`: how much of a clean small run is setup (JVM and SparkSession start, listing, model,
planning, worker warm-up), and its parts, with the CPU, as JSON.

Each round runs ``fruitlens run INPUT OUTPUT --overwrite --no-progress`` on the same 300 Training photos of the
sample (every n-th, all classes) in a fresh process, and reads the wall time from outside (process start to
exit: imports and JVM shutdown included), the manifest's ``timings_s`` and its ``setup_s`` parts. With
``--baseline-src`` (the ``src`` folder of another checkout) and/or ``--spark-workers`` (this code with the
features made by Spark's Python workers) the rounds alternate between the variants, in turn order reversed
every round, so that all meet the same machine (a shared host drifts from minute to minute).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fruitlens.bench.engines import cpu_info

#: The shared assets, as the Makefile finds them (run from the project's folder).
SHARED = Path(os.environ.get("FRUITLENS_SHARED", "../shared"))


def make_input(root: Path, photos: int) -> Path:
    """``photos`` Training photos of the sample spread over its classes, copied once into ``root``."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == photos:
        return root
    shutil.rmtree(root, ignore_errors=True)
    every = sorted((SHARED / "data" / "fruits-360-sample" / "Training").rglob("*.jpg"))
    step = max(1, len(every) // photos)
    for photo in every[::step][:photos]:
        dst = root / "Training" / photo.parent.name / photo.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, dst)
    return root


def one_run(src: Path, input_dir: Path, out: Path, extra: list[str], env: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    t = time.perf_counter()
    cpu0 = os.times()
    proc = subprocess.run([sys.executable, "-m", "fruitlens", "run", str(input_dir), str(out), "--overwrite",
                           "--no-progress", *extra], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    cpu1 = os.times()
    if proc.returncode:
        raise SystemExit(f"bench-setup: the run failed ({src}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["timings_s"]
    return {"wall_s": round(wall, 2), "timings_s": timings, "setup_s": manifest.get("setup_s"),
            "setup_share_of_wall": round(timings["setup"] / wall, 3),
            "setup_share_of_total": round(timings["setup"] / timings["total"], 3),
            "cpu_s": round((cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system), 1),
            "load_average": os.getloadavg()}


def summary(runs: list[dict]) -> dict:
    med = statistics.median
    return {"runs": len(runs), "wall_s": med(r["wall_s"] for r in runs),
            "setup_s": med(r["timings_s"]["setup"] for r in runs),
            "total_s": med(r["timings_s"]["total"] for r in runs),
            "setup_share_of_wall": med(r["setup_share_of_wall"] for r in runs),
            "setup_share_of_total": med(r["setup_share_of_total"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fruitlens.bench.setup", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-src", type=Path, help="the src/ of the code to compare with (e.g. a git "
                    "worktree of main); rounds alternate")
    ap.add_argument("--spark-workers", action="store_true", help="also this code with driver_max_images 0 "
                    "(the features made by Spark's Python workers, as before)")
    ap.add_argument("--src", type=Path, default=Path("src"), help="the src/ of this code (default: ./src)")
    ap.add_argument("--workdir", type=Path, default=Path(".bench/setup"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("args", nargs="*", help="more `fruitlens run` options")
    args = ap.parse_args(argv)
    here = args.src.resolve()
    input_dir = make_input(args.workdir / f"in{args.photos}", args.photos)
    variants = {"this": (here, {})}
    if args.spark_workers:
        variants["this-spark-workers"] = (here, {"FRUITLENS_DRIVER_MAX_IMAGES": "0"})
    if args.baseline_src:
        variants["baseline"] = (args.baseline_src.resolve(), {})
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    one_run(here, input_dir, args.workdir / "out-warm", args.args)  # the ONNX export and the OS caches, once
    for i in range(args.rounds):
        for name, (src, env) in (variants.items() if i % 2 == 0 else reversed(variants.items())):
            row = one_run(src, input_dir, args.workdir / f"out-{name}", args.args, env)
            runs[name].append(row)
            print(f"{name} round {i + 1}: wall {row['wall_s']} s, setup {row['timings_s']['setup']} s "
                  f"({row['setup_share_of_wall']:.0%} of the wall), parts {row['setup_s']}", flush=True)
    result = {"cpu": cpu_info(), "photos": args.photos, "input": str(input_dir),
              "summary": {k: summary(v) for k, v in runs.items()}, "runs": runs}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
