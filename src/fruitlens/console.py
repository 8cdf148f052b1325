"""What a run prints: fruitlens' own lines; Spark's, the JVM's and TensorFlow's only with ``--verbose``.

Three levels, chosen once by the CLI (:func:`configure`):

- ``quiet``: errors and the final summary only;
- ``normal`` (default): fruitlens' stage lines and image progress;
- ``verbose``: also everything Spark, the JVM, Python workers and TensorFlow print.

Where fruitlens starts Spark's JVM itself (local mode), the JVM's stderr, which also carries the Python
workers' stderr, goes through :class:`JvmStderr`: shown in ``verbose``, else kept as a tail that is
printed when the job fails, so nothing needed for a diagnosis is lost. Under ``spark-submit`` (Kubernetes,
EMR) the JVM is already running: its output is cut down by the log4j2 file the images install.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from fruitlens.redact import redact_text

LEVELS = ("quiet", "normal", "verbose")
LOGGER = logging.getLogger("fruitlens")
#: Environment for TensorFlow, absl and oneDNN, set before any of them is imported (workers inherit it).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "ABSL_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}

_verbosity = "normal"

#: The kubelet mounts this file in every container and, when it is not empty, shows its text as the
#: termination message: one exact error line, whatever Spark's shutdown prints after it. It does not
#: exist outside a Kubernetes pod, and then nothing is written.
TERMINATION_LOG = Path("/dev/termination-log")


def configure(verbosity: str = "normal") -> None:
    """Set the level once, before Spark or TensorFlow is imported or started."""
    global _verbosity
    if verbosity not in LEVELS:
        raise ValueError(f"verbosity must be one of {LEVELS}, got {verbosity!r}")
    _verbosity = verbosity
    if verbosity != "verbose":
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    LOGGER.setLevel(logging.WARNING if verbosity == "quiet" else logging.INFO)
    LOGGER.propagate = False
    if not LOGGER.handlers:
        handler = _StderrHandler()
        handler.setFormatter(_RedactingFormatter("[fruitlens] %(message)s"))
        LOGGER.addHandler(handler)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or pytest may have replaced it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def verbosity() -> str:
    return _verbosity


@contextmanager
def native_stderr_hidden():
    """Unless verbose, hide what native code writes straight to file descriptor 2 inside the block:
    TensorFlow's absl and oneDNN lines ("All log messages before absl::InitializeLog() ...", "oneDNN
    custom operations are on ...") ignore TF_CPP_MIN_LOG_LEVEL since TF moved to absl logging. If the
    block fails, what was hidden is printed after all: nothing needed for a diagnosis is lost."""
    if _verbosity == "verbose":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))
                sys.stderr.flush()


def log4j_config() -> Path:
    """fruitlens' log4j2 file: errors only (package data)."""
    return Path(__file__).with_name("log4j2.properties")


#: Spark's own log4j2 defaults (a classpath resource), for --verbose even where an image installs ours.
SPARK_DEFAULTS = "org/apache/spark/log4j2-defaults.properties"


def jvm_options() -> str:
    """``spark.driver.extraJavaOptions`` for a JVM fruitlens starts: its log4j2 file, or Spark's if verbose."""
    config = SPARK_DEFAULTS if _verbosity == "verbose" else f"file:{log4j_config()}"
    return f"-Dlog4j2.configurationFile={config}"


class JvmStderr:
    """Reads the JVM's stderr pipe in a thread: passes it through when verbose, else keeps its tail."""

    def __init__(self, stream: IO[bytes], *, show: bool, tail: int = 60) -> None:
        self._stream = stream
        self._show = show
        self.tail: deque[str] = deque(maxlen=tail)
        self._thread = threading.Thread(target=self._pump, name="jvm-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = redact_text(raw.decode("utf-8", "replace").rstrip("\n"))
            self.tail.append(line)
            if self._show:
                print(line, file=sys.stderr, flush=True)

    def dump(self, out: IO[str] | None = None) -> None:
        """Print the kept tail (after a failure), so the JVM's last words are never lost."""
        out = out or sys.stderr
        if self._show or not self.tail:
            return
        print("[fruitlens] last lines from Spark's JVM (--verbose shows all):", file=out)
        for line in self.tail:
            print(f"  {line}", file=out)
        out.flush()


#: The JVM stderr reader of the session fruitlens started, if any (one JVM per process).
jvm_stderr: JvmStderr | None = None


#: What to undo before the process ends on Ctrl-C (a held lock's release), newest last.
_at_interrupt: list[Callable[[], None]] = []
#: Set by the CLI: a notebook or a test suite that runs fruitlens in-process keeps its own Ctrl-C.
_exit_on_interrupt = False
INTERRUPTED = "fruitlens: interrupted (what was committed is kept: re-run the same command to continue)"


def at_interrupt(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` if the process is interrupted; returns the function that unregisters it."""
    _at_interrupt.append(fn)
    return lambda: _at_interrupt.remove(fn) if fn in _at_interrupt else None


def exit_on_interrupt() -> None:
    """The `fruitlens` command owns its process: Ctrl-C may end it (see :func:`stop_on_interrupt`)."""
    global _exit_on_interrupt
    _exit_on_interrupt = True


def stop_on_interrupt() -> None:
    """Once Spark runs, Ctrl-C ends the `fruitlens` process at once with one line and exit code 130.

    PySpark's own handler calls into the JVM from inside the signal handler while the main thread waits
    on the same Py4J connection: a cascade of Py4J tracebacks. Here nothing talks to the JVM: the held
    lock is released, the line printed, and the process exits; Spark's JVM, whose stdin is this process'
    pipe, stops with it (and its Python workers with it). Committed batches are complete files."""
    if _exit_on_interrupt and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted)


def _interrupted(signum, frame) -> None:
    for fn in reversed(list(_at_interrupt)):
        try:
            fn()
        except Exception:  # noqa: BLE001 - leaving now matters more; a stale lock is taken over later
            pass
    try:
        sys.stderr.write("\n" + INTERRUPTED + "\n" if sys.stderr.isatty() else INTERRUPTED + "\n")
        sys.stderr.flush()
    finally:
        record_termination(INTERRUPTED)
        os._exit(130)


def record_termination(line: str) -> None:
    """Leave the line that says why the process fails where Kubernetes reads it (see :data:`TERMINATION_LOG`)."""
    try:
        if TERMINATION_LOG.exists():
            TERMINATION_LOG.write_text(redact_text(line)[:4096] + "\n", encoding="utf-8")  # the kubelet keeps 4 KiB
    except OSError:  # read-only or not ours: the log tail (FallbackToLogsOnError) still carries the error
        pass
