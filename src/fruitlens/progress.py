"""Progress: one line per stage on stderr, and a live task bar while a stage runs in a terminal."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `log` is used where Spark must not load (predict): pyspark only for the type
    from pyspark import SparkContext

from fruitlens import console


def log(message: str) -> None:
    """One fruitlens line on stderr (hidden by --quiet)."""
    if not console.LOGGER.handlers:  # used without the CLI (tests, a notebook): the default level
        console.configure(console.verbosity())
    console.LOGGER.info(message)


@contextmanager
def task_bar(sc: SparkContext, name: str, *, enabled: bool):
    """Show Spark's finished/total tasks for the jobs started inside the block (terminal only)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from tqdm import tqdm

    group = f"fruitlens-{name}-{time.monotonic_ns()}"
    sc.setJobGroup(group, name)
    stop = threading.Event()
    bar = tqdm(desc=name, unit="task", file=sys.stderr, leave=False)

    def poll() -> None:
        tracker = sc.statusTracker()
        while not stop.wait(0.5):
            done = total = 0
            for job_id in tracker.getJobIdsForGroup(group):
                job = tracker.getJobInfo(job_id)
                for stage_id in job.stageIds if job else []:
                    stage = tracker.getStageInfo(stage_id)
                    if stage:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
            bar.total = max(total, 1)
            bar.n = done
            bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
        sc.setLocalProperty("spark.jobGroup.id", None)


# -- image-level progress -------------------------------------------------------------------------------
# Spark reports tasks, and a task holds hundreds of images, so workers tell the driver how many images
# each batch finished: one UDP datagram per batch (a few bytes per ~256 images; measured in
# docs/performance.md). Datagrams are fire-and-forget: a worker never waits on, or fails because of,
# progress; a lost datagram only makes the count lag until the stage ends.

def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ImageProgress:
    """Driver side: counts images reported by workers; a bar in a terminal, else a line every
    ``every`` seconds (EMR's driver log and ``kubectl logs`` are not terminals)."""

    def __init__(self, name: str, *, bind_host: str = "127.0.0.1", advertise_host: str | None = None,
                 enabled: bool = True, interactive: bool | None = None, every: float = 5.0) -> None:
        import socket

        self.name = name
        self.total: int | None = None
        self.done = 0
        self.errors = 0  # of the images done, those that ended as error rows
        self.enabled = enabled and console.verbosity() != "quiet"
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.every = every
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((bind_host, 0))
        self._sock.settimeout(0.2)
        self.address = (advertise_host or bind_host, self._sock.getsockname()[1])
        self._start = time.perf_counter()
        self._end: float | None = None
        self._shown = -1  # the count on the last plain line
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._receive, daemon=True, name="progress-recv")]
        if self.enabled:
            self._threads.append(threading.Thread(target=self._show, daemon=True, name="progress-show"))

    def __enter__(self) -> ImageProgress:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._end = time.perf_counter()
        self._stop.set()
        for t in self._threads:
            t.join()
        self._sock.close()
        if self.enabled and exc_type is None and self.total:
            self.done = max(self.done, self.total)  # datagrams still in flight when the stage ended
            if not self.interactive and self._shown != self.done:
                log(self.line())

    def add(self, n: int, errors: int = 0) -> None:
        with self._lock:
            self.done += n
            self.errors += errors

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(64)
            except OSError:  # timeout: check the stop flag again
                continue
            try:  # "images" or "images errors"
                self.add(*(int(field) for field in data.split()[:2]))
            except (TypeError, ValueError):
                continue

    def rate(self) -> float:
        """Images per second since the stage started (until it ended)."""
        elapsed = (self._end or time.perf_counter()) - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if not self.total:
            return f"{self.name}: {self.done:,} images, {rate:.0f} images/s"
        pct = 100.0 * self.done / self.total
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = _fmt_seconds(eta) if eta == eta else "?"
        return (f"{self.name}: {self.done:,}/{self.total:,} images ({pct:.0f}%), {rate:.0f} images/s, "
                f"ETA {eta_text}")

    def _show(self) -> None:
        if self.interactive:
            from tqdm import tqdm

            bar = tqdm(desc=self.name, unit="img", file=sys.stderr, leave=False, total=self.total)
            while not self._stop.wait(0.5):
                bar.total = self.total
                bar.n = self.done
                bar.refresh()
            bar.close()
            return
        # A line every `every` seconds at first, then less often (at most one a minute) on long runs.
        last, shown_at = 0, time.perf_counter()
        while not self._stop.wait(0.5):
            now = time.perf_counter()
            interval = min(60.0, max(self.every, (now - self._start) / 10))
            if now - shown_at >= interval and self.done != last:
                last, shown_at = self.done, now
                self._shown = self.done
                log(self.line())


class ProgressClient:
    """Worker side: ``add(n)`` after each batch; one socket per worker process, errors ignored."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self.address = address
        self._sock = None

    def add(self, n: int, errors: int = 0) -> None:
        if self.address is None or n <= 0:
            return
        try:
            if self._sock is None:
                import socket

                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.sendto(f"{n} {errors}".encode(), self.address)
        except OSError:  # progress is best-effort: never fail or slow a task for it
            self.address = None
