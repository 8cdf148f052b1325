"""Finding 9 of issue 9: in a pod the image's model cache is on a read-only root filesystem; a custom
``.h5`` needs an ONNX export, which must go to a writable place (TMPDIR) and say so in the log."""
from __future__ import annotations

from pathlib import Path

import pytest

from fruitlens import engines
from fruitlens.engines import model


@pytest.fixture
def weights(tmp_path) -> Path:
    w = tmp_path / "custom.h5"
    w.write_bytes(b"not really weights: the export is replaced below")
    return w


def _fake_export(calls):
    def export(weights_path, out_path, image_size=224):
        calls.append(Path(out_path))
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_bytes(b"onnx")
        return Path(out_path)
    return export


def test_export_falls_back_to_tmpdir_when_the_cache_cannot_be_written(tmp_path, weights, monkeypatch, capsys):
    blocker = tmp_path / "ro"
    blocker.write_text("a file where the cache folder would be: mkdir fails as on a read-only filesystem")
    monkeypatch.setenv("FRUITLENS_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(model.tempfile, "tempdir", None)  # re-read TMPDIR
    calls: list[Path] = []
    monkeypatch.setattr(model, "export_onnx", _fake_export(calls))

    artifact = engines.prepare_model("onnx", str(weights))

    assert calls == [tmp_path / "tmp" / "fruitlens-cache" / calls[0].name]
    assert artifact.path == str(calls[0]) and artifact.engine == "onnx"
    err = capsys.readouterr().err
    assert f"model cache {blocker / 'cache'} is not writable" in err and str(tmp_path / "tmp") in err

    engines.prepare_model("onnx", str(weights))  # the fallback export is reused, not made again
    assert len(calls) == 1


def test_a_writable_cache_is_used_as_before(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setenv("FRUITLENS_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []
    monkeypatch.setattr(model, "export_onnx", _fake_export(calls))
    artifact = engines.prepare_model("onnx", str(weights))
    assert Path(artifact.path).parent == tmp_path / "cache"
    assert "not writable" not in capsys.readouterr().err
