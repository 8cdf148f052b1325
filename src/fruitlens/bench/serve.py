"""`make bench-serve`: `fruitlens serve` under concurrent clients, with the engine's batch ceiling measured
in the same run.

1. ceiling: the predictor alone (a child process, same threads, pre-decoded photos, batch max_batch), before
   and after every phase: photos/s the engine can do at all; each phase's ratio is to the mean of the two
   around it (the load of a shared machine drifts);
2. phases: the service (its own process) and N keep-alive clients (1, 8, 32, 64) POSTing real JPEGs for a
   fixed time: requests/s, p50/p95/p99, errors (503 counted apart), batch sizes (from /metrics);
3. hostile: 1 and 32 good clients, each with 4 more sending bombs, garbage, truncated and oversized bodies:
   each hostile request must get its 4xx, and the good clients' figures must hold;
4. swap: 32 clients while a newer model is published into OUTPUT a quarter in (as `train` writes it: predictor.json
   last): the service must swap it in with zero failed requests (503s included), answers from both models.
The service runs on a private copy of OUTPUT/predictor (the swap must not touch the real one).
Prints a table and PASS/FAIL lines; writes the figures as JSON.
Usage: python -m fruitlens.bench.serve OUTPUT PHOTOS_DIR [--seconds 20] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fruitlens.bench import cpu_flags, cpu_model
from fruitlens.bench import serve_payloads as hostile
from fruitlens.classify.predictor import local_predictor_dir
from fruitlens.state import layout


class Ceiling:
    """Photos/s of the predictor alone at ``batch`` (same threads, pre-decoded photos, no server, no decode),
    in a child process kept alive so it can be measured next to every phase: on a shared machine the load
    drifts, and a phase is compared with the ceiling measured around it."""

    CODE = """
import sys, time, numpy as np
from fruitlens.serve.models import PredictorSource
output, batch, threads, photos = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
h = PredictorSource(output).load(batch_size=batch, threads=threads)
arrays = np.stack([h.predictor.decode(open(p, "rb").read()) for p in (photos * batch)[:batch]])
h.predictor.probabilities(arrays)
print("ready", flush=True)
for line in sys.stdin:
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < float(line):
        h.predictor.probabilities(arrays); n += batch
    print(n / (time.perf_counter() - t), flush=True)
