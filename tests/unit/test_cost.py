"""The run's estimated cost (fruitlens.cost) and its section of the report, without Spark."""
from __future__ import annotations

import json

import pytest

from fruitlens.classify.report import cost_section, pca_note
from fruitlens.cost import DEFAULT_PRICES, PriceTableError, estimate, load_prices, pod_memory_gib, requested


def test_pods_request_heap_plus_sparks_overhead():
    assert pod_memory_gib({}, "driver") == pytest.approx(1 + 384 / 1024)  # 1g and the 384 MiB floor
    assert pod_memory_gib({"spark.executor.memory": "8g"}, "executor") == pytest.approx(8 * 1.1)
    conf = {"spark.executor.memory": "4096m", "spark.executor.memoryOverhead": "1g",
            "spark.executor.pyspark.memory": "512m"}
    assert pod_memory_gib(conf, "executor") == pytest.approx(4 + 1 + 0.5)
    assert pod_memory_gib({"spark.driver.memory": "10g", "spark.driver.memoryOverheadFactor": "0.4"},
                          "driver") == pytest.approx(14)


def test_local_runs_count_their_task_slots_and_clusters_their_pods():
    assert requested({"spark.driver.memory": "4g"}, local=True, task_slots=2, executors=0) == {
        "vcpu": 2.0, "gb": 4.4, "executors": 0}
    conf = {"spark.driver.cores": "2", "spark.driver.memory": "4g", "spark.executor.cores": "4",
            "spark.executor.memory": "8g"}
    got = requested(conf, local=False, task_slots=40, executors=10)
    assert got == {"vcpu": 42.0, "gb": pytest.approx(4.4 + 10 * 8.8), "executors": 10}


def test_the_estimate_is_vcpu_and_gb_seconds_times_the_rates():
    prices = {"name": "t", "currency": "USD", "date": "2026-12-05", "source": "test",
              "rates": [{"name": "a", "vcpu_hour": 0.036, "gb_hour": 0.0036}, {"name": "b", "vcpu_hour": 0.0036}]}
    c = estimate({"vcpu": 2.0, "gb": 10.0, "executors": 0}, 100.0, 300, prices)
    assert c["vcpu_seconds"] == 200.0 and c["gb_seconds"] == 1000.0
    assert [line["cost"] for line in c["lines"]] == [pytest.approx(0.002 + 0.001), pytest.approx(0.0002)]
    assert c["total"] == pytest.approx(0.0032)
    assert c["per_100k_images"] == pytest.approx(0.0032 / 300 * 100_000, rel=1e-3)
    assert estimate({"vcpu": 1.0, "gb": 1.0}, 5.0, 0, prices)["per_100k_images"] is None  # nothing processed


def test_the_default_prices_are_dated_and_sourced():
    assert load_prices(None) is DEFAULT_PRICES
    assert DEFAULT_PRICES["date"] and "aws.amazon.com/emr/pricing" in DEFAULT_PRICES["source"]
    emr = DEFAULT_PRICES["rates"][0]
    assert (emr["vcpu_hour"], emr["gb_hour"]) == (0.01012, 0.00111125)


def test_a_price_table_file_replaces_them_and_a_wrong_one_is_a_clear_error(tmp_path):
    good = tmp_path / "prices.yaml"
    good.write_text("name: m6i nodes\ncurrency: EUR\ndate: 2026-12-01\nrates:\n  - {name: nodes, vcpu_hour: 0.05, "
                    "gb_hour: 0.006}\n")
    table = load_prices(str(good))
    assert table["currency"] == "EUR" and table["rates"][0]["vcpu_hour"] == 0.05
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"rates": [{"vcpu_hour": "cheap"}]}))
    with pytest.raises(PriceTableError, match="numeric vcpu_hour"):
        load_prices(str(bad))
    with pytest.raises(PriceTableError, match="cannot read it"):
        load_prices(str(tmp_path / "missing.json"))
    bad.write_text("{not json")
    with pytest.raises(PriceTableError, match="not valid json"):
        load_prices(str(bad))


def test_the_report_shows_the_cost_and_each_runs_cost():
    c = estimate({"vcpu": 2.0, "gb": 4.4, "executors": 0}, 60.0, 300, DEFAULT_PRICES)
    runs = [{"run_id": "r1", "end": "2026-12-05T07:00:00Z", "seconds": 60.0, "counts": {"processed": 300},
             "cost": {"total": c["total"], "currency": "USD", "per_100k_images": c["per_100k_images"]}},
            {"run_id": "r2", "end": "2026-12-05T08:00:00Z", "seconds": 20.0, "counts": {"processed": 30},
             "cost": {"total": 0.0004, "currency": "USD", "per_100k_images": 1.33}}]
    page = cost_section({"cost": c, "history": runs})
    assert "estimated cost of this run" in page and "per 100k images (this run processed 300)" in page
    assert f"{c['total']:,.4f} USD" in page and "Cost of each run" in page and "1.3300 USD" in page
    assert "2026-12-05" in page and "not in it" in page
    assert "made before fruitlens estimated costs" in cost_section({})


def test_the_report_says_how_the_pca_was_made():
    kept = {"moments": "incremental", "files_read": 2, "rows_read": 300, "rows_reused": 13074, "basis": "kept",
            "variance_loss": 2.5e-05, "centre_offset": 1e-06, "drift_tolerance": 0.001, "rows_projected": 300}
    text = pca_note({"incremental": kept})
    assert "read 300 feature rows of 2 files, reused the moments of 13,074" in text and "kept the basis" in text
    full = {**kept, "moments": "full", "why_full": "--pca-exact", "basis": "refit", "why_refit": "--pca-exact"}
    assert "read all 300 feature rows (--pca-exact)" in pca_note({"incremental": full})
    assert pca_note({}) == ""


def test_a_cluster_runs_cost_counts_its_executors_and_never_fails_the_run():
    from types import SimpleNamespace

    from fruitlens.pipeline import run_cost

    class Conf:
        def getAll(self):
            return [("spark.executor.instances", "3"), ("spark.executor.cores", "4"), ("spark.executor.memory", "8g")]

    class Broken:
        def sc(self):
            raise RuntimeError("py4j gone")

    sc = SimpleNamespace(master="k8s://https://api:443", defaultParallelism=12, getConf=Conf, _jsc=Broken())
    manifest = {"timings_s": {"total": 100.0}, "counts": {"processed": 1000}}
    c = run_cost(SimpleNamespace(sparkContext=sc), manifest, DEFAULT_PRICES)
    assert c["requested"] == {"vcpu": 13.0, "gb": pytest.approx(1 + 0.375 + 3 * 8.8), "executors": 3}
    assert c["vcpu_seconds"] == 1300.0 and c["per_100k_images"] > 0
