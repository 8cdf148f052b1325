"""`make bench-grow`: what a daily grow run costs as OUTPUT grows (issue 24's table), and that it equals a clean run.

Phases (one list, :data:`PHASES`), then ``planning``: `make bench-plan`'s measurements (10M synthetic photos listed
and planned, a 200k-object S3 listing sequential against parallel) in the same sitting:

- ``clean-300``: 300 photos, a clean run;
- ``grow-300-on-13k`` / ``grow-300-on-91k``: 300 photos added to an OUTPUT with the rest of a scale-set level
  (``make scale-set``: x2 = 13,074 photos, x14 = 91,518) committed, and finished by a previous run (so its
  PCA records exist, as after any daily run). Each is timed as a `fruitlens run` process: wall, and the run's
  own setup / extract / PCA split. Then ``--pca-exact`` on the same OUTPUT gives the clean PCA, compared
  with the grow's (the same rows and features, the basis within 1e-6 relative if the grow refitted, else the
  grow's recorded variance loss: the documented approximation).

The committed rows of a level are made without inference (``--real`` featurizes them instead: ~15 minutes at
91k on 2 cores): a real run featurizes the first 256 photos (it also records OUTPUT's settings), and every other
photo gets one of those vectors or of the clean phase's 300 (photos of every class) with a per-row,
per-feature random scaling of ±10 %, committed in 256-row files named as the workers name theirs, with the
photo's listed size and time. The grow run cannot tell: it reuses them as any committed rows, and only its
300 new photos are featurized for real. What a grow costs depends on the number of committed rows and
files, not on their values.

usage: grow_bench.py SCALE_DIR [--work DIR] [--json FILE] [--phases NAME ...] [--real]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROW = 300
LOAD: list[float] = []  # the 1-minute load average after each fruitlens process


@dataclass(frozen=True)
class Phase:
    name: str
    level: str | None  # the scale-set level committed before the grow (None: a clean run of GROW photos)


PHASES = [Phase("clean-300", None), Phase("grow-300-on-13k", "x2"), Phase("grow-300-on-91k", "x14")]


def fruitlens(*args: str) -> tuple[float, dict]:
    """`python -m fruitlens ARGS`: (wall seconds of the whole process, the manifest)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fruitlens", *args, "--no-progress", "-q"], capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    LOAD.append(os.getloadavg()[0])  # other processes on the machine skew every figure: recorded beside them
    if done.returncode:
        raise SystemExit(f"bench-grow: fruitlens {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((Path(args[2]) / "manifest.json").read_text())


def photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())


def hold_out(src: Path, dst: Path, n: int) -> list[tuple[Path, Path]]:
    """Move ``n`` photos (seeded choice) from ``src`` to ``dst``; returns (where it was, where it is)."""
    chosen = random.Random(24).sample(photos(src), n)
    moved = []
    for p in chosen:
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, target)
        moved.append((p, target))
    return moved


def fabricate(src: Path, out: Path, pools: list[Path]) -> int:
    """Commit a row for every photo of ``src`` OUTPUT lacks, from the real rows it and ``pools`` (other OUTPUTs'
    features folders, e.g. the clean phase's photos drawn from every class) hold (module docstring)."""
    import pyarrow.dataset as ds

    from fruitlens.images import label_and_split
    from fruitlens.pipeline import list_input
    from fruitlens.state import layout
    from fruitlens.state.ledger import batch_name
    from fruitlens.state.schema import features_table
    from fruitlens.storage.store import Store

    real = ds.dataset(str(out / "features"), format="parquet").to_table()
    done = set(real.column("path").to_pylist())
    tables = [real] + [ds.dataset(str(p), format="parquet").to_table() for p in pools if p.is_dir()]
    pool = np.vstack([np.stack(t.column("features").to_numpy(zero_copy_only=False)) for t in tables]).astype(np.float32)
    store = Store(str(out))
    listed = list_input(Store(str(src)), None).to_pylist()  # rows: path, size, modified_us, problem
    todo = [f for f in listed if f["path"] not in done]
    rng = np.random.default_rng(24)
    for start in range(0, len(todo), 256):
        part = todo[start:start + 256]
        rows = [(f["path"], f["size"], f["modified_us"]) for f in part]
        x = pool[rng.integers(0, len(pool), len(part))] * rng.uniform(0.9, 1.1, (len(part), pool.shape[1]))
        labels, splits = zip(*(label_and_split(f["path"]) for f in part), strict=True)
        store.write_table(layout.batch_file(layout.FEATURES, batch_name(rows)), features_table(
            [f["path"] for f in part], list(labels), list(splits), [f["size"] for f in part],
            [f["modified_us"] for f in part], x.astype(np.float32)))
    return len(todo)


def basis(out: Path) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO((out / "_fruitlens" / "pca-basis.npz").read_bytes())) as z:
        return {k: z[k] for k in ("mean", "scale", "components")}


def split_of(manifest: dict, wall: float) -> dict:
    t = manifest["timings_s"]
    pca = manifest.get("pca") or {}
    return {"wall_s": round(wall, 2), "run_total_s": t.get("total"), "start_up_s": round(wall - t["total"], 2),
            "setup_s": t.get("setup"), "extract_s": t.get("extract"), "pca_s": t.get("pca"),
            "pca_detail": {k: pca.get(k) for k in ("incremental", "seconds", "k", "rows")},
            "counts": manifest["counts"], "cost": manifest.get("cost"), "load_average_1m": LOAD[-1] if LOAD else None}


