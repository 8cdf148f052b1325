"""Transient vs permanent, without Spark: what a worker retries, for how long, and what it records.

The end-to-end proofs (a real S3 server stopped mid-run, a file unreadable for one run) are in
test_faults_e2e.py; these pin the rules on a fake clock and real local files.
"""
from __future__ import annotations

import errno
import os

import pytest

from fruitlens.config import PipelineConfig
from fruitlens.featurize import _commit, _decode
from fruitlens.pipeline import ErrorRateError, check_error_rate, worker_error
from fruitlens.progress import ProgressClient
from fruitlens.state import schema
from fruitlens.state.layout import ERRORS
from fruitlens.storage import retry
from fruitlens.storage.store import Store, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def flaky(failures: int, exc: Exception, clock: Clock | None = None, cost: float = 0.0):
    calls = []

    def fn():
        calls.append(1)
        if clock:
            clock.now += cost
        if len(calls) <= failures:
            raise exc
        return b"ok"
    return fn, calls


def test_a_failure_that_passes_is_retried_with_growing_delays():
    clock = Clock()
    r = retry.Retrier(45, sleep=clock.sleep, clock=clock)
    fn, calls = flaky(4, OSError("AWS Error SLOW_DOWN during GetObject operation: 503 Slow Down"))
    assert r.call(fn, retry.retryable_read) == b"ok" and len(calls) == 5
    for i, slept in enumerate(clock.slept):  # 0.5 s, 1 s, 2 s, 4 s, each jittered down by up to half
        assert 0.25 * 2 ** i <= slept <= 0.5 * 2 ** i


def test_retries_stop_at_the_budget_and_a_vanished_file_is_not_retried():
    clock = Clock()
    r = retry.Retrier(30, sleep=clock.sleep, clock=clock)
    fn, calls = flaky(10**6, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):
        r.call(fn, retry.retryable_read)
    assert 29 <= clock.now <= 30.01 and len(calls) > 4
    fn, calls = flaky(1, FileNotFoundError(errno.ENOENT, "No such file or directory"))
    with pytest.raises(FileNotFoundError):
        r.call(fn, retry.retryable_read)
    assert len(calls) == 1


def test_after_an_outage_longer_than_the_budget_the_other_files_are_not_tried_until_a_probe_succeeds():
    clock = Clock()
    r = retry.Retrier(10, sleep=clock.sleep, clock=clock)
    down = OSError("AWS Error NETWORK_CONNECTION during GetObject operation: Couldn't connect to server")
    with pytest.raises(OSError):
        r.call(flaky(10**6, down)[0], retry.retryable_read)  # the first file waits the whole budget
    waited = clock.now
    for _ in range(2):  # the next ones: one attempt each, no waiting (files x budget would be hours)
        fn, calls = flaky(10**6, down)
        with pytest.raises(OSError):
            r.call(fn, retry.retryable_read)
        assert len(calls) == 1
    for _ in range(100):  # then not even tried: a failing S3 call costs seconds of the SDK's own retries
        fn, calls = flaky(10**6, down)
        with pytest.raises(retry.UnavailableError, match=r"not tried: the store failed every call of this worker "
                                                         r"for longer than the retries \(last error: AWS Error "
                                                         r"NETWORK_CONNECTION"):
            r.call(fn, retry.retryable_read)
        assert calls == []
    assert clock.now == waited
    clock.now += 8  # a probe goes through every 8 s: the server is back
    assert r.call(flaky(0, down)[0], retry.retryable_read) == b"ok"
    fn, calls = flaky(2, down)
    assert r.call(fn, retry.retryable_read) == b"ok" and len(calls) == 3  # a new blip is retried again


def test_unreadable_files_are_retried_each_on_their_own_and_never_make_an_outage():
    clock = Clock()
    r = retry.Retrier(10, sleep=clock.sleep, clock=clock)
    locked = PermissionError(errno.EACCES, "Permission denied")
    for _ in range(5):  # five in a row (a folder of another user's files)
        fn, calls = flaky(10**6, locked)
        with pytest.raises(PermissionError):
            r.call(fn, retry.retryable_read)
        assert len(calls) > 3  # retried for the whole budget, each
    assert clock.now >= 5 * 9
    fn, calls = flaky(0, locked)
    assert r.call(fn, retry.retryable_read) == b"ok" and len(calls) == 1  # the next file is read, not skipped


def test_writes_are_retried_except_on_a_full_disk():
    clock = Clock()
    r = retry.Retrier(10, sleep=clock.sleep, clock=clock)
    full = StoreError("cannot write x: no space left", OSError(errno.ENOSPC, "No space left on device"))
    fn, calls = flaky(10**6, full)
    with pytest.raises(StoreError):
        r.call(fn, retry.retryable_write)
    assert len(calls) == 1
    net = StoreError("cannot write x", OSError("AWS Error NETWORK_CONNECTION during PutObject operation"))
    fn, calls = flaky(3, net)
    assert r.call(fn, retry.retryable_write) == b"ok" and len(calls) == 4


