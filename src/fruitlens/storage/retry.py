"""Retrying, in a worker, what may succeed a little later: reading an image, writing a committed batch.

"Could not be read now" (a network error, S3 throttling such as 503 SlowDown, permission denied, an
I/O error) is not a verdict on the image: the worker retries it with exponential backoff (0.5 s, 1 s,
2 s … capped at 8 s, jittered) for up to ``retry_timeout`` seconds, long enough to ride out a short
outage. A file that vanished since the listing is not retried.

Failures of the store as a whole (no connection, timeouts, throttling, 5xx) share one clock per
process: once several different calls have failed that way and nothing has succeeded in this worker for
the whole budget (an outage longer than the retries), a call gives up at once, and further calls are
not even tried (each failing S3 call costs seconds of the SDK's own retries): they fail as "not tried",
except one probe every 8 s. So a long outage ends the run in about ``retry_timeout``, with read errors,
rather than in files x budget. One success (the server is back) ends the outage. A failure of one file
(permission denied, an I/O error) is retried for the budget on its own and says nothing about the
others.
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


#: What a store-wide failure says (pyarrow's AWS SDK errors, curl, sockets).
_OUTAGE_SIGNS = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "Connection refused",
                 "Connection reset", "timed out", "Timeout", "SLOW_DOWN", "SlowDown", "Slow Down",
                 "SERVICE_UNAVAILABLE", "ServiceUnavailable", "Service Unavailable", "THROTTLING", "Throttl",
                 "RequestLimitExceeded", "INTERNAL_FAILURE", "InternalError")


def store_wide(exc: BaseException) -> bool:
    """The store as a whole failed (unreachable, timing out, throttling), not one file."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, (ConnectionError, TimeoutError)) or any(s in str(cause) for s in _OUTAGE_SIGNS)


def retryable_read(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not vanished(exc)


def retryable_write(exc: BaseException) -> bool:
    """A :class:`fruitlens.storage.store.StoreError` (or OSError) from a write that may succeed later."""
    cause = getattr(exc, "cause", exc)
    return isinstance(cause, OSError) and getattr(cause, "errno", None) not in PERMANENT_WRITE_ERRNOS


class UnavailableError(OSError):
    """Not tried: every call in this worker has failed for longer than the retry budget."""


#: Distinct failed calls, with no success since, that make an outage (one unreadable file does not).
OUTAGE_CALLS = 3


class Retrier:
    """Calls a function until it succeeds, a failure is not retryable, or the time budget is spent."""

    def __init__(self, budget_s: float, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = budget_s
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # the first store-wide failure since the last success
        self._failed_calls = 0  # calls that failed store-wide since the last success
        self._last_try = 0.0
        self._last_error = ""

    def call(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        start, delay, counted = self._clock(), FIRST_DELAY_S, False
        while True:
            self._check_outage()
            try:
                result = fn()
            except Exception as exc:
                if not retryable(exc):
                    raise
                now, outage = self._clock(), 0.0
                if store_wide(exc):
                    with self._lock:
                        if self._failing_since is None:
                            self._failing_since = now
                        self._failed_calls += 0 if counted else 1
                        self._last_try, self._last_error = now, (str(exc).splitlines() or [type(exc).__name__])[0]
                        outage = now - self._failing_since
                    counted = True
                left = start + self.budget_s - now
                if left <= 0 or outage >= self.budget_s:
                    raise
                self._sleep(min(delay * random.uniform(0.5, 1.0), left))
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            with self._lock:
                self._failing_since, self._failed_calls = None, 0
            return result

    def _check_outage(self) -> None:
        """Raise instead of trying while an outage outlasts the budget (but let a probe through now and then)."""
        with self._lock:
            if self._failing_since is None or self._failed_calls < OUTAGE_CALLS:
                return
            now = self._clock()
            outage = now - self._failing_since
            if outage < self.budget_s or now - self._last_try >= MAX_DELAY_S:
                self._last_try = now
                return
            # No figures in the text: the rows of one outage give one reason (fruitlens.state.ledger.error_reasons).
            raise UnavailableError(f"not tried: the store failed every call of this worker for longer than the "
                                   f"retries (last error: {self._last_error})")


_RETRIERS: dict[tuple[str, float], Retrier] = {}


def for_worker(store: str, budget_s: float) -> Retrier:
    """The worker process's retrier for one store (INPUT's, OUTPUT's): its tasks and threads share its
    outage clock, and a store that works (OUTPUT on local disk) does not hide another's outage."""
    key = (store, budget_s)
    if key not in _RETRIERS:
        _RETRIERS[key] = Retrier(budget_s)
    return _RETRIERS[key]
