"""The commit layer without Spark: the plan of what to reuse/process/drop, atomic writes, the lock.

Real files on local disk (the same layer against a real S3 server: test_resume_s3.py).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pytest

from fruitlens.state import ledger, schema
from fruitlens.state.ledger import CommittedFile, SourceFile, batch_name, plan
from fruitlens.state.lock import LOCK, LockedError, RunLock
from fruitlens.state.manifest import OutputExistsError, check_settings
from fruitlens.storage.store import Store


def src(path: str, size: int = 10, t: int = 1) -> SourceFile:
    return SourceFile(f"file:/in/{path}", size, t)


def committed(name: str, rows: list[SourceFile], mtime: int = 1, kind: str = "features") -> CommittedFile:
    return CommittedFile(kind, f"/out/{kind}/{name}", mtime, tuple((r.path, r.size, r.modified_us) for r in rows))


def test_a_fresh_output_processes_everything_and_a_finished_one_nothing():
    listing = [src("a"), src("b"), src("c")]
    first = plan([], listing)
    assert [s.path for s in first.todo] == [s.path for s in listing]
    assert first.counts() == {"reused": 0, "new": 3, "changed": 0, "removed": 0, "retried": 0}
    again = plan([committed("p1", listing[:2]), committed("e1", listing[2:], kind="errors")], listing)
    assert again.todo == [] and again.counts() == {"reused": 3, "new": 0, "changed": 0, "removed": 0, "retried": 0}
    assert again.kept == {"features": 2, "errors": 1} and again.delete == [] and again.rewrite == []


def test_new_changed_and_removed_images_are_told_apart():
    old = [src("a"), src("b"), src("c"), src("d")]
    index = [committed("p1", old[:2]), committed("p2", old[2:])]
    listing = [src("a"), src("b", size=11), src("c", t=2), src("e")]  # d vanished, e is new
    p = plan(index, listing)
    assert [s.path for s in p.todo] == ["file:/in/b", "file:/in/c", "file:/in/e"]
    assert p.counts() == {"reused": 1, "new": 1, "changed": 2, "removed": 1, "retried": 0}
    assert p.delete == ["/out/features/p2"]  # c (old version) and d: nothing left
    (f, keep), = p.rewrite
    assert f.path == "/out/features/p1" and keep == [True, False]


def test_an_empty_listing_removes_every_committed_row():
    p = plan([committed("p1", [src("a"), src("b")])], [])
    assert p.todo == [] and p.counts() == {"reused": 0, "new": 0, "changed": 0, "removed": 2, "retried": 0}
    assert p.delete == ["/out/features/p1"]


def test_a_crash_between_writing_a_rewrite_and_deleting_the_old_file_leaves_no_duplicate():
    a, b, c = src("a"), src("b"), src("c")
    old = committed("old", [a, b, c], mtime=1)
    rewritten = committed("new", [a, b], mtime=2)  # c had vanished; the old file was never deleted
    for index in ([old, rewritten], [rewritten, old]):
        p = plan(index, [a, b])
        assert p.todo == [] and p.kept["features"] == 2
        assert p.delete == ["/out/features/old"] and p.rewrite == []
    # On S3 both files can carry the same second: the smaller file (the rewrite) still wins.
    p = plan([old, committed("new", [a, b], mtime=1)], [a, b])
    assert p.delete == ["/out/features/old"]


def test_duplicates_of_the_same_version_keep_exactly_one_row():
    a, b = src("a"), src("b")
    p = plan([committed("x", [a, b], mtime=5), committed("y", [b], mtime=9)], [a, b])
    assert p.reused == 2 and p.kept["features"] == 2
    (f, keep), = p.rewrite
    assert f.path == "/out/features/x" and keep == [True, False]


def test_a_read_error_is_no_verdict_the_next_run_processes_it_again_but_a_decode_error_is_kept():
    a, b, c, d = src("a"), src("b"), src("c"), src("d")
    errors = CommittedFile("errors", "/out/errors/e1", 1, tuple((r.path, r.size, r.modified_us) for r in (b, c, d)),
                           ("decode", "read", "read"))
    d2 = src("d", t=2)  # d changed since its read error
    p = plan([committed("p1", [a]), errors], [a, b, c, d2])
    assert [s.path for s in p.todo] == ["file:/in/c", "file:/in/d"]
    assert p.counts() == {"reused": 2, "new": 0, "changed": 1, "removed": 0, "retried": 1}
    assert p.kept == {"features": 1, "errors": 1}
    (f, keep), = p.rewrite
    assert f.path == "/out/errors/e1" and keep == [True, False, False]  # only the decode error stays


def test_error_files_record_their_kind_and_older_ones_without_it_hold_decode_errors(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.make_dirs("features", "errors")
    store.write_table("errors/new.parquet", schema.errors_table(
        ["file:/in/a", "file:/in/b"], ["not an image", "cannot read file"], ["decode", "read"], [1, 1], [7, 7]))
    old = schema.errors_table(["file:/in/c"], ["empty file (0 bytes)"], ["decode"], [1], [7]).drop_columns(["kind"])
    assert old.schema.names == ["path", "error", "size", "modified"]  # the layout before kinds
    store.write_table("errors/old.parquet", old)
    listing = [SourceFile(f"file:/in/{x}", 1, 7) for x in "abc"]
    p = plan(ledger.read_index(store), listing)
    assert [s.path for s in p.todo] == ["file:/in/b"] and p.retried == 1 and p.kept["errors"] == 2
    assert ledger.committed_rows(store) == {"features": 0, "errors": 3, "decode_errors": 2, "read_errors": 1}
    reasons = dict(ledger.error_reasons(store))
    assert reasons == {"decode: not an image": 1, "read: cannot read file": 1, "decode: empty file (0 bytes)": 1}


def test_batch_names_depend_on_content_not_order():
    rows = [("file:/a", 1, 2), ("file:/b", 3, 4)]
    assert batch_name(rows) == batch_name(rows[::-1])
    assert batch_name(rows) != batch_name([("file:/a", 1, 3), ("file:/b", 3, 4)])


def _features(store: Store, paths: list[str], sizes: list[int]) -> None:
    table = schema.features_table(paths, ["L"] * len(paths), [""] * len(paths), sizes, [7] * len(paths),
                                  np.ones((len(paths), 1280), np.float32))
    store.write_table(f"features/{batch_name(zip(paths, sizes, [7] * len(paths), strict=True))}", table)


def test_apply_rewrites_then_deletes_and_a_kill_in_between_is_repaired(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.make_dirs("features", "errors")
    _features(store, ["file:/in/a", "file:/in/b", "file:/in/c"], [1, 1, 1])
    listing = [SourceFile("file:/in/a", 1, 7), SourceFile("file:/in/b", 1, 7)]
    p = plan(ledger.read_index(store), listing)

    class Killed(Exception):
        pass

    def kill():
        raise Killed

    with pytest.raises(Killed):  # the process dies after writing the rewrite, before deleting the old file
        ledger.apply(store, p, after_write=kill)
    assert ds.dataset(str(tmp_path / "features")).count_rows() == 5  # a, b twice, c
    p = plan(ledger.read_index(store), listing)
    ledger.apply(store, p)
    table = ds.dataset(str(tmp_path / "features")).to_table()
    assert sorted(table.column("path").to_pylist()) == ["file:/in/a", "file:/in/b"]
    assert plan(ledger.read_index(store), listing).counts()["reused"] == 2


def test_an_atomic_write_in_progress_is_invisible_to_readers(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.make_dirs("features")
    _features(store, ["file:/in/a"], [1])
    seen = {}

    def midway():  # the temporary file exists, the final name does not yet
        seen["listed"] = [i.base_name for i in store.list("features")]
        seen["rows"] = ds.dataset(str(tmp_path / "features")).count_rows()
        seen["hidden"] = store.hidden_leftovers("features")

    store.write_text("features/x.txt", "partial", before_publish=midway)
    assert seen["rows"] == 1 and len(seen["listed"]) == 1 and len(seen["hidden"]) == 1
    assert (tmp_path / "features" / "x.txt").read_text() == "partial"
    assert store.hidden_leftovers("features") == []


def test_different_feature_settings_are_refused_naming_the_setting(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.make_dirs("_fruitlens")
    settings = {"input": "file:///in", "weights_sha256": "aaa", "image_size": [224, 224]}
    check_settings(store, settings, overwrite=False)
    check_settings(store, settings, overwrite=False)  # the same: fine
    message = r"weights_sha256='aaa', this run has weights_sha256='bbb'.*--overwrite"
    with pytest.raises(OutputExistsError, match=message):
        check_settings(store, {**settings, "weights_sha256": "bbb"}, overwrite=False)
    check_settings(store, {**settings, "weights_sha256": "bbb"}, overwrite=True)
    assert json.loads((tmp_path / "_fruitlens" / "settings.json").read_text())["weights_sha256"] == "bbb"


def test_a_second_run_is_refused_naming_the_first_then_gets_the_lock_once_released(tmp_path):
    store = Store(f"file://{tmp_path}")
    first = RunLock.acquire(store, command="fruitlens run a b", timeout_s=30)
    with pytest.raises(LockedError, match=rf"host {socket.gethostname()}, pid {os.getpid()}, started 20"):
        RunLock.acquire(store, command="again", timeout_s=30)
    first.release()
    assert not (tmp_path / LOCK).exists()
    RunLock.acquire(store, command="again", timeout_s=30).release()


def test_the_heartbeat_keeps_a_live_lock_fresh(tmp_path):
    store = Store(f"file://{tmp_path}")
    with RunLock.acquire(store, command="x", timeout_s=1.2):
        time.sleep(2.0)  # longer than the timeout: only the heartbeat keeps the lock from going stale
        with pytest.raises(LockedError):
            RunLock.acquire(store, command="y", timeout_s=1.2)


def _write_lock(tmp_path, **fields) -> None:
    (tmp_path / "_fruitlens").mkdir(exist_ok=True)
    lock = {"run_id": "x", "host": "elsewhere", "pid": 1, "started": time.time() - 100,
            "heartbeat": time.time(), "command": "c"}
    (tmp_path / LOCK).write_text(json.dumps({**lock, **fields}))


def test_a_stale_or_dead_lock_is_taken_over_with_a_message(tmp_path, capsys):
    store = Store(f"file://{tmp_path}")
    _write_lock(tmp_path, heartbeat=time.time() - 120)
    RunLock.acquire(store, command="c", timeout_s=60).release()
    assert "no heartbeat for 120 s" in capsys.readouterr().err

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid)
    RunLock.acquire(store, command="c", timeout_s=60).release()
    assert f"process {dead.pid} no longer exists on this host" in capsys.readouterr().err

    _write_lock(tmp_path)  # fresh, on another host: only --force-unlock takes it
    with pytest.raises(LockedError, match="host elsewhere, pid 1"):
        RunLock.acquire(store, command="c", timeout_s=60)
    RunLock.acquire(store, command="c", timeout_s=60, force=True).release()
    assert "--force-unlock" in capsys.readouterr().err


def test_a_run_that_lost_its_lock_stops_before_publishing(tmp_path):
    store = Store(f"file://{tmp_path}")
    lock = RunLock.acquire(store, command="c", timeout_s=0.6)
    _write_lock(tmp_path, run_id="someone-else")
    time.sleep(1.5)  # the heartbeat (every 0.5 s) notices
    with pytest.raises(LockedError, match="lost its lock"):
        lock.check()
    lock.release()
    assert json.loads((tmp_path / LOCK).read_text())["run_id"] == "someone-else"  # theirs is left alone


def test_status_tells_running_interrupted_and_foreign_outputs_apart(tmp_path, capsys):
    from fruitlens.cli import main
    from fruitlens.state.status import status

    assert status(str(tmp_path / "nothing"))["state"] == "missing"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.csv").write_text("a,b\n")
    assert status(str(tmp_path / "foreign"))["state"] == "not a fruitlens output"

    out = tmp_path / "out"
    store = Store(f"file://{out}")
    store.make_dirs("_fruitlens", "features", "errors")
    check_settings(store, {"input": "file:///in"}, overwrite=False)
    (out / "_fruitlens" / "run.json").write_text(json.dumps(
        {"run_id": "r", "command": "fruitlens run /in /out", "host": "node-1", "pid": 7,
         "start": "2026-11-25T07:00:00Z", "history": []}))
    _features(store, ["file:/in/a", "file:/in/b"], [1, 2])
    _write_lock(out, host="node-1", pid=7)
    running = status(str(out))
    assert running["state"] == "running" and running["committed"] == {"features": 2, "errors": 0, "decode_errors": 0,
                                                                      "read_errors": 0}
    _write_lock(out, host="node-1", pid=7, heartbeat=time.time() - 600)
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert ": interrupted" in text and "committed so far: 2 features, 0 errors: 0 decode, 0 read" in text
    assert "re-run the same command to continue it" in text and "stale: no heartbeat for 600 s" in text


def test_a_retried_driver_waits_for_its_dead_predecessors_lock_to_go_stale_then_continues(tmp_path, capsys):
    """EMR's retry attempt / a Job's next pod starts seconds after the driver died, on another host: with
    lock_wait it waits for the dead run's heartbeat to age past the timeout instead of failing."""
    store = Store(f"file://{tmp_path}")
    _write_lock(tmp_path, heartbeat=time.time() - 0.5)  # another host, heartbeat half a second old
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the clock moves as the lock ages: no real waiting
        waits.append(seconds)
        lock = json.loads((tmp_path / LOCK).read_text())
        lock["heartbeat"] -= seconds
        (tmp_path / LOCK).write_text(json.dumps(lock))

    with pytest.raises(LockedError):  # no wait: refused at once, as a concurrent run must be
        RunLock.acquire(store, command="c", timeout_s=2, sleep=sleep)
    assert waits == []
    RunLock.acquire(store, command="c", timeout_s=2, wait_s=30, sleep=sleep).release()
    err = capsys.readouterr().err
    assert "waiting up to 30 s" in err and "taking over the lock of a run that is gone" in err
    assert waits and sum(waits) < 30


