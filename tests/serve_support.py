"""Helpers of the `fruitlens serve` tests: a tiny predictor as train writes it, a real uvicorn on a free port."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np


def tiny_engine(path: Path) -> None:
    """A stand-in for MobileNetV2 with its interface: (N,224,224,3) float → (N,3) channel means."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["Identity:0"], axes=[1, 2], keepdims=0)], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
        [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_predictor(output: Path, seed: int = 0, labels=("a", "b", "c"), trained_at: str = "2026-01-01T00:00:00+00:00") -> Path:
    """OUTPUT/predictor as `fruitlens train` writes it: the other files, then predictor.json last."""
    rng = np.random.default_rng(seed)
    folder = output / "predictor"
    staging = output / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    tiny_engine(staging / "model.onnx")
    np.savez(staging / "head.npz", coefficients=rng.normal(size=(len(labels), 2)) * 5,
             intercepts=rng.normal(size=len(labels)), mean=np.zeros(3), scale=np.ones(3),
             components=rng.normal(size=(3, 2)))
    (staging / "labels.json").write_text(json.dumps(list(labels)))
    info = {"on": "pca", "classes": len(labels), "accuracy": round(0.5 + seed / 100, 4),
            "engine_sha256": hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest(),
            "precision": "fp32", "image_size": 224, "trained_at": trained_at}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("head.npz", "labels.json", "model.onnx"):
        shutil.copyfile(staging / name, folder / name)
    (folder / "predictor.json").write_text(json.dumps(info))
    shutil.rmtree(staging)
    return folder


class Server:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread (signals are not installed off main)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    @property
    def service(self):
        return self.app.state.service

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, h, data = self.request(method, path, body, headers)
        return status, h, json.loads(data)

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = self.json("GET", "/readyz")
            if status == 200:
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fruitlens-boundary") -> tuple[bytes, str]:
    """(field, filename or None, bytes) → (body, content type)."""
    out = b""
    for field, filename, data in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"
