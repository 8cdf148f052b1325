"""`fruitlens status OUTPUT`: what OUTPUT holds, finished or not, without Spark.

Finished: the manifest is there (it is written last) and no run holds the lock. Otherwise a run is
either in progress (a fresh lock heartbeat) or was interrupted; then the rows committed so far are
counted from the Parquet footers (no feature data is read).
"""
from __future__ import annotations

import argparse
import json
import time

from fruitlens import ledger
from fruitlens.lock import describe, read as read_lock, stale_reason
from fruitlens.output import MANIFEST, RUN, SETTINGS, read_json
from fruitlens.store import Store, StoreOptions
from fruitlens.uris import qualify


def status(uri: str, *, lock_timeout: float = 60.0) -> dict:
    out = Store(qualify(uri), StoreOptions.from_environment().with_bucket_regions(qualify(uri)))
    if not out.exists():
        return {"output": out.uri, "state": "missing"}
    manifest, run, lock = read_json(out, MANIFEST), read_json(out, RUN), read_lock(out)
    report: dict = {"output": out.uri}
    if lock is not None:
        gone = stale_reason(lock, lock_timeout)
        report["lock"] = {"holder": describe(lock), "stale": gone}
    if manifest is not None and lock is None:
        last = (manifest.get("history") or [{}])[-1]
        report.update(state="finished", input=manifest.get("input"), counts=manifest.get("counts"),
                      start=last.get("start"), end=last.get("end"), seconds=last.get("seconds"),
                      pca_k=(manifest.get("pca") or {}).get("k"), runs=len(manifest.get("history", [])))
        return report
    if run is None and read_json(out, SETTINGS) is None:
        report["state"] = "not a fruitlens output" if lock is None else "starting"
        return report
    running = lock is not None and report["lock"]["stale"] is None
    report["state"] = "running" if running else "interrupted"
    report["input"] = (read_json(out, SETTINGS) or {}).get("input")
    if run is not None:
        start = run.get("start")
        report.update(start=start, command=run.get("command"), host=run.get("host"), pid=run.get("pid"),
                      runs=len(run.get("history", [])) + 1)
        if start:
            report["seconds_since_start"] = round(time.time() - _epoch(start), 1)
    report["committed"] = ledger.committed_rows(out)
    return report


def _epoch(iso_time: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(iso_time, "%Y-%m-%dT%H:%M:%SZ"))


def format_report(report: dict) -> str:
    lines = [f"{report['output']}: {report['state']}"]
    if report["state"] == "finished":
        c = report.get("counts") or {}
        lines.append(f"  images: {c.get('matched')} ({c.get('features')} features, {c.get('errors')} errors)")
        lines.append(f"  last run: new {c.get('new')}, changed {c.get('changed')}, removed {c.get('removed')}, "
                     f"reused {c.get('reused')}")
        lines.append(f"  finished {report.get('end')} (started {report.get('start')}, {report.get('seconds')} s); "
                     f"PCA k={report.get('pca_k')}; {report.get('runs')} run(s) built it")
    elif "committed" in report:
        c = report["committed"]
        lines.append(f"  committed so far: {c['features']} features, {c['errors']} errors")
        if report.get("start"):
            lines.append(f"  run started {report['start']} ({report.get('seconds_since_start')} s ago) on "
                         f"{report.get('host')}, pid {report.get('pid')}: {report.get('command')}")
        if report["state"] == "interrupted":
            lines.append("  re-run the same command to continue it")
    if "lock" in report:
        lock = report["lock"]
        lines.append(f"  lock: {lock['holder']}" + (f" (stale: {lock['stale']})" if lock["stale"] else ""))
    return "\n".join(lines)


def _status(ns: argparse.Namespace) -> int:
    report = status(ns.output, lock_timeout=ns.lock_timeout)
    print(json.dumps(report) if ns.json else format_report(report))
    return 0 if report["state"] not in ("missing", "not a fruitlens output") else 1


def register(sub) -> None:
    p = sub.add_parser("status", help="what OUTPUT holds: finished or not, counts, when, how long")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("--lock-timeout", type=float, default=60.0,
                   help="seconds without heartbeat after which a lock counts as stale (default 60)")
    p.set_defaults(func=_status)