def test_lock_wait_still_refuses_a_live_run_once_the_wait_is_over(tmp_path):
    store = Store(f"file://{tmp_path}")
    with RunLock.acquire(store, command="x", timeout_s=30):
        t = time.monotonic()
        with pytest.raises(LockedError, match="in use by another fruitlens run"):
            RunLock.acquire(store, command="y", timeout_s=30, wait_s=1.0, sleep=time.sleep)
        assert time.monotonic() - t >= 1.0


def test_feature_tasks_shrink_towards_the_end_and_cover_every_image_once():
    from fruitlens.featurize import even_sizes, task_sizes

    sizes = task_sizes(19_611, 2)
    assert sum(sizes) == 19_611 and max(sizes) == 2500
    assert sizes == sorted(sizes, reverse=True)  # big tasks first, small ones last
    assert sizes[-1] <= 2 * 256  # a slower worker idles the other for one small task at most
    assert task_sizes(2170, 2) == [543, 407, 403, 305, 256, 256]
    assert task_sizes(100, 2) == [100]  # below one commit batch: a single task
    assert task_sizes(0, 2) == []
    for n in (1, 255, 257, 999, 5001, 123_456):
        for slots in (1, 2, 3, 16, 40):
            sizes = task_sizes(n, slots)
            assert sum(sizes) == n and all(256 <= s <= 2500 for s in sizes[:-1]) and 0 < sizes[-1] <= 2500 + 256
    assert even_sizes(10, 3) == [4, 3, 3] and even_sizes(2, 5) == [1, 1]


