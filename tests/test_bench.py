"""`fruitlens bench` keeps working and reports consistent figures (no speed is asserted: a noisy
machine makes timed tests flaky; speed lives in docs/performance.md, measured by `make bench`)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import SAMPLE

pytestmark = pytest.mark.slow


def test_bench_prints_the_figures_a_script_reads_and_the_same_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fruitlens", "bench", str(SAMPLE / "Test"), "--limit", "24", "--skip-keras",
         "--ceiling-images", "32", "--pool", "16", "--pca-k", "3", "--workdir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    lines = dict(re.findall(r"^([a-z_]+): (.+)$", out, flags=re.M))
    for key in ("model_ceiling_images_per_s", "pipeline_images_per_s", "process_images_per_s",
                "pipeline_vs_model_ratio", "stage_inference_s", "stage_pca_s", "peak_rss_workers_mb", "json"):
        assert key in lines, f"{key} missing from:\n{out}"
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["images"] == 24 and report["pipeline"]["images"] == 24
    ratio = report["pipeline"]["pipeline_images_per_s"] / report["model_ceiling_images_per_s"]
    assert report["pipeline_vs_model_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert float(lines["pipeline_vs_model_ratio"]) == report["pipeline_vs_model_ratio"]
    assert report["pipeline"]["peak_rss_mb"]["workers_mb"] > 0  # the Python workers were seen
    assert report["pipeline"]["pca_k"] == 3
