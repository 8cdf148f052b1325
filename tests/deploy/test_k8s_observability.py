"""Finding 10 of issue 22, the chart's side: the driver is told where the event log goes and which port serves
the run's Prometheus text; scrape annotations and a PodMonitor behind values. (The run's side: event logs under
OUTPUT and `fruitlens history`: tests/e2e/test_history.py; through the pod runner: tests/deploy/test_k8s_faults.py.)
"""
from __future__ import annotations

from fakes.fake_k8s import by_kind, one, render


def _driver(docs) -> dict:
    return one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_default_driver_serves_metrics_and_writes_the_event_log_under_output():
    docs, _ = render()
    driver = _driver(docs)
    env = _env(driver)
    assert env["FRUITLENS_METRICS_PORT"] == "9464" and "FRUITLENS_EVENT_LOG" not in env  # OUTPUT/_spark-events
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in driver["ports"]
    annotations = one(docs, "Job")["spec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("prometheus.io/") for k in annotations)
    assert not by_kind(docs, "PodMonitor")


def test_event_log_elsewhere_or_off():
    docs, _ = render({"eventLog": {"dir": "s3a://logs/spark-events"}})
    assert _env(_driver(docs))["FRUITLENS_EVENT_LOG"] == "s3a://logs/spark-events"
    docs, _ = render({"eventLog": {"enabled": False}})
    assert _env(_driver(docs))["FRUITLENS_EVENT_LOG"] == "off"


def test_scrape_annotations_and_pod_monitor_behind_values():
    docs, _ = render({"metrics": {"port": 9100, "annotations": True,
                                  "podMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    annotations = one(docs, "Job")["spec"]["template"]["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
    monitor = one(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    pod_labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in _driver(docs)["ports"]


def test_metrics_off_renders_no_port_nor_monitor():
    docs, _ = render({"metrics": {"enabled": False, "annotations": True, "podMonitor": {"enabled": True}}})
    assert "FRUITLENS_METRICS_PORT" not in _env(_driver(docs))
    assert all(p["name"] != "metrics" for p in _driver(docs)["ports"]) and not by_kind(docs, "PodMonitor")


def test_operator_driver_gets_the_same_env_port_and_annotations():
    docs, _ = render({"sparkOperator": {"enabled": True}, "metrics": {"annotations": True},
                      "eventLog": {"dir": "s3a://logs/ev"}, "podAnnotations": {"team": "ml"}})
    driver = one(docs, "SparkApplication")["spec"]["driver"]
    env = _env(driver)
    assert env["FRUITLENS_METRICS_PORT"] == "9464" and env["FRUITLENS_EVENT_LOG"] == "s3a://logs/ev"
    assert driver["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert driver["annotations"]["prometheus.io/scrape"] == "true" and driver["annotations"]["team"] == "ml"
    executor = one(docs, "SparkApplication")["spec"]["executor"]
    assert "FRUITLENS_METRICS_PORT" not in _env(executor) and "prometheus.io/scrape" not in (executor.get("annotations") or {})