@pytest.mark.parametrize("content", [b"", b"{\"run_id\": \"x\", \"hea", b"\xff\xfe\x00"])
def test_an_empty_or_garbled_lock_file_goes_stale_by_its_age_and_status_stops_saying_starting(
        tmp_path, capsys, content):
    """A run that died between creating its lock and writing it (a full disk) left a lock with no holder
    in it: it must not block OUTPUT for good."""
    from fruitlens.state.status import status

    store = Store(f"file://{tmp_path}")
    (tmp_path / "_fruitlens").mkdir()
    (tmp_path / LOCK).write_bytes(content)
    with pytest.raises(LockedError, match="empty or unreadable lock file"):  # fresh: it may be being written
        RunLock.acquire(store, command="c", timeout_s=60)
    assert status(str(tmp_path), lock_timeout=60)["state"] == "starting"

    old = time.time() - 30
    os.utime(tmp_path / LOCK, (old, old))
    report = status(str(tmp_path), lock_timeout=10)
    assert report["state"] == "interrupted" and "no heartbeat for 30 s" in report["lock"]["stale"]
    capsys.readouterr()
    lock = RunLock.acquire(store, command="c", timeout_s=10)
    assert "taking over the lock of a run that is gone (an empty or unreadable lock file" in capsys.readouterr().err
    assert json.loads((tmp_path / LOCK).read_text())["run_id"] == lock.run_id
    lock.release()


