"""What a user sees of a real run: only fruitlens' lines and the image progress; the first model export quiet
unless --verbose (the slow half of tests/unit/test_console.py).
"""
from __future__ import annotations

import os

import pytest

from fruitlens import console


@pytest.mark.slow
def test_a_default_run_prints_only_fruitlens_lines_with_image_progress(tmp_path):
    """What a user sees in a log file (EMR's driver log, kubectl logs): no Spark, JVM or TensorFlow line."""
    import subprocess
    import sys

    from conftest import SAMPLE

    with open(tmp_path / "stderr.txt", "w") as err:  # not a terminal
        done = subprocess.run([sys.executable, "-m", "fruitlens", "run", str(SAMPLE / "Test"), str(tmp_path / "out"),
                               "--limit", "300"], stdout=subprocess.PIPE, stderr=err, text=True, timeout=900)
    lines = (tmp_path / "stderr.txt").read_text().splitlines()
    assert done.returncode == 0, lines
    assert lines and all(ln.startswith("[fruitlens] ") for ln in lines), lines
    assert len(lines) <= 25
    assert any("/300 images" in ln for ln in lines)
    assert lines[-1].startswith("[fruitlens] done:")


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", ["normal", "verbose"])
def test_the_first_export_of_the_model_is_quiet_unless_verbose(verbosity, tmp_path):
    """A new machine exports the ONNX model once (TensorFlow); TF's absl/oneDNN start-up lines, which
    ignore TF_CPP_MIN_LOG_LEVEL, are not a user's business unless they ask for them."""
    import subprocess
    import sys

    script = ("import sys; from fruitlens import console; console.configure(sys.argv[1]); "
              "from fruitlens.engines import prepare_model; "
              "print(prepare_model('onnx', 'imagenet', image_size=96).path)")
    env = {**os.environ, "FRUITLENS_CACHE": str(tmp_path)}
    for key in console.QUIET_ENV:
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-c", script, verbosity], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(tmp_path))  # it did export, into the empty cache
    if verbosity == "normal":
        assert done.stderr == ""
    else:
        assert "oneDNN" in done.stderr or "absl" in done.stderr
