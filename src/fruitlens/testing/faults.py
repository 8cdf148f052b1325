"""Test-only fault injection, driven by environment variables that no user sets.

- ``FRUITLENS_TEST_KILL_AT=<point>[:N]``: at the N-th time (default 1st) this process reaches
  ``<point>``, SIGKILL the whole process group (driver, JVM, Python workers), as a lost node or
  ``kill -9`` would (the run must be started as a session leader, as the tests do). Points:
  ``extract`` (a worker, after committing a batch; N counts committed feature files in OUTPUT),
  ``cleanup`` (after a rewritten file is written, before the old one is
  deleted), ``pca`` (after the moments, before the projection), ``manifest`` (the manifest written
  but not yet published).
- ``FRUITLENS_TEST_FAIL_ONCE=<marker file>``: the first Python worker to commit a batch creates the
  marker and exits abruptly; Spark retries its task (needs ``spark.task.maxFailures`` > 1, e.g.
  ``--master local[2,2]``).
"""
from __future__ import annotations

import os
import signal

KILL_AT = "FRUITLENS_TEST_KILL_AT"
FAIL_ONCE = "FRUITLENS_TEST_FAIL_ONCE"


def _target(point: str) -> int | None:
    spec = os.environ.get(KILL_AT, "")
    name, _, n = spec.partition(":")
    return (int(n) if n else 1) if name == point else None


def needs_workers() -> bool:
    """A fault that only Spark's Python workers can take (a worker exits, Spark retries its task)."""
    return bool(os.environ.get(FAIL_ONCE))


def kill_point(point: str, reached: int = 1) -> None:
    """SIGKILL the process group if the test asked for ``point`` and it is reached ``reached`` times."""
    target = _target(point)
    if target is not None and reached >= target:
        # PySpark's daemon puts each worker in a group of its own; the run's group is the session's
        # (the test starts the run as a session leader).
        for group in dict.fromkeys([os.getsid(0), os.getpgid(0)]):  # our own group last
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wants(point: str) -> bool:
    return _target(point) is not None


def fail_once() -> None:
    marker = os.environ.get(FAIL_ONCE)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(17)  # the worker dies mid-task, as an OOM-killed worker does
