"""fruitlens' own figures as a Prometheus endpoint on the driver (``--metrics-port``), with Spark's beside them.

One scrape target per run: ``GET /metrics`` on the driver answers, in the Prometheus text format,

- the running stage's figures, from the workers' progress datagrams (:class:`fruitlens.progress.ImageProgress`):
  ``fruitlens_images_done_total``, ``fruitlens_image_errors_total``, ``fruitlens_images_planned`` and
  ``fruitlens_images_per_second``, labelled with the stage;
- then Spark's own, relayed from the driver's UI: its metrics system's PrometheusServlet
  (``/metrics/prometheus``, driver JVM, DAG scheduler, block manager…) and the executors' summaries
  (``/metrics/executors/prometheus``, ``spark.ui.prometheus.enabled``); both are switched on by
  :func:`fruitlens.spark.spark_settings`.

One port, so the pod annotations ``prometheus.io/{scrape,port,path}``, which name one endpoint per pod, get
everything; a PodMonitor may also scrape Spark's UI paths directly. A relay that fails (the UI is not up yet,
or off) leaves Spark's part out of that scrape, never fruitlens'. Figures of a finished run stay in
OUTPUT/manifest.json and the Spark event log (``fruitlens history``).
"""
from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Spark's Prometheus pages on the driver UI (metrics servlet, executor summaries).
SPARK_PATHS = ("/metrics/prometheus", "/metrics/executors/prometheus")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "fruitlens_images_done_total": ("counter", "Images this stage has finished (features or error rows)."),
    "fruitlens_image_errors_total": ("counter", "Of those, images that ended as error rows (decode or read)."),
    "fruitlens_images_planned": ("gauge", "Images this stage has to process in this run."),
    "fruitlens_images_per_second": ("gauge", "Images finished per second since the stage started."),
}


class Board:
    """What the endpoint shows: the stages watched so far, each an object with ``done``, ``errors``,
    ``total`` and ``rate()`` (an :class:`~fruitlens.progress.ImageProgress`)."""

    def __init__(self, spark_ui: str | None = None) -> None:
        self.spark_ui = spark_ui.rstrip("/") if spark_ui else None
        self._stages: dict[str, object] = {}
        self._lock = threading.Lock()

    def watch(self, stage: str, progress) -> None:
        with self._lock:
            self._stages[stage] = progress

    def text(self) -> str:
        with self._lock:
            stages = dict(self._stages)
        values = {name: [] for name in _HELP}
        for stage, p in stages.items():
            label = f'{{stage="{stage}"}}'
            values["fruitlens_images_done_total"].append(f"{label} {p.done}")
            values["fruitlens_image_errors_total"].append(f"{label} {p.errors}")
            values["fruitlens_images_planned"].append(f"{label} {p.total or 0}")
            values["fruitlens_images_per_second"].append(f"{label} {p.rate():.3f}")
        lines = []
        for name, (kind, help_text) in _HELP.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *(name + v for v in values[name])]
        return "\n".join(lines) + "\n" + self._spark()

    def _spark(self) -> str:
        if not self.spark_ui:
            return ""
        parts = []
        for path in SPARK_PATHS:
            try:
                with urllib.request.urlopen(self.spark_ui + path, timeout=3) as response:
                    parts.append(response.read().decode("utf-8", "replace"))
            except OSError:  # the UI not up (yet), or off: fruitlens' figures still answer
                continue
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts if p)


class MetricsServer:
    """``GET /metrics`` (the board's text) on ``port`` of every interface, in a daemon thread; port 0: off."""

    def __init__(self, port: int, board: Board) -> None:
        self.board = board
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None

    def __enter__(self) -> MetricsServer:
        if not self.port:
            return self
        board = self.board

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "fruitlens serves /metrics")
                    return
                body = board.text().encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the scraper gave up (its timeout): its business
                    pass

            def log_message(self, *args) -> None:  # a scrape every few seconds is no news
                pass

        try:
            self._httpd = ThreadingHTTPServer(("0.0.0.0", self.port), Handler)
        except OSError as exc:  # a port taken (host network): the run goes on without its endpoint
            from fruitlens.progress import log

            log(f"warning: no metrics endpoint: cannot listen on port {self.port} ({exc.strerror or exc}); "
                "choose another --metrics-port")
            self.port = 0
            return self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
