"""`make bench-plan`: the driver's planning at scale (issue 24), with the CPU, as JSON.

Two measurements:

- **synthetic** (``--sizes 1000000 10000000``): no images. An S3-like INPUT of N photos in class folders of
  1,000 (``Training/`` and ``Test/``) whose LIST calls return generated ``pyarrow.fs.FileInfo`` objects
  (keys, sizes, times), and a committed index of the same photos in files of ``commit_size`` rows, of which
  0.01 % changed and 0.01 % removed since, plus 0.01 % (at least 300) new photos. Timed, each size in a fresh
  process (peak RSS = the driver's peak memory): listing (the real conversion of FileInfo objects to the
  plan's columns, sorted; generating them, S3's and pyarrow's part, is timed alone and subtracted; the total
  with it is reported too), planning
  (:func:`fruitlens.state.ledger.plan`) and task creation (:func:`fruitlens.pipeline.split_tasks`).
- **s3** (``--s3-objects 200000``): a real listing of a bucket on a local SeaweedFS S3 server (tiny objects,
  created once with ``weed filer.copy`` and kept in ``--workdir``), sequential (one recursive listing, the
  old way) against parallel (:func:`fruitlens.storage.listing.list_batches`), best of ``--repeat``; the two
  must list the same files. Once as the server answers on loopback (``--round-trips-ms 0``) and once with a
  round trip added to each of its answers (``50``): the server shares this machine's cores and answers in
  microseconds, so on loopback both listings are bound by CPU (the server's and the client's, on the same
  2 cores: parallel cannot beat their sum / cores), while an S3 LIST page from a real endpoint takes tens
  to hundreds of milliseconds, which is what listing prefixes side by side hides. The delay is a TCP proxy
  in front of the server (:func:`added_round_trip`; this kernel has no netem): a stand-in for the network
  and S3's own time per page, nothing else about S3.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from fruitlens.bench.engines import cpu_info
from fruitlens.state import ledger
from fruitlens.storage import listing as lister

PER_FOLDER = 1000
COMMIT_SIZE = 256
BUCKET = "fruitlens-bench"
MTIME_NS = 1_764_900_000 * 10**9


# -- synthetic ---------------------------------------------------------------------------------------
def _folders(n: int) -> list[str]:
    count = max(1, -(-n // PER_FOLDER))
    return [f"{'Test' if i % 4 == 3 else 'Training'}/class {i:05d}" for i in range(count)]


def _key(folder: str, i: int) -> str:
    return f"{folder}/r_{i:07d}_100.jpg"


class SyntheticStore:
    """What :func:`fruitlens.storage.listing.list_batches` needs of a :class:`Store`: an S3 INPUT whose
    folder ``f`` (of ``folders``) holds the keys ``[first, first + PER_FOLDER)`` of the photo numbering
    (``skip``: numbers removed from INPUT; ``changed``: numbers whose size changed)."""

    is_local, scheme, root = False, "s3a", BUCKET + "/in"

    def __init__(self, n: int, skip: set[int], changed: set[int]) -> None:
        self.n, self.skip, self.changed = n, skip, changed
        self.folders = _folders(n)
        self.number = {f: i for i, f in enumerate(self.folders)}

    def exists(self) -> bool:
        return True

    def list_level(self, rel: str = ""):
        if rel == "":
            return [], sorted({f.split("/")[0] for f in self.folders})
        if rel in self.number:  # a class folder: its photos (a set of few folders is split down to them)
            return self.list(rel), []
        return [], [f for f in self.folders if f.startswith(rel + "/")]

    def list(self, rel: str = "", *, recursive: bool = False):
        i = self.number[rel]
        first = i * PER_FOLDER
        File = pafs.FileType.File
        out = [pafs.FileInfo(f"{self.root}/{_key(rel, j)}", File, size=1000 + j % 977 + (j in self.changed),
                             mtime_ns=MTIME_NS + j) for j in range(first, min(first + PER_FOLDER, self.n))
               if j not in self.skip]
        return out


def _index(n: int) -> list[ledger.CommittedFile]:
    """The committed index of photos 0..n-1, in files of ``COMMIT_SIZE`` rows, as read_index holds it (views
    of one table)."""
    folders, chunks = _folders(n), []
    for start in range(0, n, 100_000):
        nums = np.arange(start, min(start + 100_000, n))
        paths = [f"s3a://{BUCKET}/in/{_key(folders[j // PER_FOLDER], j)}" for j in nums.tolist()]
        chunks.append(pa.table({ledger.PATH: pa.array(paths, pa.string()),
                                ledger.SIZE: pa.array(1000 + nums % 977, pa.int64()),
                                ledger.MODIFIED: pa.array((MTIME_NS + nums) // 1000, pa.int64())}))
    base = pa.concat_tables(chunks)  # zero-copy, as read_index's
    del chunks
    return [ledger.CommittedFile("features", f"{BUCKET}/out/features/part-{start:09d}.parquet", start,
                                 ledger.Rows(base, start, min(COMMIT_SIZE, n - start)))
            for start in range(0, n, COMMIT_SIZE)]


def synthetic(n: int, threads: int) -> dict:
    """One size, in this process (run it in a fresh one: the peak RSS is this process's)."""
    from fruitlens import pipeline
    from fruitlens.featurize import task_sizes

    rss0 = _rss_mb()
    rng = np.random.default_rng(24)
    frac = max(1, n // 10_000)
    new = max(300, frac)
    picks = rng.choice(n, size=2 * frac, replace=False)
    removed, changed = set(picks[:frac].tolist()), set(picks[frac:].tolist())
    clock = _Clock()
    index = _index(n)  # committed: photos 0..n-1 as they were
    index_s = clock.lap("index")

    # The listing: INPUT now holds n photos (minus removed) plus `new` at the end of the numbering.
    store = SyntheticStore(n + new, skip=removed, changed=changed)
    table = pipeline.listing_of(store, lister.list_batches(store, threads=threads))
    list_wall = clock.lap("listing_with_generating")
    for folder in store.folders:  # what generating the FileInfo objects alone takes (S3's and pyarrow's part)
        store.list(folder, recursive=True)
    generate_s = clock.lap("generating")
    p = ledger.plan(index, table)
    plan_s = clock.lap("planning")
    tasks = pipeline.split_tasks(p.todo, task_sizes(len(p.todo), 2, min_images=COMMIT_SIZE))
    tasks_s = clock.lap("tasks")
    expect = {"reused": n - 2 * frac, "new": new, "changed": frac, "removed": frac}
    got = {k: v for k, v in p.counts().items() if k in expect}
    assert got == expect, (got, expect)
    listing_s = max(0.0, list_wall - generate_s)  # (a busy shared host can make the difference meaningless:
    # the CPU seconds below are the steadier measure)
    cpu = clock.cpu
    listing_cpu = round(cpu["listing_with_generating"] - cpu["generating"], 2)
    return {"photos": n, "listed": table.num_rows, "committed_rows": n, "committed_files": len(index),
            "folders": len(store.folders), "plan": p.counts(), "rewrite_files": len(p.rewrite),
            "tasks": len(tasks), "list_threads": threads,
            "seconds": {"listing": round(listing_s, 2), "planning": round(plan_s, 2), "tasks": round(tasks_s, 3),
                        "total": round(listing_s + plan_s + tasks_s, 2),
                        "total_with_generating": round(list_wall + plan_s + tasks_s, 2)},
            "not_counted_s": {"generating_fileinfo": round(generate_s, 2), "generating_index": round(index_s, 2)},
            "cpu_seconds": {**cpu, "listing": listing_cpu,
                            "total": round(listing_cpu + cpu["planning"] + cpu["tasks"], 2),
                            "total_with_generating": round(cpu["listing_with_generating"] + cpu["planning"]
                                                           + cpu["tasks"], 2)},
            "rss_after_mb": clock.rss,
            "peak_rss_mb": round(_rss_mb(), 0), "rss_before_mb": round(rss0, 0), "load_average": os.getloadavg()}


class _Clock:
    """Wall and CPU seconds (this process's: a busy shared machine stretches the wall, not the CPU) and
    the RSS after each phase."""

    def __init__(self) -> None:
        self.wall, self.proc = time.perf_counter(), time.process_time()
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, int] = {}

    def lap(self, name: str) -> float:
        wall, proc = time.perf_counter(), time.process_time()
        self.cpu[name] = round(proc - self.proc, 2)
        self.rss[name] = _current_rss_mb()
        seconds, self.wall, self.proc = wall - self.wall, wall, proc
        return seconds


def _current_rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- S3 ------------------------------------------------------------------------------------------------
def ensure_bucket(server, n: int, workdir: Path) -> None:
    """``n`` tiny objects in ``BUCKET`` under ``in-<n>/``; made once, then found by a marker (``_bench/in-<n>``)."""
    client = server.client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except Exception as exc:
        if "BucketAlready" not in str(exc):
            raise
    marker = f"_bench/in-{n}"
    try:
        client.head_object(Bucket=BUCKET, Key=marker)
        return
    except Exception:
        pass
    tree = workdir / "objects" / f"in-{n}"
    root = tree / f"in-{n}"
    made = 0
    for folder in _folders(n):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for j in range(made, min(made + PER_FOLDER, n)):
            (d / f"r_{j:07d}_100.jpg").write_bytes(b"x")
        made = min(made + PER_FOLDER, n)
    t = time.perf_counter()
    server.copy_tree(tree, BUCKET)
    print(f"s3: put {n} objects in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    have = sum(page.get("KeyCount", 0) for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"in-{n}/"))
    if have != n:
        raise SystemExit(f"s3: {have} objects in s3://{BUCKET}/in-{n}/ after the upload, not {n}: see "
                         f"{server.workdir / 'weed.log'}")
    client.put_object(Bucket=BUCKET, Key=marker, Body=b"")


@contextlib.contextmanager
def added_round_trip(port: int, ms: int):
    """An endpoint for the local server on ``port`` whose every answer comes ``ms`` later, as from a remote
    S3: a TCP proxy (its own process) that holds each chunk the server sends for ``ms`` before passing it on,
    in order. Yields the proxy's port (``port`` itself when ``ms`` is 0)."""
    if not ms:
        yield port
        return
    import multiprocessing

    from fruitlens.bench.seaweed import free_ports

    listen = free_ports(1)[0]
    ready = multiprocessing.get_context("fork").Event()
    proxy = multiprocessing.get_context("fork").Process(target=_delay_proxy, args=(listen, port, ms / 1000, ready),
                                                        daemon=True)
    proxy.start()
    try:
        if not ready.wait(30):
            raise SystemExit("s3: the delaying proxy did not start")
        yield listen
    finally:
        proxy.terminate()
        proxy.join(10)


def _delay_proxy(listen: int, target: int, delay: float, ready) -> None:
    import asyncio

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold: float) -> None:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(send())
        while data := await src.read(1 << 16):
            queue.put_nowait((loop.time() + hold, data))
        queue.put_nowait((loop.time() + hold, b""))
        await sender

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", target)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(pipe(reader, upstream_w, 0.0), pipe(upstream_r, writer, delay))

    async def serve() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", listen)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def s3_listing(n: int, workdir: Path, repeat: int, threads: int, round_trips_ms: list[int]) -> list[dict]:
    from fruitlens.bench.seaweed import WeedServer

    with WeedServer(workdir / "seaweedfs") as server:
        ensure_bucket(server, n, workdir)
        rows = []
        for ms in round_trips_ms:
            with added_round_trip(int(server.endpoint.rsplit(":", 1)[1]), ms) as port:
                rows.append({**_listings(server, f"http://127.0.0.1:{port}", n, repeat, threads),
                             "round_trip_added_ms": ms})
        return rows


def _listings(server, endpoint: str, n: int, repeat: int, threads: int) -> dict:
    from fruitlens.storage.store import Store, StoreOptions

    options = StoreOptions(endpoint=endpoint, access_key="any", secret_key="any")
    store = Store(f"s3://{BUCKET}/in-{n}", options)
    runs: dict[str, list[float]] = {"sequential": [], "parallel": []}
    server_cpu: dict[str, list[float]] = {"sequential": [], "parallel": []}
    client_cpu: dict[str, list[float]] = {"sequential": [], "parallel": []}
    listed: dict[str, set] = {}
    for _ in range(repeat):
        for name, k in (("sequential", 1), ("parallel", threads)):
            t, server0, client0 = time.perf_counter(), _cpu_of(server.proc.pid), time.process_time()
            paths = pa.concat_tables([pa.Table.from_batches([b]) for b in lister.list_batches(store, threads=k)])
            runs[name].append(time.perf_counter() - t)
            server_cpu[name].append(round(_cpu_of(server.proc.pid) - server0, 2))
            client_cpu[name].append(round(time.process_time() - client0, 2))
            listed[name] = set(paths.column("path").to_pylist())
    if listed["sequential"] != listed["parallel"] or len(listed["parallel"]) != n:
        raise SystemExit(f"s3: the listings differ ({len(listed['sequential'])} sequential, "
                         f"{len(listed['parallel'])} parallel, {n} put)")
    best = {k: min(v) for k, v in runs.items()}
    return {"objects": n, "folders": len(_folders(n)), "list_threads": threads, "server": "SeaweedFS (weed server), "
            "127.0.0.1", "seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
            "best_s": {k: round(v, 2) for k, v in best.items()},
            # The server runs on the same cores: where its CPU seconds per listing approach wall x cores,
            # the listing is bound by the server's CPU here, not by the round trips that parallel LISTs hide.
            "server_cpu_s": server_cpu, "client_cpu_s": client_cpu, "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "speedup": round(best["sequential"] / best["parallel"], 2)}


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fruitlens.bench.planning", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--s3-objects", type=int, default=200_000, help="0: skip the S3 listing")
    ap.add_argument("--threads", type=int, default=lister.LIST_THREADS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--round-trips-ms", type=int, nargs="*", default=[0, 50],
                    help="the S3 listing once per value: ms added to each of the server's answers (0: loopback)")
    ap.add_argument("--workdir", type=Path, default=Path(".bench/plan"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one synthetic size, JSON on stdout
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(synthetic(args.one, args.threads)))
        return 0
    result: dict = {"cpu": cpu_info(), "synthetic": [], "s3": None}
    for n in args.sizes:
        out = subprocess.run([sys.executable, "-m", "fruitlens.bench.planning", "--one", str(n),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True,
                             env={**os.environ})
        row = json.loads(out.stdout)
        result["synthetic"].append(row)
        print(f"synthetic {n:,} photos: wall {row['seconds']['total']} s (listing {row['seconds']['listing']}, "
              f"planning {row['seconds']['planning']}, tasks {row['seconds']['tasks']}; with generating the "
              f"listing {row['seconds']['total_with_generating']} s), CPU {row['cpu_seconds']['total']} s (with "
              f"generating {row['cpu_seconds']['total_with_generating']} s), peak RSS {row['peak_rss_mb']:.0f} MB, "
              f"load {row['load_average'][0]:.1f}", flush=True)
    if args.s3_objects:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result["s3"] = s3_listing(args.s3_objects, args.workdir, args.repeat, args.threads, args.round_trips_ms)
        for row in result["s3"]:
            added = f"{row['round_trip_added_ms']} ms added to each answer" if row["round_trip_added_ms"] else "loopback"
            print(f"s3 {row['objects']:,} objects, {added}: sequential {row['best_s']['sequential']} s, parallel "
                  f"{row['best_s']['parallel']} s ({row['list_threads']} threads): {row['speedup']}x", flush=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