# The rules as the pure-Python plan spelt them (before the plan was vectorised): the reference the
# vectorised plan must equal, on random indexes with duplicates, stale rows, read errors and both kinds
# of rows (tuples, and views of one shared table as read_index makes them).
def reference_plan(index, listing):
    """Decide what to keep, drop and process (see the module docstring for the rules)."""
    wanted = {f.path: f.version for f in listing}
    # Of all rows of a path with the listed version, keep the one in the newest file (ties: the
    # smaller file, which is what a rewrite leaves; then the name, for a deterministic choice).
    ranked = sorted(index, key=lambda f: (-f.mtime_ns, len(f.rows), f.path))
    winner: dict[str, str] = {}
    seen: set[str] = set()
    unread: set[str] = set()  # paths whose listed version has a read error: to process again
    for f in ranked:
        for i, (path, size, modified) in enumerate(f.rows):
            seen.add(path)
            if wanted.get(path) != (size, modified):
                continue
            if f.read_error(i):
                unread.add(path)
            elif path not in winner:
                winner[path] = f.path
    out = ledger.Plan(todo=[])
    for f in index:
        keep = [winner.get(path) == f.path for path, _, _ in f.rows]
        # A path can sit in one file twice only through a bug; keep its first row.
        first: set[str] = set()
        for i, (path, _, _) in enumerate(f.rows):
            if keep[i]:
                keep[i] = path not in first
                first.add(path)
        n = sum(keep)
        out.kept[f.kind] += n
        if n == 0:
            out.delete.append(f.path)
        elif n < len(f.rows):
            out.rewrite.append((f, keep))
    out.todo = sorted((s for s in listing if s.path not in winner), key=lambda s: s.path)
    out.reused = len(winner)
    out.retried = sum(1 for s in out.todo if s.path in unread)
    out.changed = sum(1 for s in out.todo if s.path in seen and s.path not in unread)
    out.new = len(out.todo) - out.changed - out.retried
    out.removed = len(seen - set(wanted))
    return out