def run_phase(phase: Phase, scale: Path, work: Path, real: bool) -> dict:
    root = work / phase.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src, held, out = root / "in", root / "held", root / "out"
    if phase.level is None:  # GROW photos of x1, a clean run
        subprocess.run(["cp", "-al", str(scale / "x1"), str(root / "pool")], check=True)
        hold_out(root / "pool", src, GROW)
        wall, manifest = fruitlens("run", str(src), str(out))
        return {"phase": phase.name, "committed_before": 0, **split_of(manifest, wall)}
    subprocess.run(["cp", "-al", str(scale / phase.level), str(src)], check=True)  # hard links: no copy
    moved = hold_out(src, held, GROW)
    t = time.perf_counter()
    if real:
        fruitlens("run", str(src), str(out))
        made = 0
    else:
        fruitlens("run", str(src), str(out), "--limit", "256")
        made = fabricate(src, out, [work / "clean-300" / "out" / "features"])
        fruitlens("run", str(src), str(out))  # the previous daily run: OUTPUT finished, its PCA records written
    prepare_s = time.perf_counter() - t
    committed = json.loads((out / "manifest.json").read_text())["counts"]["features"]
    for was, now in moved:
        shutil.move(now, was)
    wall, manifest = fruitlens("run", str(src), str(out))
    result = {"phase": phase.name, "committed_before": committed, "fabricated_rows": made,
              "prepare_s": round(prepare_s, 1), **split_of(manifest, wall)}
    grown = basis(out)
    exact_wall, exact = fruitlens("run", str(src), str(out), "--pca-exact")
    clean = basis(out)
    inc = manifest["pca"]["incremental"]
    check = {"exact_wall_s": round(exact_wall, 2), "exact_pca_s": exact["timings_s"].get("pca"),
             "same_rows": exact["counts"]["features"] == manifest["counts"]["features"], "basis": inc["basis"]}
    if grown["components"].shape == clean["components"].shape:
        check["basis_max_rel_diff"] = float(max(np.abs(grown[k] - clean[k]).max() / np.abs(clean[k]).max()
                                                for k in clean))
    if inc["basis"] == "kept":
        check["variance_loss"] = inc.get("variance_loss")
        check["centre_offset"] = inc.get("centre_offset")
    result["equals_clean"] = check
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scale", type=Path, help="make scale-set's folder (x1, x2, x14)")
    p.add_argument("--work", type=Path, default=Path(".bench/grow"))
    p.add_argument("--json", type=Path, default=Path(".bench/grow.json"))
    p.add_argument("--phases", nargs="*", default=[ph.name for ph in PHASES] + ["planning"],
                   help="run only these phases (planning: `make bench-plan`'s measurements)")
    p.add_argument("--plan-work", type=Path, default=Path(".bench/plan"),
                   help="the planning benchmark's folder (its S3 server's 200k objects are made once and kept)")
    p.add_argument("--real", action="store_true", help="featurize the committed photos instead of making their rows")
    args = p.parse_args(argv)
    from fruitlens.bench import machine
    from fruitlens.jvm_archive import archive_path, usable

    archive = archive_path()  # the local driver JVM's class archive (`make setup` makes it): setup depends on it
    results = {"machine": machine(), "jvm_archive": str(archive) if archive and usable(archive) else None, "phases": []}
    print(f"bench-grow: the driver JVM's class archive: {results['jvm_archive'] or 'none (make setup makes it)'}")
    print(f"bench-grow: {results['machine']['processor']}, {results['machine']['cpus']} CPUs", flush=True)
    for phase in PHASES:
        if phase.name not in args.phases:
            continue
        if phase.level and not (args.scale / phase.level).is_dir():
            raise SystemExit(f"bench-grow: {args.scale / phase.level} missing: run `make scale-set` first")
        r = run_phase(phase, args.scale, args.work, args.real)
        results["phases"].append(r)
        print(f"{r['phase']}: wall {r['wall_s']} s (setup {r['setup_s']}, extract {r['extract_s']}, PCA {r['pca_s']}; "
              f"start-up {r['start_up_s']}) on {r['committed_before']} committed"
              + (f"; equals clean: {r['equals_clean']}" if "equals_clean" in r else ""), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if "planning" in args.phases:  # the driver's listing and planning at 1M/10M and the 200k-object S3 listing
        plan_json = args.work / "plan.json"
        subprocess.run([sys.executable, "-m", "fruitlens.bench.planning", "--workdir", str(args.plan_work),
                        "--json", str(plan_json)], check=True)
        results["planning"] = json.loads(plan_json.read_text())
    clean = next((r for r in results["phases"] if r["phase"] == "clean-300"), None)
    if clean and clean["setup_s"] is not None:
        results["clean_300_setup_share"] = round(clean["setup_s"] / clean["wall_s"], 3)
        print(f"bench-grow: a clean 300-photo run spends {results['clean_300_setup_share']:.0%} of its wall in setup")
    walls = {r["phase"]: r["wall_s"] for r in results["phases"]}
    if {"grow-300-on-13k", "grow-300-on-91k"} <= set(walls):
        results["ratio_91k_to_13k"] = round(walls["grow-300-on-91k"] / walls["grow-300-on-13k"], 3)
        print(f"bench-grow: +300 on 91k / +300 on 13k = {results['ratio_91k_to_13k']}x")
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
