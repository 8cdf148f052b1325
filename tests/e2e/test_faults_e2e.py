"""Real faults, end to end: an S3 server that goes away mid-run, a file that cannot be read, a full disk,
Ctrl-C. Each run is `python -m fruitlens` on a few dozen real photos, as a user runs it.

The S3 server is SeaweedFS (`weed`, as in test_data_s3.py), on fixed ports and one data folder, so it
can be killed in the middle of a run (as a crashed or unreachable endpoint) and started again with its
data. A file is made unreadable with chmod 000; as root (which reads anything) the run is started
without the capabilities that bypass file permissions (setpriv), as any other user would run it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE
from test_data_s3 import BUCKET, CLASSES, WeedServer, _client, local_copy  # noqa: F401 - fixture

from fruitlens.deploy.s3data import staging as s3
from fruitlens.state.lock import LOCK

pytestmark = pytest.mark.slow

IMAGES = 2 * len(CLASSES) * 12  # local_copy: 12 photos per class and split


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = WeedServer(tmp_path_factory.mktemp("seaweedfs-outage"))
    server.start()
    yield server
    server.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "AWS_PROFILE")}
    return {**env, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any",
            "AWS_DEFAULT_REGION": "us-east-1"}


def start(*args: str, env: dict | None = None, log: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m fruitlens ...` in its own session, stderr to ``log`` (read while it runs)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "fruitlens", *args], env=env or dict(os.environ),
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> tuple[int, dict | None, str]:
    stdout, _ = proc.communicate(timeout=timeout)
    err = log.read_text()
    return proc.returncode, json.loads(stdout) if stdout.strip() else None, err


def wait_until(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


def rows(out: Path, kind: str) -> list[dict]:
    folder = out / kind
    return ds.dataset(str(folder), format="parquet").to_table().to_pylist() if folder.is_dir() else []


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[fruitlens]")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_an_s3_outage_of_seconds_mid_run_is_ridden_out_and_every_image_featurized(weed, local_copy, tmp_path):
    """INPUT and OUTPUT on S3; the server is killed once the first batches are committed, and started
    again 6 s later: the workers' reads and writes wait for it, and the run ends as if nothing happened."""
    client, prefix = _client(weed.endpoint), f"outage-{time.time_ns()}"
    src, out = f"s3://{BUCKET}/{prefix}/in", f"s3://{BUCKET}/{prefix}/out"
    s3.upload_tree(local_copy, src, s3=client, workers=8)
    env = s3_environment(weed.endpoint)
    log = tmp_path / "run.log"
    proc = start("extract", src, out, "--arrow-batch-size", "2", "--no-progress", env=env, log=log)

    def committed() -> list[str]:
        return [k for k, _ in s3.iter_objects(client, f"{out}/features/") if k.endswith(".parquet")]

    wait_until(lambda: len(committed()) >= 1, proc, log)
    before = len(committed())
    weed.stop(kill=True)
    time.sleep(6)
    weed.start()
    code, summary, err = finish(proc, log)
    assert code == 0, err[-3000:]
    assert summary["counts"]["features"] == IMAGES and summary["counts"]["errors"] == 0
    assert before < len(committed())  # the outage came mid-run
    paths = [p for key in committed() for p in pq.read_table(io.BytesIO(
        client.get_object(Bucket=BUCKET, Key=key)["Body"].read())).column("path").to_pylist()]
    assert len(paths) == len(set(paths)) == IMAGES  # every image once
    assert not [k for k, _ in s3.iter_objects(client, f"{out}/errors/") if k.endswith(".parquet")]
    assert "Traceback" not in err


def test_an_outage_longer_than_the_retries_fails_the_run_and_the_next_run_completes_it(weed, local_copy, tmp_path):
    """INPUT on S3 down for good after the first batches: the reads give up after --retry-timeout, the
    images become read errors, and the error-rate bound fails the run unpublished; once the server is
    back, the same command redoes exactly those images."""
    client, prefix = _client(weed.endpoint), f"long-outage-{time.time_ns()}"
    src, out = f"s3://{BUCKET}/{prefix}/in", tmp_path / "out"
    s3.upload_tree(local_copy, src, s3=client, workers=8)
    env = s3_environment(weed.endpoint)
    args = ("extract", src, str(out), "--arrow-batch-size", "2", "--no-progress", "--retry-timeout", "2")
    log = tmp_path / "first.log"
    proc = start(*args, env=env, log=log)
    wait_until(lambda: len(list((out / "features").glob("part-*.parquet"))) >= 1, proc, log)
    weed.stop(kill=True)
    try:
        code, summary, err = finish(proc, log)
    finally:
        weed.start()
    line = one_error_line(err)
    assert code == 1 and summary is None
    assert line.startswith("fruitlens: error: ") and "ended as errors (0 decode, " in line
    assert "more than --max-error-rate 0.05 allows; commonest: " in line and "x read: cannot read file" in line
    assert "read errors are retried by the next run" in line
    assert not (out / "manifest.json").exists() and not (out / LOCK).exists()
    kept = len(rows(out, "features"))
    unread = rows(out, "errors")
    assert kept >= 2 and unread and {r["kind"] for r in unread} == {"read"} and kept + len(unread) == IMAGES

    status = subprocess.run([sys.executable, "-m", "fruitlens", "status", str(out), "--json"], capture_output=True,
                            text=True, env=env)
    report = json.loads(status.stdout)
    assert report["state"] == "failed" and "ended as errors" in report["failed"]
    assert report["committed"]["read_errors"] == len(unread) and report["committed"]["decode_errors"] == 0

    code, summary, err = finish(start(*args, env=env, log=tmp_path / "second.log"), tmp_path / "second.log")
    assert code == 0, err[-3000:]
    assert summary["counts"] | {"processed": 0} == {
        "matched": IMAGES, "features": IMAGES, "errors": 0, "decode_errors": 0, "read_errors": 0, "processed": 0,
        "reused": kept, "new": 0, "changed": 0, "removed": 0, "retried": len(unread)}
    assert len(rows(out, "features")) == IMAGES and rows(out, "errors") == []
    history = json.loads((out / "manifest.json").read_text())["history"]
    assert [h["finished"] for h in history] == [False, True] and "ended as errors" in history[0]["failed"]


