"""Prometheus metrics of one app (one registry per app: tests build many apps in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

PREFIX = "fruitlens_serve_"
LATENCY_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(PREFIX + "requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram(PREFIX + "request_seconds", "request latency, first byte in to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.photos = Counter(PREFIX + "photos_total", "photos by outcome (labelled or an error code)",
                              ["outcome"], registry=r)
        self.errors = Counter(PREFIX + "errors_total", "error answers by code", ["code"], registry=r)
        self.batch_size = Histogram(PREFIX + "batch_size", "photos per engine call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram(PREFIX + "inference_seconds", "engine + head time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge(PREFIX + "queue_photos", "photos waiting for the engine", registry=r)
        self.model_info = Gauge(PREFIX + "model_info", "the model served (value 1)",
                                ["version", "trained_at", "test_accuracy"], registry=r)
        self.swaps = Counter(PREFIX + "model_swaps_total", "newer models swapped in", registry=r)
        self.load_failures = Counter(PREFIX + "model_load_failures_total", "models that could not be loaded",
                                     registry=r)
        self.uploads = Counter(PREFIX + "uploads_total", "kept photos by outcome", ["outcome"], registry=r)
        self.feedback = Counter(PREFIX + "feedback_total", "feedback requests by outcome", ["outcome"], registry=r)
        self._model_labels: tuple | None = None

    def set_model(self, info: dict) -> None:
        labels = (info["version"], str(info.get("trained_at") or ""), str(info.get("test_accuracy") or ""))
        if self._model_labels is not None:
            self.model_info.remove(*self._model_labels)  # one series: the model served now
        self.model_info.labels(*labels).set(1)
        self._model_labels = labels
