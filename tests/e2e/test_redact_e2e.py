"""A real run with a secret in --conf leaves it in no file and no line (the slow half of tests/unit/test_redact.py).
"""
from __future__ import annotations

import json

import pytest

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS' documentation example keys
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.slow
def test_a_real_run_with_a_secret_in_conf_leaves_it_in_no_file_and_no_line(tmp_path):
    """`fruitlens run --conf …secret.key=… --report`: every file OUTPUT holds, and everything printed."""
    import subprocess
    import sys

    from conftest import real_images

    src = real_images(per_class=4, classes=2)[0].parents[1]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fruitlens", "run", str(src), str(out), "--pca-k", "2",
                           "--report", "--no-progress", "--conf", f"spark.hadoop.fs.s3a.secret.key={SECRET}",
                           "--conf", f"spark.hadoop.fs.s3a.access.key={KEY_ID}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "report" / "index.html").is_file() and (out / "manifest.json").is_file()
    for text in (done.stdout, done.stderr):
        assert SECRET not in text and KEY_ID not in text
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and KEY_ID.encode() not in data, path
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["spark_conf"]["spark.hadoop.fs.s3a.secret.key"] == "***"
    assert "fs.s3a.secret.key=***" in manifest["command"]
