"""Retrying, in a worker, what may succeed a little later: reading an image, writing a committed batch.

"Could not be read now" (a network error, S3 throttling such as 503 SlowDown, permission denied, an
I/O error) is not a verdict on the image: the worker retries it with exponential backoff (0.5 s, 1 s,
2 s … capped at 8 s, jittered) for up to ``retry_timeout`` seconds, long enough to ride out a short
outage. A file that vanished since the listing is not retried.

The retries share one clock per process: once nothing has succeeded in this worker for the whole
budget (an outage longer than the retries), each further failure gives up at once instead of waiting
the budget again for every file, so a long outage ends the run in about ``retry_timeout``, with read
errors, rather than in files × budget. One success (the server is back) resets the clock.
"""
from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
#: Write failures that waiting does not cure: the run stops with one line naming the path instead.
PERMANENT_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG})


def vanished(exc: BaseException) -> bool:
    """The file is gone (deleted since the listing): retrying will not bring it back."""
    text = str(exc)
    return isinstance(exc, FileNotFoundError) or "Path does not exist" in text or "NoSuchKey" in text \
        or "No such file or directory" in text


def retryable_read(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not vanished(exc)


def retryable_write(exc: BaseException) -> bool:
    """A :class:`fruitlens.store.StoreError` (or OSError) from a write that may succeed later."""
    cause = getattr(exc, "cause", exc)
    return isinstance(cause, OSError) and getattr(cause, "errno", None) not in PERMANENT_WRITE_ERRNOS


class Retrier:
    """Calls a function until it succeeds, a failure is not retryable, or the time budget is spent."""

    def __init__(self, budget_s: float, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # the first failure since the last success

    def call(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        start, delay = self._clock(), FIRST_DELAY_S
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                now = self._clock()
                with self._lock:
                    if self._failing_since is None:
                        self._failing_since = now
                    outage = now - self._failing_since
                left = start + self.budget_s - now
                if left <= 0 or outage >= self.budget_s:
                    raise
                self._sleep(min(delay * random.uniform(0.5, 1.0), left))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            with self._lock:
                self._failing_since = None
            return result


_RETRIERS: dict[float, Retrier] = {}


def for_worker(budget_s: float) -> Retrier:
    """The worker process's retrier (one per budget): its tasks and threads share the outage clock."""
    if budget_s not in _RETRIERS:
        _RETRIERS[budget_s] = Retrier(budget_s)
    return _RETRIERS[budget_s]
