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
    lines = dict(re.findall(r"^([a-z_0-9]+): (.+)$", out, flags=re.M))
    for key in ("processor", "cpu_flags", "model_ceiling_images_per_s", "decode_images_per_s_per_core",
                "work_ceiling_images_per_s", "process_images_per_s_24", "extract_images_per_s_24",
                "extract_vs_work_ceiling_24", "pipeline_vs_model_ratio_24", "stage_extract_inference_s_24",
                "stage_pca_s_24", "peak_rss_workers_mb_24", "json"):
        assert key in lines, f"{key} missing from:\n{out}"
    report = json.loads((tmp_path / "bench.json").read_text())
    ceil, [run] = report["ceilings"], report["runs"]
    assert run["images"] == 24 and report["machine"]["cpus"] >= 1
    # The work's ceiling combines the two measured rates: it is below each of them.
    assert ceil["work_ceiling_images_per_s"] < min(ceil["engine_images_per_s"],
                                                   ceil["decode_images_per_s_per_core"] * report["machine"]["cpus"])
    assert run["extract_vs_work_ceiling"] == pytest.approx(
        run["extract_images_per_s"] / ceil["work_ceiling_images_per_s"], abs=1e-3)
    assert float(lines["extract_vs_work_ceiling_24"]) == run["extract_vs_work_ceiling"]
    assert run["peak_rss_mb"]["workers_mb"] > 0  # the Python workers were seen
    assert run["pca_k"] == 3
