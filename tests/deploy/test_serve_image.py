"""The slim serving image (`make build-serve`): no Spark, JVM, TensorFlow or boto3, its size reported, and it
answers a real photo as the host's predictor does, read-only and as uid 185."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import real_images
from serve_support import write_predictor

from fruitlens.classify.predictor import Predictor

pytestmark = [pytest.mark.docker, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_serve_image_has_no_spark_jvm_tensorflow_or_boto3(serve_image):
    code = ("import importlib.util as u, shutil; import fruitlens.serve.app; "
            "print([m for m in ('pyspark', 'tensorflow', 'boto3', 'botocore', 'py4j') if u.find_spec(m)], "
            "shutil.which('java'))")
    out = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", serve_image, "-c", code],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[] None"


def test_serve_image_answers_like_the_host_read_only_non_root(serve_image, tmp_path):
    out = tmp_path / "out"
    write_predictor(out)
    os.chmod(tmp_path, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"fruitlens-serve-test-{port}"
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o755)
    (conf / "serve.yaml").write_text("threads: 1\nmax_batch: 8\n")  # a settings file, read as in a pod
    (conf / "serve.yaml").chmod(0o644)
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--read-only",
                    "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    "-v", f"{out}:/model:ro", "-v", f"{conf}:/conf:ro", "-e", "FRUITLENS_SERVE_CONFIG=/conf/serve.yaml",
                    serve_image, "/model", "--host", "127.0.0.1", "--port", str(port)],
                   check=True, capture_output=True, timeout=120)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, subprocess.run(["docker", "logs", name], capture_output=True,
                                                               text=True).stderr[-3000:]
            time.sleep(0.5)
        photo = real_images(per_class=1, classes=1)[0].read_bytes()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=photo,
                                     headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=30) as r:
            got = json.loads(r.read())
        want = Predictor.load(str(out)).predict_bytes(["x"], [photo])[0]
        assert got["label"] == want["label"]
        user = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user == "185"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
