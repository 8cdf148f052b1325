"""`fruitlens history OUTPUT`: a finished (or killed) run's Spark UI, from the event logs under OUTPUT.

Every Spark session of a run writes its event log to OUTPUT/_spark-events (``--event-log``, see
:func:`fruitlens.spark.event_log_dir`), whatever ran it: local, docker, the chart's Job, the operator, EMR.
This command starts Spark's own History Server (``org.apache.spark.deploy.history.HistoryServer``, from the
Spark that PySpark installed; it needs Java, as a run does) over them, on this machine, and prints its URL
and each run's page. S3 logs are copied to a local cache first, so no S3A connector is needed here. The
server runs in the foreground until Ctrl-C; ``--check`` prints the pages and stops it (scripts, tests).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fruitlens.errors import FruitlensError
from fruitlens.state.layout import SPARK_EVENTS
from fruitlens.storage import uris
from fruitlens.storage.store import Store, StoreOptions

HISTORY_SERVER = "org.apache.spark.deploy.history.HistoryServer"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fruitlens" / "history"


class HistoryError(FruitlensError, RuntimeError):
    """No event logs where asked, or the History Server cannot start."""


def events_uri(output: str, event_log: str | None = None) -> str:
    return uris.qualify(event_log) if event_log else f"{uris.qualify(output)}/{SPARK_EVENTS}"


def local_copy(uri: str, options: StoreOptions | None = None) -> tuple[Path, int]:
    """The event log folder as a local path (S3: copied into a cache, only files not there yet) and how many
    logs it holds; an error naming the folder when there are none."""
    store = Store(uri, options or StoreOptions.from_environment().with_bucket_regions(uri))
    hint = ("runs write their event log there unless run with --event-log off or elsewhere (then pass "
            "--event-log URI)")
    if not store.exists():
        raise HistoryError(f"no Spark event logs: {uri} does not exist; {hint}")
    if store.is_local:
        path = Path(store.fs_path())
        names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    else:  # Spark 4 rolls logs: a folder eventlog_v2_<app> per session (older ones: one file each)
        path = CACHE / hashlib.sha256(uri.encode()).hexdigest()[:16]
        import pyarrow.fs as pafs

        names = set()
        base = len(store.fs_path()) + 1
        for info in store.fs.get_file_info(pafs.FileSelector(store.fs_path(), recursive=True)):
            rel = info.path[base:]
            if info.type != pafs.FileType.File or not rel or rel.rsplit("/", 1)[-1].startswith("."):
                continue
            names.add(rel.split("/", 1)[0])
            target = path / rel
            if not target.exists() or target.stat().st_size != info.size or ".inprogress" in rel:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                partial.write_bytes(store.read_bytes(info.path))
                partial.replace(target)
    if not names:
        raise HistoryError(f"no Spark event logs in {uri}; {hint}")
    return path, len(names)


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def start_server(log_dir: Path, *, port: int, host: str) -> tuple[subprocess.Popen, Path]:
    """Spark's History Server over ``log_dir`` on ``host:port``: the process and its log file."""
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise HistoryError("the History Server needs Java (17 or 21), as a run does: install it or set JAVA_HOME")
    work = Path(tempfile.mkdtemp(prefix="fruitlens-history-"))
    props = work / "history.properties"
    props.write_text("\n".join([
        f"spark.history.fs.logDirectory=file://{log_dir}",
        f"spark.history.ui.port={port}",
        "spark.history.fs.update.interval=2s",
        "spark.history.fs.cleaner.enabled=false",  # never delete the logs it serves
        "spark.ui.enabled=true",
    ]) + "\n")
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": host, "SPARK_NO_DAEMONIZE": "1"}
    env.setdefault("SPARK_LOG_DIR", str(work))
    server_log = work / "history-server.log"
    cmd = [str(spark_home() / "bin" / "spark-class"), HISTORY_SERVER, "--properties-file", str(props)]
    with server_log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, server_log


def wait_for_apps(base: str, proc: subprocess.Popen, server_log: Path, *, expected: int,
                  timeout: float = 90.0) -> list[dict]:
    """The applications the server lists, once it answers and has read the logs (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    apps: list[dict] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server_log.read_text(errors="replace")[-3000:]
            raise HistoryError(f"the Spark History Server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base}/api/v1/applications?status=completed&limit=1000", timeout=5) as r:
                done = json.load(r)
            with urllib.request.urlopen(f"{base}/api/v1/applications?status=running&limit=1000", timeout=5) as r:
                running = json.load(r)
            apps = done + running
            if len(apps) >= expected:
                return apps
        except OSError:
            pass
        time.sleep(1)
    return apps


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the server is stopped with us, not orphaned


def _history(ns: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    uri = events_uri(ns.output, ns.event_log)
    log_dir, n = local_copy(uri)
    proc, server_log = start_server(log_dir, port=ns.port, host=ns.host)
    try:
        base = f"http://{'127.0.0.1' if ns.host in ('0.0.0.0', '') else ns.host}:{ns.port}"
        apps = wait_for_apps(base, proc, server_log, expected=n)
        print(f"Spark History Server: {base}  ({len(apps)} of the {n} event logs in {uri} listed)", flush=True)
        for app in sorted(apps, key=lambda a: a["attempts"][0].get("startTimeEpoch", 0)):
            attempt = app["attempts"][0]
            state = "finished" if attempt.get("completed") else "incomplete (the session was killed)"
            print(f"  {base}/history/{app['id']}/jobs/  {app['name']}, started {attempt.get('startTime')}, "
                  f"{state}", flush=True)
        if ns.check:
            return 0 if apps else 1
        print("Ctrl-C stops it.", file=sys.stderr, flush=True)
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "history", help="open a run's Spark UI from its event logs (a local Spark History Server)",
        description="Start Spark's History Server on this machine over the event logs a run wrote to "
                    "OUTPUT/_spark-events, and print its URL and each run's page. Runs until Ctrl-C.\n\n"
                    "example:\n  fruitlens history s3://bucket/fruits-out",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", metavar="OUTPUT", help="the run's output folder or URI")
    p.add_argument("--event-log", metavar="URI", help="the event log folder, when the run wrote it elsewhere")
    p.add_argument("--port", type=int, default=18080, help="port of the server (default 18080, Spark's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--check", action="store_true", help="print the pages once the logs are read, then stop")
    p.set_defaults(func=_history)
