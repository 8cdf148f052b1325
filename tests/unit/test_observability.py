"""Finding 10 of issue 22, without Spark: where the event log goes, that `--overwrite` and a fresh OUTPUT live
with it, and the driver's Prometheus text (fruitlens' figures from the workers' datagrams, Spark's relayed)."""
from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fruitlens.config import ConfigError, PipelineConfig
from fruitlens.metrics import Board, MetricsServer
from fruitlens.progress import ImageProgress, ProgressClient
from fruitlens.spark import event_log_dir, prepare_event_log, spark_settings
from fruitlens.state.manifest import check_reusable, foreign_entries
from fruitlens.storage.store import Store, StoreOptions


def test_event_log_goes_under_output_unless_told_otherwise(tmp_path):
    out = tmp_path / "out"
    assert event_log_dir(PipelineConfig(output=str(out))) == f"file://{out}/_spark-events"
    # S3: only where told — Spark's JVM writes it, and a default it cannot write would stop the run
    assert event_log_dir(PipelineConfig(output="s3a://b/run/")) is None
    assert event_log_dir(PipelineConfig(output="s3://b/run")) is None
    assert event_log_dir(PipelineConfig(output="s3a://b/run", event_log="s3a://logs/ev")) == "s3a://logs/ev"
    assert event_log_dir(PipelineConfig(output="o", event_log="off")) is None
    assert event_log_dir(PipelineConfig(output="o", spark_conf={"spark.eventLog.enabled": "false"})) is None
    assert event_log_dir(PipelineConfig(output="o", spark_conf={"spark.eventLog.dir": "hdfs:///x"})) == "hdfs:///x"
    settings = spark_settings(PipelineConfig(output=str(out)))
    assert settings["spark.eventLog.enabled"] == "true" and settings["spark.eventLog.dir"].endswith("/_spark-events")
    assert settings["spark.ui.prometheus.enabled"] == "true"
    assert settings["spark.metrics.conf.*.sink.prometheusServlet.class"].endswith("PrometheusServlet")
    assert "spark.eventLog.enabled" not in spark_settings(PipelineConfig(output=str(out), event_log="off"))
    spaced = tmp_path / "my runs" / "out"  # java.net.URI refuses a raw space: Spark gets it percent-encoded
    assert spark_settings(PipelineConfig(output=str(spaced)))["spark.eventLog.dir"] == \
        f"file://{tmp_path}/my%20runs/out/_spark-events"


def test_event_log_folder_is_made_before_the_session_and_a_bad_one_only_warns(tmp_path, capsys):
    assert prepare_event_log(f"file://{tmp_path}/out/_spark-events", StoreOptions())
    assert (tmp_path / "out" / "_spark-events").is_dir()
    (tmp_path / "file").write_text("x")
    assert not prepare_event_log(f"file://{tmp_path}/file/_spark-events", StoreOptions())
    assert "no Spark event log" in capsys.readouterr().err


def test_a_fresh_output_holding_only_the_event_log_is_still_fresh_and_overwrite_keeps_it(tmp_path):
    (tmp_path / "out" / "_spark-events" / "eventlog_v2_app-1").mkdir(parents=True)
    store = Store(f"file://{tmp_path}/out")
    check_reusable(store, "file:///in", overwrite=False)  # not "exists and is not a fruitlens output"
    assert foreign_entries(store) == []
    (tmp_path / "out" / "_fruitlens").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert foreign_entries(store) == ["notes.txt"]


@pytest.mark.parametrize("bad", [-1, 70000])
def test_metrics_port_is_checked(bad):
    with pytest.raises(ConfigError, match="--metrics-port"):
        PipelineConfig(output="o", metrics_port=bad)


def test_driver_serves_the_workers_figures_and_relays_sparks():
    class SparkUI(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = {"/metrics/prometheus": b'metrics_fruitlens_driver_jvm_heap_used_Value{type="gauges"} 1\n',
                    "/metrics/executors/prometheus": b'spark_info{version="4.0.1"} 1.0\n'}.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass
    ui = ThreadingHTTPServer(("127.0.0.1", 0), SparkUI)
    threading.Thread(target=ui.serve_forever, daemon=True).start()
    board = Board(f"http://127.0.0.1:{ui.server_address[1]}")
    try:
        with ImageProgress("extract", enabled=False) as progress, MetricsServer(0, board), \
                MetricsServer(_free_port(), board) as served:
            progress.total = 300
            board.watch("extract", progress)
            client = ProgressClient(progress.address)
            client.add(32)
            client.add(32, errors=3)
            deadline = time.monotonic() + 10
            while progress.done < 64 and time.monotonic() < deadline:
                time.sleep(0.05)
            text = urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=10).read().decode()
    finally:
        ui.shutdown()
    lines = text.splitlines()
    assert 'fruitlens_images_done_total{stage="extract"} 64' in lines
    assert 'fruitlens_image_errors_total{stage="extract"} 3' in lines
    assert 'fruitlens_images_planned{stage="extract"} 300' in lines
    assert "# TYPE fruitlens_images_done_total counter" in lines
    assert any(line.startswith('fruitlens_images_per_second{stage="extract"} ') for line in lines)
    assert 'metrics_fruitlens_driver_jvm_heap_used_Value{type="gauges"} 1' in lines  # Spark's, relayed
    assert 'spark_info{version="4.0.1"} 1.0' in lines


def test_without_sparks_ui_fruitlens_figures_still_answer():
    text = Board("http://127.0.0.1:9").text()  # nothing listens on the discard port
    assert "# TYPE fruitlens_images_done_total counter" in text and "metrics_" not in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_taken_metrics_port_costs_the_endpoint_not_the_run(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with MetricsServer(taken.getsockname()[1], Board()) as served:
            assert served.port == 0
    assert "no metrics endpoint" in capsys.readouterr().err
