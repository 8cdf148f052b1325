"""The run record: ``_fruitlens/run.json`` while a run changes OUTPUT, and the manifest it publishes.

``run.json`` records the run in progress (and the history before it), so an interrupted or failed run
is still described by ``fruitlens status``; the manifest, assembled here, is written last.
"""
from __future__ import annotations

import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

from fruitlens.redact import redact_text
from fruitlens.state.layout import MANIFEST, RUN
from fruitlens.state.lock import RunLock, iso
from fruitlens.state.manifest import read_json, unpublish, write_json
from fruitlens.storage.store import Store


@dataclass
class Timer:
    """Wall-clock seconds per stage, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str, since: float) -> float:
        self.seconds[stage] = round(time.perf_counter() - since, 3)
        return self.seconds[stage]

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def command_line() -> str:
    """This process's command line as records and the lock show it (secrets masked)."""
    return redact_text(" ".join(sys.argv))


def take_lock(out: Store, config) -> RunLock:
    """OUTPUT's lock for a command that changes it, as ``config`` (a PipelineConfig) asks to take it."""
    return RunLock.acquire(out, command=command_line(), timeout_s=config.lock_timeout,
                           force=config.force_unlock, wait_s=config.lock_wait)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("fruitlens", "pyspark", "numpy", "pandas", "pyarrow", "pillow", "onnxruntime",
                 "tensorflow-cpu", "tensorflow", "keras", "tf2onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "pyspark":  # the images' pyspark is their base's $SPARK_HOME/python, not a distribution
                try:
                    from pyspark import __version__ as spark_version
                except ImportError:
                    continue
                versions[dist] = spark_version
    return versions


def start_record(out: Store, lock: RunLock) -> list[dict]:
    """Record this run in ``_fruitlens/run.json`` and unpublish the manifest: OUTPUT is being changed.

    Returns the history of the runs before this one (an interrupted one included, marked so).
    """
    manifest, previous = read_json(out, MANIFEST), read_json(out, RUN)
    if manifest is not None:
        history = manifest.get("history", [])
    elif previous is not None:
        history = [*previous.get("history", []), {
            "run_id": previous.get("run_id"), "command": previous.get("command"), "start": previous.get("start"),
            "end": previous.get("end"), "finished": False, "counts": previous.get("counts"),
            **({"failed": previous["failed"]} if previous.get("failed") else {})}]
    else:
        history = []
    write_json(out, RUN, {"run_id": lock.run_id, "command": lock.info["command"], "host": socket.gethostname(),
                          "pid": lock.info["pid"], "start": iso(lock.info["started"]), "history": history})
    if manifest is not None:
        unpublish(out)
    return history


def record_failure(out: Store, lock: RunLock, reason: str, counts: dict) -> None:
    """Add to ``_fruitlens/run.json`` why this run stopped unpublished (the next run keeps it in its history)."""
    record = read_json(out, RUN) or {}
    if record.get("run_id") == lock.run_id:
        write_json(out, RUN, {**record, "end": iso(time.time()), "failed": reason, "counts": counts})


def new_manifest(lock: RunLock, *, input_uri: str, output_uri: str, counts: dict, engine: dict, pca: dict | None,
                 worker: dict, spark: dict, config: dict, history: list[dict]) -> dict:
    """The manifest of a run that featurized INPUT (timings and this run's history entry: :func:`finished`)."""
    versions = library_versions()
    return {
        "fruitlens": versions.get("fruitlens", "dev"),
        "run_id": lock.run_id,
        "command": lock.info["command"],
        "input": input_uri,
        "output": output_uri,
        "counts": counts,
        "engine": engine,
        "pca": pca,
        "timings_s": {},
        # decode_resize_s includes reading the file (workers read images themselves now)
        "worker_seconds": worker,
        "spark": spark,
        "config": config,
        "versions": versions,
        "history": history,
    }


def finished(manifest: dict, lock: RunLock, timer: Timer) -> dict:
    """``manifest`` with this run's timings, speed and history entry, as it ends now."""
    total = timer.total()
    manifest["timings_s"] = {**timer.seconds, "total": total}
    processed = manifest["counts"]["processed"]
    manifest["images_per_second"] = {
        "extract": round(processed / max(timer.seconds["extract"], 1e-9), 2),
        "end_to_end": round(processed / max(total, 1e-9), 2),
    }
    end = lock.info["started"] + total
    manifest["history"] = [*manifest["history"], {
        "run_id": lock.run_id, "command": manifest["command"], "start": iso(lock.info["started"]),
        "end": iso(end), "seconds": total, "finished": True, "counts": manifest["counts"]}]
    return manifest