class FlakyStore(Store):
    """A real local store whose reads of some files fail a given number of times first."""

    def __init__(self, uri: str, failures: dict[str, int], exc: OSError) -> None:
        super().__init__(uri)
        self.failures, self.exc = failures, exc

    def read_bytes(self, path: str) -> bytes:
        name = os.path.basename(path)
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise self.exc
        return super().read_bytes(path)


def test_decode_and_read_errors_are_told_apart_and_committed_with_their_kind(tmp_path):
    import pyarrow.parquet as pq
    from conftest import real_images

    photo = real_images(per_class=1, classes=1)[0].read_bytes()
    (tmp_path / "in").mkdir()
    for name, data in {"good.jpg": photo, "blip.jpg": photo, "locked.jpg": photo, "text.jpg": b"not a photo"}.items():
        (tmp_path / "in" / name).write_bytes(data)
    source = FlakyStore(f"file://{tmp_path / 'in'}", {"blip.jpg": 2, "locked.jpg": 10**6},
                        PermissionError(errno.EACCES, "Permission denied"))
    rows = [(f"file:{tmp_path}/in/{n}", 1, 7) for n in ("good.jpg", "blip.jpg", "locked.jpg", "text.jpg", "gone.jpg")]
    decoded = _decode(rows, source, None, 96, retry.Retrier(1.5))
    assert [rows[i][0].rsplit("/", 1)[1] for i in decoded.ok] == ["good.jpg", "blip.jpg"]
    kinds = {rows[i][0].rsplit("/", 1)[1]: e for i, e in enumerate(decoded.errors) if e}
    assert kinds["locked.jpg"][0] == "read" and "retried for 1.5 s" in kinds["locked.jpg"][1]
    assert kinds["gone.jpg"][0] == "read" and "vanished since the listing" in kinds["gone.jpg"][1]
    assert kinds["text.jpg"] == ("decode", "not an image PIL can identify")

    out = Store(f"file://{tmp_path / 'out'}")
    out.make_dirs("features", "errors")
    import numpy as np

    summary = _commit(out, decoded, np.zeros((2, 1280), np.float32), 0.0, ProgressClient(None))
    assert summary[1:5] == (5, 2, 3, 2)  # images, features, errors, of which read errors
    table = pq.read_table(next((tmp_path / "out" / ERRORS).glob("*.parquet")))
    assert table.schema.names == ["path", "error", "kind", "size", "modified"]
    assert sorted(table.column("kind").to_pylist()) == ["decode", "read", "read"]


def counts(matched: int, decode: int, read: int) -> dict:
    return {"matched": matched, "features": matched - decode - read, "errors": decode + read,
            "decode_errors": decode, "read_errors": read}


def test_more_errors_than_the_bound_fail_the_run_naming_counts_and_reasons(tmp_path):

    out = Store(f"file://{tmp_path}")
    out.make_dirs("errors")
    reason = "cannot read file (retried for 45 s): When reading information for key 'in/a.jpg' in bucket 'b': " \
             "AWS Error NETWORK_CONNECTION during HeadObject operation"
    out.write_table("errors/x.parquet", schema.errors_table(
        [f"s3://b/in/{i}.jpg" for i in range(6)], [reason.replace("a.jpg", f"{i}.jpg") for i in range(5)]
        + ["not an image PIL can identify"], ["read"] * 5 + ["decode"], [1] * 6, [7] * 6))
    config = PipelineConfig(output="o")
    check_error_rate(config, out, counts(120, 1, 5))  # 5 % exactly: within the bound
    with pytest.raises(ErrorRateError) as failed:
        check_error_rate(config, out, counts(100, 1, 5))
    line = str(failed.value)
    assert line.startswith("6 of 100 images (6.0%) ended as errors (1 decode, 5 read), more than --max-error-rate "
                           "0.05 allows; commonest: 5x read: cannot read file (retried for 45 s): When reading "
                           "information for key '…' in bucket '…': AWS Error NETWORK_CONNECTION")
    assert "1x decode: not an image" in line and "read errors are retried by the next run" in line
    assert "\n" not in line
    check_error_rate(PipelineConfig(output="o", max_error_rate=0), out, counts(6, 1, 5))  # 0: no bound


def test_a_fruitlens_error_in_a_worker_becomes_the_one_line_of_the_failed_job():
    text = ("An error occurred while calling o123.collectAndServe.\n: org.apache.spark.SparkException: Job aborted"
            " due to stage failure: Task 0 in stage 1.0 failed 1 times, most recent failure: Lost task 0.0: "
            "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
            '  File "/x/featurize.py", line 99, in _commit\n'
            "fruitlens.storage.store.StoreError: cannot write file:/full/out/features/part-1.parquet: no space left on the "
            "device (or over quota): free space there, then re-run the same command\n\n"
            "\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(...)\n")
    error = worker_error(RuntimeError(text))
    assert str(error).startswith("cannot write file:/full/out/features/part-1.parquet: no space left on the device")
    assert worker_error(RuntimeError("java.lang.OutOfMemoryError: Java heap space")) is None
