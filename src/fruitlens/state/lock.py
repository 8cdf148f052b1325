"""One run per OUTPUT: a lock object in ``OUTPUT/_fruitlens/lock.json`` with a heartbeat.

The lock is created only if absent (local: ``O_EXCL``; S3: a conditional PUT, see
:meth:`Store.create_exclusive`) and names its holder: host, pid, start time, command. A daemon thread
refreshes its heartbeat. A second run finds it and is refused at once, naming the holder. A lock whose
heartbeat is older than the timeout (its run died without releasing it), or whose holder is a dead
process on this same host, is taken over with a message; ``--force-unlock`` takes it over in any case.

Taking over a stale lock is delete + create-if-absent: two runs taking over the same stale lock at the
same instant are told apart by the conditional create, except on an S3 server that ignores
``If-None-Match`` (then the window is the few milliseconds between the two requests; the heartbeat
thread re-reads the lock and the run stops before publishing anything if it is no longer its own).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from fruitlens import console
from fruitlens.errors import FruitlensError
from fruitlens.progress import log
from fruitlens.state.layout import LOCK, STATE
from fruitlens.storage.store import Store


class LockedError(FruitlensError, RuntimeError):
    """Another run holds OUTPUT's lock."""


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    if holder.get("unreadable"):
        return (f"an empty or unreadable lock file ({holder['unreadable']}), last modified "
                f"{now() - float(holder.get('heartbeat', 0)):.0f} s ago")
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {iso(holder.get('started'))}, "
            f"last heartbeat {now() - float(holder.get('heartbeat', 0)):.0f} s ago")


@dataclass
class RunLock:
    store: Store
    run_id: str
    info: dict
    timeout_s: float
    lost: bool = False
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None
    _forget: object = None

    @classmethod
    def acquire(cls, store: Store, *, command: str, timeout_s: float, force: bool = False,
                wait_s: float = 0.0, sleep=time.sleep) -> RunLock:
        """Take OUTPUT's lock. A live holder refuses at once, unless ``wait_s``: then wait up to that long
        for it to finish or go stale (a retried driver whose predecessor died a moment ago)."""
        store.make_dirs(STATE)
        run_id = uuid.uuid4().hex
        info = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": now(),
                "heartbeat": now(), "command": command}
        deadline, attempts, waiting = time.monotonic() + wait_s, 0, False
        while not store.create_exclusive(LOCK, json.dumps(info)):
            attempts += 1
            holder = read(store)
            if holder is None:
                if attempts > 50:
                    raise LockedError(f"OUTPUT {store.uri}: could not take the lock; another run is starting. "
                                      "Retry.")
                continue  # released meanwhile
            reason = "--force-unlock" if force else stale_reason(holder, timeout_s)
            if reason is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockedError(
                        f"OUTPUT {store.uri} is in use by another fruitlens run ({describe(holder)}); wait for it "
                        f"to finish, or if that run is dead pass --force-unlock (a lock is taken over by itself "
                        f"{timeout_s:.0f} s after its last heartbeat)")
                if not waiting:
                    waiting = True
                    log(f"lock: OUTPUT is in use by {describe(holder)}; waiting up to {wait_s:.0f} s for it to "
                        "finish or go stale")
                sleep(min(5.0, left))
                continue
            log(f"lock: taking over the lock of a run that is gone ({describe(holder)}; {reason})")
            store.delete(store.fs_path(LOCK))
        lock = cls(store, run_id, info, timeout_s)
        if (read(store) or {}).get("run_id") != run_id:
            raise LockedError(f"OUTPUT {store.uri}: another run took the lock at the same moment; retry")
        lock._start_heartbeat()
        lock._forget = console.at_interrupt(lock.release)  # Ctrl-C: the next run need not wait for it
        return lock

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        interval = max(0.5, self.timeout_s / 6)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    current = read(self.store)
                    if (current or {}).get("run_id") != self.run_id:
                        self.lost = True
                        log(f"lock: LOST the lock of {self.store.uri} to {describe(current or {})}")
                        return
                    self.info["heartbeat"] = now()
                    self.store.write_text(LOCK, json.dumps(self.info))
                except Exception as exc:  # noqa: BLE001 - a failed beat is retried at the next one
                    log(f"lock: heartbeat failed ({exc}); retrying")

        self._thread = threading.Thread(target=beat, name="fruitlens-lock-heartbeat", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise if another run took the lock over: nothing more may be published."""
        if self.lost:
            raise LockedError(f"OUTPUT {self.store.uri}: this run lost its lock to another run; stopping")

    def release(self) -> None:
        if self._forget:
            self._forget()
        if self._stop:
            self._stop.set()
            self._thread.join()
        if not self.lost and (read(self.store) or {}).get("run_id") == self.run_id:
            self.store.delete(self.store.fs_path(LOCK))

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read(store: Store) -> dict | None:
    """The holder's record, or None if there is no lock. A lock file that is empty or not JSON (a run
    that died between creating it and writing it, e.g. on a full disk) counts as written by a run whose
    last heartbeat was the file's modification time: it goes stale after the timeout like any other."""
    try:  # a store that cannot be reached raises (StoreError): the heartbeat retries, a new run stops
        text = store.read_text(LOCK)
    except UnicodeDecodeError:
        return _unreadable(store, "not UTF-8")
    if text is None:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return _unreadable(store, "empty" if not text.strip() else "not JSON")
    return holder if isinstance(holder, dict) else _unreadable(store, "not a JSON object")


def _unreadable(store: Store, why: str) -> dict | None:
    info = store.info(LOCK)
    if info.type == pafs.FileType.NotFound:  # released meanwhile
        return None
    mtime = info.mtime.timestamp() if info.mtime is not None else now()
    return {"heartbeat": mtime, "host": "?", "pid": "?", "started": None, "unreadable": why}


def stale_reason(holder: dict, timeout_s: float) -> str | None:
    """Why ``holder``'s run is gone, or None if it may still be running."""
    age = now() - float(holder.get("heartbeat", 0))
    if age > timeout_s:
        return f"no heartbeat for {age:.0f} s (> {timeout_s:.0f} s)"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return f"process {holder['pid']} no longer exists on this host"
    return None