def without_file_permission_bypass() -> tuple[str, ...]:
    """As root, a command prefix dropping the capabilities that read any file; nothing for other users."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run as root without CAP_DAC_OVERRIDE"
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--")


def test_a_file_unreadable_in_one_run_is_featurized_by_the_next(tmp_path):
    src = tmp_path / "in"
    for label in ("Cherry 3", "Plum 5"):
        (src / "Test" / label).mkdir(parents=True)
        for image in sorted((SAMPLE / "Test" / label).glob("*.jpg"))[:12]:
            shutil.copyfile(image, src / "Test" / label / image.name)
    locked = next((src / "Test" / "Plum 5").glob("*.jpg"))
    locked.chmod(0)
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = ("extract", str(src), str(out), "--arrow-batch-size", "8", "--no-progress", "--retry-timeout", "1")
    code, summary, err = finish(start(*args, log=log, prefix=without_file_permission_bypass()), log)
    assert code == 0, err[-3000:]  # 1 of 24: within the default error-rate bound
    assert summary["counts"]["read_errors"] == 1 and summary["counts"]["features"] == 23
    (error,) = rows(out, "errors")
    assert error["kind"] == "read" and "Permission denied" in error["error"] and error["path"].endswith(locked.name)

    locked.chmod(0o644)
    code, summary, err = finish(start(*args, log=log), log)
    assert code == 0, err[-3000:]
    assert summary["counts"] | {"processed": 0} == {
        "matched": 24, "features": 24, "errors": 0, "decode_errors": 0, "read_errors": 0, "processed": 0,
        "reused": 23, "new": 0, "changed": 0, "removed": 0, "retried": 1}
    assert any(r["path"].endswith(locked.name) for r in rows(out, "features")) and rows(out, "errors") == []


def test_a_full_output_disk_is_one_line_naming_the_path(tmp_path):
    """OUTPUT on a 96 KiB file system (a tmpfs in a mount namespace of its own): the workers' batches
    fill it; the run ends with one line naming the file it could not write, no traceback."""
    src = SAMPLE / "Test" / "Cherry 3"
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "-o", "size=96k", "probe", str(disk)],
                           capture_output=True, text=True)
    assert probe.returncode == 0, ("this test mounts a small tmpfs in a mount namespace of its own: it needs root "
                                   f"(or CAP_SYS_ADMIN) and unshare from util-linux: {probe.stderr}")
    log = tmp_path / "run.log"
    script = ('mount -t tmpfs -o size=96k fruitlens-full "$1" && shift && exec "$@"')
    proc = subprocess.Popen(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(disk), sys.executable, "-m", "fruitlens", "extract",
         str(src), str(disk / "out"), "--arrow-batch-size", "4", "--no-progress", "--limit", "40"],
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True)
    code, summary, err = finish(proc, log)
    line = one_error_line(err)
    assert code == 1 and summary is None
    assert line.startswith(f"fruitlens: error: cannot write file:{disk}/out/") and "no space left" in line
    assert "re-run the same command" in line


def test_ctrl_c_mid_run_is_one_line_exit_130_and_the_lock_is_released(tmp_path):
    src = SAMPLE / "Test"
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = ("extract", str(src), str(out), "--arrow-batch-size", "8", "--no-progress", "--limit", "400")
    proc = start(*args, log=log)
    wait_until(lambda: any((out / "features").glob("part-*.parquet")), proc, log)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    code, summary, err = finish(proc, log, timeout=60)
    assert code == 130 and summary is None
    assert one_error_line(err) == ("fruitlens: interrupted (what was committed is kept: re-run the same command "
                                   "to continue)")
    assert not (out / LOCK).exists() and not (out / "manifest.json").exists()
    kept = len(rows(out, "features"))
    assert 0 < kept < 400

    code, summary, err = finish(start(*args, log=log), log)
    assert code == 0, err[-3000:]
    assert summary["counts"]["reused"] == kept and summary["counts"]["features"] == 400
