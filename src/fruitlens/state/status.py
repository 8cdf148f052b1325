"""`fruitlens status OUTPUT`: what OUTPUT holds, finished or not, without Spark.

Finished: the manifest is there (it is written last) and no run holds the lock. Otherwise a run is
either in progress (a fresh lock heartbeat), was interrupted, or failed (too many error rows: the run
record says why); then the rows committed so far are counted from the Parquet footers (no feature data
is read). Errors are counted by kind: decode errors are verdicts, read errors are retried by the next run.
"""
from __future__ import annotations

import argparse
import json
import time

from fruitlens.redact import redact
from fruitlens.state import ledger
from fruitlens.state.layout import MANIFEST, RUN, SETTINGS
from fruitlens.state.lock import describe, stale_reason
from fruitlens.state.lock import read as read_lock
from fruitlens.state.manifest import read_json
from fruitlens.storage.store import Store, StoreOptions
from fruitlens.storage.uris import qualify


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
        if lock is None:
            report["state"] = "not a fruitlens output"
        else:  # a run that died before it wrote anything but its lock is not starting any more
            report["state"] = "starting" if report["lock"]["stale"] is None else "interrupted"
        return report
    running = lock is not None and report["lock"]["stale"] is None
    report["state"] = "running" if running else "failed" if (run or {}).get("failed") else "interrupted"
    if report["state"] == "failed":
        report["failed"] = run["failed"]
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
        lines.append(f"  images: {c.get('matched')} ({c.get('features')} features, {_errors(c)})")
        lines.append(f"  last run: new {c.get('new')}, changed {c.get('changed')}, removed {c.get('removed')}, "
                     f"reused {c.get('reused')}" + (f", retried {c['retried']}" if "retried" in c else ""))
        lines.append(f"  finished {report.get('end')} (started {report.get('start')}, {report.get('seconds')} s); "
                     f"PCA k={report.get('pca_k')}; {report.get('runs')} run(s) built it")
    elif "committed" in report:
        c = report["committed"]
        lines.append(f"  committed so far: {c['features']} features, {_errors(c)}")
        if report.get("failed"):
            lines.append(f"  failed: {report['failed']}")
        if report.get("start"):
            lines.append(f"  run started {report['start']} ({report.get('seconds_since_start')} s ago) on "
                         f"{report.get('host')}, pid {report.get('pid')}: {report.get('command')}")
        if report["state"] in ("interrupted", "failed"):
            lines.append("  re-run the same command to continue it")
    if "lock" in report:
        lock = report["lock"]
        lines.append(f"  lock: {lock['holder']}" + (f" (stale: {lock['stale']})" if lock["stale"] else ""))
    return "\n".join(lines)


def _errors(counts: dict) -> str:
    text = f"{counts.get('errors')} errors"
    if "read_errors" not in counts:  # a manifest written before errors had kinds: all decode errors
        return text
    text += f": {counts.get('decode_errors')} decode, {counts.get('read_errors')} read"
    return text + (" (retried by the next run)" if counts.get("read_errors") else "")


def _status(ns: argparse.Namespace) -> int:
    report = redact(status(ns.output, lock_timeout=ns.lock_timeout))  # records written before masking
    print(json.dumps(report) if ns.json else format_report(report))
    return 0 if report["state"] not in ("missing", "not a fruitlens output") else 1


def register(sub) -> None:
    p = sub.add_parser("status", help="what OUTPUT holds: finished or not, counts, when, how long")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.add_argument("--lock-timeout", type=float, default=60.0,
                   help="seconds without heartbeat after which a lock counts as stale (default 60)")
    p.set_defaults(func=_status)
