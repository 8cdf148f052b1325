"""What a run prints: the console levels, the JVM's stderr kept aside, image-level progress over UDP."""
from __future__ import annotations

import io
import logging
import os
import time

import pytest

from fruitlens import console
from fruitlens.progress import ImageProgress, ProgressClient, log


@pytest.fixture(autouse=True)
def _restore_console():
    yield
    console.configure("normal")


def test_quiet_hides_fruitlens_lines_but_normal_shows_them(capsys):
    console.configure("quiet")
    log("extract: hidden")
    console.configure("normal")
    log("extract: shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "[fruitlens] extract: shown" in err


def test_configure_sets_tensorflow_quiet_before_import(monkeypatch):
    for key in console.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    console.configure("normal")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    with pytest.raises(ValueError, match="verbosity must be one of"):
        console.configure("loud")


def test_jvm_options_point_at_the_shipped_log4j_file_unless_verbose():
    console.configure("normal")
    opts = console.jvm_options()
    assert opts == f"-Dlog4j2.configurationFile=file:{console.log4j_config()}"
    text = console.log4j_config().read_text()
    assert "rootLogger.level = error" in text
    console.configure("verbose")
    assert console.jvm_options() == f"-Dlog4j2.configurationFile={console.SPARK_DEFAULTS}"


def test_jvm_stderr_is_hidden_but_its_tail_is_dumped_on_failure(capsys):
    r, w = os.pipe()
    reader = console.JvmStderr(os.fdopen(r, "rb"), show=False, tail=3)
    with os.fdopen(w, "wb") as out:
        for i in range(5):
            out.write(f"WARN line {i}\n".encode())
    reader._thread.join(timeout=5)
    assert capsys.readouterr().err == ""
    assert list(reader.tail) == ["WARN line 2", "WARN line 3", "WARN line 4"]
    buf = io.StringIO()
    reader.dump(buf)
    assert "last lines from Spark's JVM" in buf.getvalue() and "WARN line 4" in buf.getvalue()


def test_workers_report_images_and_the_driver_counts_them():
    console.configure("normal")
    with ImageProgress("extract", enabled=False) as progress:
        progress.total = 1000
        client = ProgressClient(progress.address)
        for _ in range(4):
            client.add(256)
        deadline = time.monotonic() + 5
        while progress.done < 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert progress.done == 1024


def test_plain_lines_without_a_terminal_show_done_total_rate_and_eta():
    console.configure("normal")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    console.LOGGER.addHandler(handler)
    try:
        with ImageProgress("extract", interactive=False, every=0.2) as progress:
            progress.total = 2170
            client = ProgressClient(progress.address)
            client.add(1000)
            time.sleep(1.2)
    finally:
        console.LOGGER.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert any("extract: 1,000/2,170 images (46%)" in ln and "images/s" in ln and "ETA" in ln for ln in lines)
    assert lines[-1].startswith("extract: 2,170/2,170 images (100%)")


def test_a_client_with_no_driver_never_fails():
    client = ProgressClient(("127.0.0.1", 9))  # discard port: nobody listens, UDP does not care
    client.add(10)
    ProgressClient(None).add(10)


def test_a_failing_command_leaves_its_error_line_as_the_pods_termination_message(tmp_path, monkeypatch, capsys):
    """In a pod the kubelet shows this file's text as the termination message; Spark's shutdown output
    after the error can run past the 2 KiB log tail FallbackToLogsOnError would keep."""
    from fruitlens.cli import main

    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates it, empty
    monkeypatch.setattr(console, "TERMINATION_LOG", log)
    assert main(["run", str(tmp_path / "in"), str(tmp_path / "out"), "--pca-k", "0"]) != 0
    line = log.read_text().strip()
    assert line.startswith("fruitlens: error: --pca-k must be between 1 and 1280"), line
    assert line in capsys.readouterr().err


def test_outside_a_pod_no_termination_file_is_made(tmp_path, monkeypatch):
    from fruitlens.cli import main

    monkeypatch.setattr(console, "TERMINATION_LOG", tmp_path / "termination-log")
    assert main(["run", str(tmp_path / "in"), str(tmp_path / "out"), "--pca-k", "0"]) != 0
    assert not (tmp_path / "termination-log").exists()
