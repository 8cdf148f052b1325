"""INPUT and OUTPUT are checked before Spark's JVM starts: a wrong path fails at once, not after the
seconds of JVM start-up. INPUT is listed while the JVM starts (on its own thread): an INPUT without images
fails without waiting for it. No Spark here: a session start is recorded, then never comes up."""
from __future__ import annotations

import threading

import pytest
from conftest import real_images

from fruitlens.cli import main


@pytest.fixture(autouse=True)
def jvm_starts(monkeypatch):
    calls, release = [], threading.Event()

    def start(config):
        calls.append(config)
        release.wait(60)  # a check that waited for the JVM would hang here, then fail
        raise AssertionError("the run waited for the JVM to report a wrong INPUT or OUTPUT")

    monkeypatch.setattr("fruitlens.pipeline.build_session", start)
    yield calls
    release.set()


@pytest.mark.parametrize("command", ["run", "extract"])
def test_a_missing_or_imageless_input_fails_before_the_jvm(command, tmp_path, capsys, jvm_starts):
    assert main([command, str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert f"INPUT file://{tmp_path}/nope does not exist" in capsys.readouterr().err
    assert not jvm_starts
    (tmp_path / "empty" / "Test").mkdir(parents=True)
    assert main([command, str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_not_this_inputs_fails_before_the_jvm(tmp_path, capsys, jvm_starts):
    src = real_images(per_class=2, classes=1)[0].parents[1]
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "x.csv").write_text("not ours\n")
    assert main(["run", str(src), str(tmp_path / "out")]) == 1
    assert "is not a fruitlens output" in capsys.readouterr().err
    assert not jvm_starts


def test_pca_on_an_unfinished_output_fails_before_the_jvm(tmp_path, capsys):
    assert main(["pca", str(tmp_path)]) == 1
    assert "manifest.json not found" in capsys.readouterr().err
