"""Resume and grow, measured (`make bench-resume`): the three figures of docs/resume.md, from one run.

On the sample copied twice (13,074 photos; two top folders, so every path is distinct):
1. a clean `fruitlens run` (the reference time and output);
2. the same run into a new OUTPUT, SIGKILLed (whole process group) at half the clean time, then the
   same command again: its time over the clean time, and its output against the clean one;
3. 300 more photos (copies of Training photos under new names), the same command again;
4. a second run started while a first one runs on the same OUTPUT (must be refused).

Prints ``key: value`` lines, then one JSON object (also written to --json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from fruitlens.bench import cpu_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("FRUITLENS_SHARED", REPO.parent / "shared")) / "data" / "fruits-360-sample"


def build_input(root: Path) -> int:
    for copy in ("copy-a", "copy-b"):
        shutil.copytree(SAMPLE, root / copy)
    return sum(1 for _ in root.rglob("*.jpg"))


def add_photos(root: Path, n: int) -> None:
    photos = sorted((SAMPLE / "Training").rglob("*.jpg"))[:n]
    for i, photo in enumerate(photos):
        dst = root / "added" / "Training" / photo.parent.name / f"added_{i}_{photo.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, dst)


def start(input_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fruitlens", "run", str(input_dir), str(out), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def timed_run(input_dir: Path, out: Path, *extra: str) -> tuple[float, dict]:
    t = time.perf_counter()
    proc = start(input_dir, out, *extra)
    _, err = proc.communicate()
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, json.loads((out / "manifest.json").read_text())


def features(out: Path) -> dict[str, list[float]]:
    table = ds.dataset(str(out / "features"), format="parquet").to_table(columns=["path", "features"])
    paths = table.column("path").to_pylist()
    if len(set(paths)) != len(paths):
        raise SystemExit(f"{out}: duplicate paths in features")
    return dict(zip(paths, table.column("features").to_pylist(), strict=True))


def compare(a: Path, b: Path) -> dict:
    fa, fb = features(a), features(b)
    same = set(fa) == set(fb)
    diff = float(np.abs(np.array([fa[p] for p in sorted(fa)]) - np.array([fb[p] for p in sorted(fa)])).max()) \
        if same else None
    return {"same_paths": same, "duplicates": 0, "max_abs_diff": diff, "rows": len(fa)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the input and outputs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="kill the second run at this fraction of the clean time")
    parser.add_argument("--add", type=int, default=300, help="photos added before the grow run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fruitlens-resume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "input"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(work / "clean", ignore_errors=True)
    shutil.rmtree(work / "resumed", ignore_errors=True)
    images = build_input(root)
    r: dict = {"machine": {"cpus": os.cpu_count(), "processor": cpu_model(), "platform": platform.platform()},
               "images": images}

    clean_s, clean = timed_run(root, work / "clean")
    r["clean"] = {"seconds": round(clean_s, 1), "counts": clean["counts"], "timings_s": clean["timings_s"]}

    kill_after = args.kill_at * clean_s
    proc = start(root, work / "resumed")
    time.sleep(kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = ds.dataset(str(work / "resumed" / "features"), format="parquet").count_rows()
    resumed_s, resumed = timed_run(root, work / "resumed")
    r["killed_then_rerun"] = {
        "killed_after_s": round(kill_after, 1), "rows_committed_when_killed": committed,
        "rerun_seconds": round(resumed_s, 1), "rerun_vs_clean": round(resumed_s / clean_s, 3),
        "counts": resumed["counts"], "timings_s": resumed["timings_s"],
        "vs_clean_output": compare(work / "resumed", work / "clean")}

    add_photos(root, args.add)
    grow_s, grown = timed_run(root, work / "resumed")
    r["grow"] = {"added": args.add, "seconds": round(grow_s, 1), "vs_clean": round(grow_s / clean_s, 3),
                 "counts": grown["counts"], "timings_s": grown["timings_s"]}

    first = start(root, work / "resumed")
    lock = work / "resumed" / "_fruitlens" / "lock.json"
    while not lock.exists() and first.poll() is None:
        time.sleep(0.1)
    second = start(root, work / "resumed")
    _, err = second.communicate()
    _, first_err = first.communicate()
    r["concurrent"] = {"second_exit_code": second.returncode, "load_average": os.getloadavg(),
                       "second_refused": second.returncode == 1 and "in use by another fruitlens run" in err,
                       "second_message": err.strip().splitlines()[-1] if err.strip() else "",
                       "first_exit_code": first.returncode}

    k, g = r["killed_then_rerun"], r["grow"]
    r["done_when"] = {
        "rerun_after_kill_le_0.75": k["rerun_vs_clean"] <= 0.75 and k["vs_clean_output"]["same_paths"]
        and (k["vs_clean_output"]["max_abs_diff"] or 0) <= 1e-4,
        "grow_new_300_reused_all_le_0.5": g["counts"]["new"] == args.add and g["counts"]["reused"] == images
        and g["vs_clean"] <= 0.5,
        "concurrent_refused": r["concurrent"]["second_refused"] and first.returncode == 0,
    }
    for key, value in (("images", images), ("clean_s", r["clean"]["seconds"]),
                       ("killed_after_s", k["killed_after_s"]),
                       ("rows_committed_when_killed", k["rows_committed_when_killed"]),
                       ("rerun_after_kill_s", k["rerun_seconds"]), ("rerun_vs_clean", k["rerun_vs_clean"]),
                       ("rerun_same_paths", k["vs_clean_output"]["same_paths"]),
                       ("rerun_max_abs_diff", k["vs_clean_output"]["max_abs_diff"]),
                       ("grow_new", g["counts"]["new"]), ("grow_reused", g["counts"]["reused"]),
                       ("grow_s", g["seconds"]), ("grow_vs_clean", g["vs_clean"]),
                       ("concurrent_second_refused", r["concurrent"]["second_refused"]),
                       *r["done_when"].items()):
        print(f"{key}: {value}")
    text = json.dumps(r, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["done_when"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