"""

    def __init__(self, output: str, photos: list[str], batch: int, threads: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, output, str(batch), str(threads),
                                      *photos[:batch]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("fruitlens: error: the ceiling process did not start")

    def measure(self, seconds: float = 4.0) -> tuple[float, float]:
        """(photos/s, CPU ms per photo): the second does not depend on how busy the machine is."""
        cpu0, t0 = cpu_seconds(self.proc.pid), time.perf_counter()
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        rate = float(self.proc.stdout.readline())
        photos = rate * (time.perf_counter() - t0)
        return rate, (cpu_seconds(self.proc.pid) - cpu0) * 1000 / max(1.0, photos)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat): what the service itself spent, apart
    from the clients' cost (they share the machine's cores in this bench)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("fruitlens_serve_batch_size_") and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


HOSTILE_KINDS = ("png_bomb", "jpeg_huge_header", "garbage", "truncated", "too_large", "text_plain")


@functools.cache
def hostile_requests(jpeg: bytes, max_body: int) -> list[tuple[str, bytes, str, int]]:
    """(kind, body, content type, the status it must get)."""
    return [("png_bomb", hostile.png_bomb(), "image/png", 422),
            ("jpeg_huge_header", hostile.jpeg_huge_header(jpeg), "image/jpeg", 422),
            ("garbage", hostile.garbage(8192), "image/jpeg", 422),
            ("truncated", hostile.truncated(jpeg), "image/jpeg", 422),
            ("too_large", b"\0" * (max_body + 1), "image/jpeg", 413),
            ("text_plain", jpeg, "text/plain", 415)]


def publish_newer_model(output: Path) -> None:
    """A newer model in OUTPUT/predictor as `train` writes it (every file replaced, predictor.json last): the
    same engine and labels, the head's intercepts nudged (a different model: a new version)."""
    folder = output / layout.PREDICTOR
    with np.load(folder / layout.PREDICTOR_HEAD) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["intercepts"] = arrays["intercepts"] + 1e-3
    info = json.loads((folder / layout.PREDICTOR_INFO).read_text())
    info["trained_at"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    head = io.BytesIO()
    np.savez(head, **arrays)
    files = {layout.PREDICTOR_HEAD: head.getvalue(),
             layout.PREDICTOR_LABELS: (folder / layout.PREDICTOR_LABELS).read_bytes(),
             layout.PREDICTOR_MODEL: (folder / layout.PREDICTOR_MODEL).read_bytes(),
             layout.PREDICTOR_INFO: (json.dumps(info, indent=2) + "\n").encode()}
    for name in sorted(files, key=lambda n: (n == layout.PREDICTOR_INFO, n)):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(files[name])
        os.replace(tmp, folder / name)


async def phase(port: int, photos: list[bytes], clients: int, seconds: float, warmup: float = 1.0,
                hostile_clients: int = 0, max_body: int = 20 << 20, swap: Path | None = None) -> dict:
    """``swap``: an OUTPUT to publish a newer model into a quarter in (the answers' model versions are counted)."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/predict"
    lat: list[float] = []
    codes: dict[str, int] = {}
    bad_hostile: list[str] = []
    hostile_done = [0]
    payloads = hostile_requests(photos[0], max_body) if hostile_clients else []  # seconds to make: before the clock
    start = time.monotonic() + warmup
    end = start + seconds
    versions: dict[str, int] = {}

    answered = [0]

    async def good(i: int, session):
        n = i
        while (now := time.monotonic()) < end:
            t = time.perf_counter()
            try:
                async with session.post(url, data=photos[n % len(photos)], headers={"Content-Type": "image/jpeg"}) as r:
                    body = await r.read()
                    status = str(r.status)
                    answered[0] += r.status == 200
                    if swap is not None and r.status == 200:
                        v = json.loads(body)["model"]["version"]
                        versions[v] = versions.get(v, 0) + 1
            except Exception as exc:  # noqa: BLE001 - a failed request is a figure, not a crash
                status = type(exc).__name__
            n += 1
            if now >= start:
                lat.append(time.perf_counter() - t)
                codes[status] = codes.get(status, 0) + 1

    async def bad(i: int, session):
        n = i
        while time.monotonic() < end:
            kind, body, ctype, want = payloads[n % len(payloads)]
            n += 1
            try:
                async with session.post(url, data=body, headers={"Content-Type": ctype},
                                        timeout=aiohttp.ClientTimeout(total=30)) as r:
                    await r.read()
                    if r.status != want:
                        bad_hostile.append(f"{kind}: {r.status}")
            except aiohttp.ClientError as exc:
                if want != 413:  # a 413 may close the connection before the body is all sent
                    bad_hostile.append(f"{kind}: {type(exc).__name__}")
            hostile_done[0] += 1
            await asyncio.sleep(0.05)  # 20/s per hostile client

    async def publish():
        await asyncio.sleep(max(0.0, start + seconds / 4 - time.monotonic()))  # then time to load it
        await asyncio.to_thread(publish_newer_model, swap)

    before = _metrics(port)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(good(i, session) for i in range(clients)),
                             *(bad(i, session) for i in range(hostile_clients)),
                             *([publish()] if swap is not None else []))
    after = _metrics(port)
    n_batches = after["fruitlens_serve_batch_size_count"] - before["fruitlens_serve_batch_size_count"]
    n_photos = after["fruitlens_serve_batch_size_sum"] - before["fruitlens_serve_batch_size_sum"]
    ok = codes.get("200", 0)
    q = np.percentile(lat, [50, 95, 99]) * 1000 if lat else [float("nan")] * 3
    return {"clients": clients, "hostile_clients": hostile_clients, "seconds": seconds, "requests": len(lat), "ok": ok,
            "rps": ok / seconds, "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "errors": sum(v for k, v in codes.items() if k not in ("200", "503")), "overloaded": codes.get("503", 0),
            "statuses": codes, "batch_mean": n_photos / n_batches if n_batches else 0.0,
            "hostile_sent": hostile_done[0], "hostile_wrong": bad_hostile[:20], "swap": swap is not None,
            "model_versions": versions, "answered_with_warmup": answered[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fruitlens.bench.serve", description=__doc__.splitlines()[0])
    p.add_argument("output", help="a trained OUTPUT")
    p.add_argument("photos", help="a folder of JPEG photos (any depth)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", default="1,8,32,64")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", dest="json_file")
    ns = p.parse_args(argv)

    from fruitlens.serve.config import available_cpus

    threads = ns.threads or available_cpus()
    paths = [str(f) for f in sorted(Path(ns.photos).rglob("*.jpg"))[:200]]
    photos = [Path(f).read_bytes() for f in paths]
    if not photos:
        print(f"fruitlens: error: no .jpg photos under {ns.photos}", file=sys.stderr)
        return 2
    port = _free_port()
    private = Path(tempfile.mkdtemp(prefix="fruitlens-bench-serve-"))
    shutil.copytree(local_predictor_dir(ns.output), private / layout.PREDICTOR)
    server = subprocess.Popen([sys.executable, "-m", "fruitlens.serve", str(private), "--host", "127.0.0.1",
                               "--port", str(port), "--max-batch", str(ns.max_batch), "--threads", str(threads),
                               "--poll-seconds", "1", "--log-level", "warning"])
    closing: list = []
    figures: dict = {"cpu": cpu_model(), "cpu_flags": " ".join(cpu_flags()), "cpus": threads,
                     "load_average_at_start": os.getloadavg(), "seconds": ns.seconds, "max_batch": ns.max_batch}
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("fruitlens: error: the service did not become ready")
            time.sleep(0.2)
        ceil = Ceiling(str(private), paths, ns.max_batch, threads)
        closing.append(ceil.close)
        runs = [(int(c), 0, None) for c in ns.clients.split(",")] + [(1, 4, None), (32, 4, None)]
        # the swap: long enough for the service to see the new model (it polls every second) and load it
        runs.append((32, 0, private))
        measured, phases = [ceil.measure()], []
        for clients, bad, swap in runs:
            seconds = max(ns.seconds, 6.0) if swap else ns.seconds
            cpu0 = cpu_seconds(server.pid)
            phases.append(asyncio.run(phase(port, photos, clients, seconds, hostile_clients=bad, swap=swap)))
            # the whole phase, warm-up included (its requests too): CPU per answered photo
            answered = phases[-1]["answered_with_warmup"]
            phases[-1]["server_cpu_ms_per_photo"] = (cpu_seconds(server.pid) - cpu0) * 1000 / max(1, answered)
            measured.append(ceil.measure())
    finally:
        for close in closing:
            close()
        server.terminate()
        server.wait(30)
        shutil.rmtree(private, ignore_errors=True)
    ceilings = [rate for rate, _ in measured]
    figures["ceilings_photos_s"] = ceilings
    figures["engine_cpu_ms_per_photo"] = float(np.median([cpu for _, cpu in measured]))
    figures["ceiling_photos_s"] = float(np.mean(ceilings))
    figures["ceiling_drift"] = (max(ceilings) - min(ceilings)) / max(ceilings)
    for i, ph in enumerate(phases):
        ph["ceiling_photos_s"] = (ceilings[i] + ceilings[i + 1]) / 2
        ph["ratio_to_ceiling"] = ph["rps"] / ph["ceiling_photos_s"]
        # load-independent: the engine's CPU per photo over the service's (decode, HTTP, batching included)
        ph["cpu_efficiency"] = figures["engine_cpu_ms_per_photo"] / max(1e-9, ph["server_cpu_ms_per_photo"])
    figures["phases"] = phases
    figures["load_average_at_end"] = os.getloadavg()
    print(f"cpu: {figures['cpu']} [{figures['cpu_flags']}] ({threads} cpus); load average "
          f"{figures['load_average_at_start'][0]:.1f} at the start, {figures['load_average_at_end'][0]:.1f} at the end")
    print(f"engine ceiling at batch {ns.max_batch}: "
          f"{figures['ceiling_photos_s']:.1f} photos/s on average, {min(ceilings):.1f}..{max(ceilings):.1f} "
          f"(drift {figures['ceiling_drift']:.0%}); each phase against the ceiling measured around it; "
          f"engine CPU {figures['engine_cpu_ms_per_photo']:.1f} ms/photo")
    print(f"{'clients':>10} {'ceiling':>8} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'503':>5} {'batch':>6} {'cpu ms/photo':>13} {'cpu eff':>8}")
    for ph in phases:
        name = f"{ph['clients']}" + (f"+{ph['hostile_clients']}h" if ph["hostile_clients"] else "") + \
            (" swap" if ph["swap"] else "")
        print(f"{name:>10} {ph['ceiling_photos_s']:8.1f} {ph['rps']:8.1f} {ph['ratio_to_ceiling']:6.2f} {ph['p50_ms']:8.1f} {ph['p95_ms']:8.1f} "
              f"{ph['p99_ms']:8.1f} {ph['errors']:7d} {ph['overloaded']:5d} {ph['batch_mean']:6.1f} {ph['server_cpu_ms_per_photo']:13.1f} "
              f"{ph['cpu_efficiency']:8.2f}")
    by = {(ph["clients"], ph["hostile_clients"]): ph for ph in phases if not ph["swap"]}

    def loaded(ph: dict) -> bool:
        return ph["ratio_to_ceiling"] >= 0.7 and ph["p99_ms"] <= 1000 and ph["errors"] == 0

    checks = []
    if (1, 0) in by:
        checks.append(("1 client p50 <= 50 ms", by[(1, 0)]["p50_ms"] <= 50))
    if (32, 0) in by:
        checks.append(("32 clients >= 0.7 x ceiling, p99 <= 1 s, 0 errors", loaded(by[(32, 0)])))
    h1, h32 = by[(1, 4)], by[(32, 4)]
    checks.append(("hostile mix alongside 1 client: every hostile request its 4xx; p50 <= 50 ms",
                   not h1["hostile_wrong"] and h1["p50_ms"] <= 50 and h1["errors"] == 0))
    checks.append(("hostile mix alongside 32 clients: every hostile request its 4xx; >= 0.7 x ceiling, "
                   "p99 <= 1 s, 0 errors", not h32["hostile_wrong"] and loaded(h32)))
    sw = next(ph for ph in phases if ph["swap"])
    checks.append(("model swap under 32 clients: answers from both models, 0 failed requests (503 included)",
                   len(sw["model_versions"]) == 2 and sw["errors"] == 0 and sw["overloaded"] == 0))
    figures["checks"] = {name: ok for name, ok in checks}
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    if ns.json_file:
        Path(ns.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.json_file).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
