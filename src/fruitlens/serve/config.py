"""One frozen, validated configuration of the service (from the command line: :mod:`fruitlens.serve.cli`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from fruitlens.errors import FruitlensError
from fruitlens.storage import uris


class ServeConfigError(FruitlensError, ValueError):
    """An option of `fruitlens serve` is out of range or names nothing usable."""

    exit_code = 2


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: affinity ∩ the cgroup's CPU quota (a 2-CPU pod on a 64-core node is 2)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    root = Path(cgroup_root)
    try:  # cgroup v2: "max 100000" or "200000 100000"
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
        except (OSError, ValueError):
            pass
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


@dataclass(frozen=True)
class ServeConfig:
    output: str                      # a trained OUTPUT: local folder, file: or s3:// URI
    host: str = "0.0.0.0"
    port: int = 8080
    keep_uploads: str | None = None  # URI the photos are kept under (Fruits-360 layout), or None
    max_batch: int = 32              # photos per engine call
    batch_wait_ms: float = 2.0       # how long a lone photo waits for company while the engine is idle
    max_queue: int = 128             # photos waiting for the engine; more → 503 + Retry-After
    queue_timeout_s: float = 10.0    # a photo queued longer than this is answered 503
    max_body_bytes: int = 20 << 20   # request body; more → 413
    max_pixels: int = 50_000_000     # width × height declared by the header; more → 422, never decoded
    max_photos: int = 16             # photos in one multipart request
    threads: int = 0                 # ONNX Runtime intra-op threads (0: available_cpus())
    decode_threads: int = 0          # decode pool (0: available_cpus())
    poll_s: float = 10.0             # how often OUTPUT/predictor is checked for a newer model
    top_k: int = 3
    allow_new_labels: bool = False   # feedback may name a label the model does not know

    def __post_init__(self) -> None:
        checks = [("--port", 0 <= self.port <= 65535), ("--max-batch", 1 <= self.max_batch <= 1024),
                  ("--batch-wait-ms", 0 <= self.batch_wait_ms <= 1000), ("--max-queue", self.max_queue >= 1),
                  ("--queue-timeout", self.queue_timeout_s > 0), ("--max-body-bytes", self.max_body_bytes >= 1024),
                  ("--max-pixels", self.max_pixels >= 1), ("--max-photos", self.max_photos >= 1),
                  ("--threads", self.threads >= 0), ("--decode-threads", self.decode_threads >= 0),
                  ("--poll-seconds", self.poll_s > 0), ("--top-k", self.top_k >= 1)]
        for flag, ok in checks:
            if not ok:
                raise ServeConfigError(f"{flag} is out of range; see `fruitlens serve --help`")
        for what, uri in (("OUTPUT", self.output), ("--keep-uploads", self.keep_uploads)):
            if uri is not None:
                try:
                    uris.parse(uri)
                except FruitlensError as exc:  # the parser's own line says what is wrong and what to use
                    raise ServeConfigError(f"{what}: {exc}") from None

    @property
    def engine_threads(self) -> int:
        return self.threads or available_cpus()

    @property
    def decode_workers(self) -> int:
        return self.decode_threads or available_cpus()
