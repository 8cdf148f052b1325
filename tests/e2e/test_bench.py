"""`fruitlens bench` keeps working and reports consistent figures (no speed is asserted: a noisy
machine makes timed tests flaky; speed lives in docs/performance.md, measured by `make bench`)."""
from __future__ import annotations

import json
import os
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
        # 24 photos would be featurized in the driver: the bench's figures are of the Spark workers' path
        env={**os.environ, "FRUITLENS_DRIVER_MAX_IMAGES": "0"},
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
    # The ratio uses the ceilings measured right before and right after the run, averaged.
    before, after, mean = (run["ceilings"][k]["work_ceiling_images_per_s"] for k in ("before", "after", "mean"))
    assert before == ceil["work_ceiling_images_per_s"] and mean == pytest.approx((before + after) / 2, abs=0.01)
    assert run["extract_vs_work_ceiling"] == pytest.approx(run["extract_images_per_s"] / mean, abs=1e-3)
    assert run["extract_vs_best_work_ceiling"] <= run["extract_vs_work_ceiling"]
    assert float(lines["extract_vs_work_ceiling_24"]) == run["extract_vs_work_ceiling"]
    assert run["peak_rss_mb"]["workers_mb"] > 0  # the Python workers were seen
    assert run["pca_k"] == 3


def test_a_failing_reference_run_is_recorded_and_the_bench_goes_on(tmp_path, monkeypatch):
    """The common approach can run out of memory on ~20k photos (its Arrow batches): the bench records
    why and keeps its other figures instead of ending without a JSON."""
    import argparse

    from fruitlens import bench

    def killed(cmd, env=None):
        raise bench.ProcessFailed(cmd, -9, "Traceback...\nMemoryError: Unable to allocate 5.6 GiB\n")

    monkeypatch.setattr(bench, "run_process", killed)
    result = bench.baseline_run(tmp_path / "in", tmp_path, argparse.Namespace(pca_k=3, limit=None))
    assert "SIGKILL" in result["failed"] and "Unable to allocate 5.6 GiB" in result["failed"]