@pytest.mark.parametrize("seed", range(12))
def test_the_vectorised_plan_equals_the_reference_rules(seed):
    rng = np.random.default_rng(seed)
    paths = [f"file:/in/{i:03d}.jpg" for i in range(60)]
    listing = [SourceFile(p, 10 + int(rng.integers(2)), 1 + int(rng.integers(2))) for p in paths
               if rng.random() < 0.8]
    index = []
    for n in range(int(rng.integers(1, 9))):
        chosen = rng.choice(len(paths), size=int(rng.integers(1, 15)), replace=bool(rng.random() < 0.2))
        # A path twice in one file (a bug's duplicate) carries one version there: of two versions in one file
        # the reference kept the first row, stale or not, the vectorised plan the listed one.
        version = {i: (10 + int(rng.integers(2)), 1 + int(rng.integers(2))) for i in set(chosen.tolist())}
        rows = tuple((paths[i], *version[i]) for i in chosen)
        kind = "errors" if rng.random() < 0.3 else "features"
        kinds = tuple(rng.choice(["decode", "read"]) for _ in rows) if kind == "errors" and rng.random() < 0.7 else ()
        index.append(CommittedFile(kind, f"/out/{kind}/f{n}", int(rng.integers(3)), rows, kinds))
    shared = ledger.shared_rows([ledger._rows_table(f.rows) for f in index])
    viewed = [CommittedFile(f.kind, f.path, f.mtime_ns, r, f.error_kinds) for f, r in zip(index, shared)]
    want = reference_plan(index, listing)
    for got in (plan(index, listing), plan(viewed, listing), plan(viewed, ledger.listing_table(listing))):
        assert got.todo == want.todo and got.counts() == want.counts() and got.kept == want.kept
        assert got.delete == want.delete
        assert [(f.path, keep) for f, keep in got.rewrite] == [(f.path, keep) for f, keep in want.rewrite]
