"""`make bench-serve`'s script end to end on a tiny predictor (short phases): it reports percentiles, batch
sizes and the ceiling, and the hostile payloads are what they claim."""
from __future__ import annotations

import io
import json

import pytest
from conftest import SAMPLE, real_images
from PIL import Image
from serve_support import write_predictor

from fruitlens.bench import serve as bench
from fruitlens.bench import serve_payloads as hostile


def test_bench_serve_smoke_reports_percentiles_and_batch_sizes(tmp_path, capsys):
    out = tmp_path / "out"
    write_predictor(out)
    original = (out / "predictor/predictor.json").read_text()
    code = bench.main([str(out), str(SAMPLE / "Test"), "--seconds", "1", "--clients", "1,4", "--threads", "1",
                       "--json", str(tmp_path / "serve.json")])
    figures = json.loads((tmp_path / "serve.json").read_text())
    text = capsys.readouterr().out
    assert code in (0, 1) and "engine ceiling" in text and ("PASS" in text or "FAIL" in text)
    assert figures["ceiling_photos_s"] > 0 and figures["cpu"]
    assert [(p["clients"], p["hostile_clients"], p["swap"]) for p in figures["phases"]] == [
        (1, 0, False), (4, 0, False), (1, 4, False), (32, 4, False), (32, 0, True)]
    for p in figures["phases"]:
        assert p["errors"] == 0
        if p["ok"]:  # a 1 s phase on a busy machine may see no request of its own finish (percentiles: nan)
            assert p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] and p["batch_mean"] >= 1
    assert figures["phases"][0]["ok"] > 0
    for h in figures["phases"][2:4]:
        assert h["hostile_sent"] > 0 and h["hostile_wrong"] == []
    swap = figures["phases"][-1]  # a newer model published a quarter in is served, with no failed request
    assert len(swap["model_versions"]) == 2 and swap["overloaded"] == 0
    assert (out / "predictor/predictor.json").read_text() == original  # the bench swapped a private copy


def test_hostile_payloads_are_what_they_claim():
    bomb = hostile.png_bomb(4000)
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.format == "PNG" and img.size == (4000, 4000)
    assert len(bomb) < 4000 * 4000 * 3 / 100  # compressed over 100:1
    jpeg = real_images(per_class=1, classes=1)[0].read_bytes()
    with pytest.raises(Image.DecompressionBombError, match="900000000 pixels"):  # 30000 x 30000 declared
        Image.open(io.BytesIO(hostile.jpeg_huge_header(jpeg)))
    with Image.open(io.BytesIO(hostile.gif())) as img:
        assert img.format == "GIF"
