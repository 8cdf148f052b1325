"""The Spark stage: image files → features, committed batch by batch by the Python workers.

Each task gets rows ``(path, size, modified_us)`` (the driver's listing of what to process); per batch
of ``commit_size`` rows the worker reads those files, decodes, runs the engine (one per Python worker)
and writes the batch's feature rows and error rows as one Parquet file each, atomically (see
:mod:`fruitlens.storage.store`), named from the batch's content (:func:`fruitlens.state.ledger.batch_name`) so a
retried task replaces its own files instead of adding rows. A crash loses only the batches in flight.
The function yields one tiny summary tuple per batch: the driver counts from those, never re-reading
features.

A worker runs three steps at once, one batch apart: reading + decoding batch i+1 (a thread), inference
on batch i (ONNX Runtime, which releases the GIL), committing batch i-1 (a thread). Inference is the
bulk of the work; the other two then fill the gaps (file I/O, Parquet encoding, fsync) that would
otherwise leave the worker's core idle between inference calls.

Reading a file that fails for a reason that may pass (network, S3 throttling, permission, I/O) is
retried with backoff (:mod:`fruitlens.storage.retry`); still unreadable, it is a *read* error row, which the
next run processes again, unlike a *decode* error (the bytes are not a usable image). Writing a batch
is retried the same way; a write that waiting cannot cure (a full disk) fails the task, and the
driver reports it as one line.

The input is a plain RDD of tuples: a DataFrame made from Python rows would run a second Python worker
per task only to convert them.
"""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fruitlens.config import MAX_IMAGE_MPX, PipelineConfig
from fruitlens.engines import FEATURE_DIM, ModelArtifact, load_engine
from fruitlens.images import DecodeError, decode_rgb, label_and_split, preprocess
from fruitlens.progress import ProgressClient, log
from fruitlens.state.layout import ERRORS, FEATURES, batch_file
from fruitlens.state.ledger import batch_name
from fruitlens.state.schema import DECODE, READ, errors_table, features_table
from fruitlens.storage import retry
from fruitlens.storage.store import Store, StoreOptions
from fruitlens.testing import faults

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: One summary per committed batch: (file, images, features, errors, of which read errors, read_decode_s,
#: inference_s, the Python worker's pid: the driver counts workers, to see that Spark reused them and
#: their model).
SUMMARY_FIELDS = ("file", "images", "features", "errors", "read_errors", "read_decode_s", "inference_s", "worker")
READ_THREADS = 8

Row = tuple[str, int, int]  # path, size, modified_us


@dataclass
class Decoded:
    rows: list[Row]
    pixels: np.ndarray  # (ok, H, W, 3) uint8
    ok: list[int]  # indexes into rows of the decoded images
    errors: list[tuple[str, str] | None]  # (kind: DECODE | READ, reason) per row
    seconds: float


def _task_threads() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return int(ctx.cpus()) if ctx is not None else 0  # no oversubscription of the task's cores


def make_warmer(artifact: ModelArtifact, *, batch_size: int) -> Callable[[Iterable], Iterator[tuple[int, float]]]:
    """A task that starts a Python worker, imports the stage's libraries and builds its engine (with a
    first, tiny inference: ONNX Runtime finishes setting up on its first call), so that the feature
    tasks find it ready (Spark reuses Python workers). Run while the driver still takes the lock and plans."""
    engine_name, file_name, size = artifact.engine, artifact.file_name, artifact.image_size

    def warm(_: Iterable) -> Iterator[tuple[int, float]]:
        from pyspark import SparkFiles

        t = time.perf_counter()
        engine = load_engine(engine_name, SparkFiles.get(file_name), _task_threads())
        engine.predict(preprocess(np.zeros((min(batch_size, 2), size, size, 3), dtype=np.uint8)))
        yield os.getpid(), time.perf_counter() - t

    return warm


def make_featurizer(
    artifact: ModelArtifact, config: PipelineConfig, *, input_uri: str, output_uri: str, options: StoreOptions,
    progress: tuple[str, int] | None = None, in_driver: bool = False,
) -> Callable[[Iterable[Row]], Iterator[tuple]]:
    """Return the function Spark runs on each partition; all its settings are captured here.

    The worker's settings are read from ``config`` here and nowhere else (a new worker option: the options
    table and this function); the closure keeps only the values, not the config.
    ``in_driver``: the function runs in the driver itself (a small run), on the artifact's own file, one
    engine thread per call (the driver runs one call per core, as Spark runs one task per slot)."""
    batch_size, commit_size = config.batch_size, config.commit_size
    retry_timeout, max_image_mpx = config.retry_timeout, config.max_image_mpx
    engine_name, file_name, size = artifact.engine, artifact.file_name, artifact.image_size
    driver_path = artifact.path if in_driver else None

    def featurize(rows: Iterable[Row]) -> Iterator[tuple]:
        from pyspark import SparkFiles

        engine = load_engine(engine_name, driver_path or SparkFiles.get(file_name),
                             1 if driver_path else _task_threads())
        source, out = Store(input_uri, options), Store(output_uri, options)
        reporter = ProgressClient(progress)
        reads, writes = retry.for_worker(input_uri, retry_timeout), retry.for_worker(output_uri, retry_timeout)
        batches = _batched(rows, commit_size)
        with ThreadPoolExecutor(READ_THREADS) as readers, ThreadPoolExecutor(1) as decoder, \
                ThreadPoolExecutor(1) as committer:
            read_pool = None if source.is_local else readers  # S3: overlap the GETs
            committing: Future | None = None
            for decoded in _ahead(batches, lambda b: _decode(b, source, read_pool, size, reads, max_image_mpx),
                                  decoder):
                t = time.perf_counter()
                features = _infer(engine, decoded, batch_size)
                inference_s = time.perf_counter() - t
                if committing is not None:
                    yield _committed(committing, out)
                committing = committer.submit(_commit, out, decoded, features, inference_s, reporter, writes)
            if committing is not None:
                yield _committed(committing, out)

    return featurize


def _batched(rows: Iterable[Row], n: int) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _ahead(items: Iterator, fn: Callable, pool: ThreadPoolExecutor) -> Iterator:
    """``fn(item)`` for each item, computing the next one in ``pool`` while the caller uses this one."""
    pending = None
    for item in items:
        future = pool.submit(fn, item)
        if pending is not None:
            yield pending.result()
        pending = future
    if pending is not None:
        yield pending.result()


def _committed(future: Future, out: Store) -> tuple:
    summary = future.result()
    faults.fail_once()  # after a commit: the retried task must rewrite, not duplicate, it
    if faults.wants("extract"):
        faults.kill_point("extract", len(out.list(FEATURES)))
    return summary


def _read(source: Store, path: str, retrier: retry.Retrier) -> bytes | OSError:
    try:
        return retrier.call(lambda: source.read_bytes(source.path_of(path)), retry.retryable_read)
    except OSError as exc:  # vanished since the listing, or unreadable for the whole retry budget
        return exc


def read_failure(exc: OSError, budget_s: float) -> str:
    """The reason a read error row gives."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if retry.vanished(exc):
        return f"file vanished since the listing: {text}"
    if isinstance(exc, retry.UnavailableError):
        return f"cannot read file: {text}"
    return f"cannot read file (retried for {budget_s:g} s): {text}"


def _decode(rows: list[Row], source: Store, pool: ThreadPoolExecutor | None, size: int = 224,
            retrier: retry.Retrier | None = None, max_image_mpx: float = MAX_IMAGE_MPX) -> Decoded:
    t = time.perf_counter()
    retrier = retrier or retry.Retrier(0)
    paths = [r[0] for r in rows]

    def read(path: str) -> bytes | OSError:
        return _read(source, path, retrier)

    contents = pool.map(read, paths) if pool else (read(p) for p in paths)
    errors: list[tuple[str, str] | None] = [None] * len(rows)
    pixels = np.empty((len(rows), size, size, 3), dtype=np.uint8)  # size: the model's (--image-size)
    ok: list[int] = []
    for i, content in enumerate(contents):
        if isinstance(content, OSError):
            errors[i] = (READ, read_failure(content, retrier.budget_s))
            continue
        try:
            pixels[len(ok)] = decode_rgb(content, (size, size), max_image_mpx)
            ok.append(i)
        except DecodeError as exc:
            errors[i] = (DECODE, str(exc))
    return Decoded(rows, pixels[: len(ok)], ok, errors, time.perf_counter() - t)


def _infer(engine, decoded: Decoded, batch_size: int) -> np.ndarray:
    n = len(decoded.ok)
    features = np.empty((n, FEATURE_DIM), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        features[start:stop] = engine.predict(preprocess(decoded.pixels[start:stop]))
    return features


def _commit(out: Store, decoded: Decoded, features: np.ndarray, inference_s: float,
            reporter: ProgressClient, retrier: retry.Retrier | None = None) -> tuple:
    rows, ok, errors = decoded.rows, decoded.ok, decoded.errors
    retrier = retrier or retry.Retrier(0)
    name = batch_name(rows)
    if ok:
        labels, splits = zip(*(label_and_split(rows[i][0]) for i in ok), strict=True)
        table = features_table([rows[i][0] for i in ok], list(labels), list(splits), [rows[i][1] for i in ok],
                               [rows[i][2] for i in ok], features)
        retrier.call(lambda: out.write_table(batch_file(FEATURES, name), table), retry.retryable_write)
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        table = errors_table([rows[i][0] for i in bad], [errors[i][1] for i in bad], [errors[i][0] for i in bad],
                             [rows[i][1] for i in bad], [rows[i][2] for i in bad])
        retrier.call(lambda: out.write_table(batch_file(ERRORS, name), table), retry.retryable_write)
    reporter.add(len(rows), errors=len(bad))  # image-level progress for the driver (fire and forget)
    unread = sum(1 for i in bad if errors[i][0] == READ)
    return name, len(rows), len(ok), len(bad), unread, decoded.seconds, inference_s, os.getpid()


# ---------------------------------------------------------------- on the driver: task sizes, warm-up

def task_sizes(images: int, slots: int, *, max_images: int = 2500, min_images: int = 256) -> list[int]:
    """Images per feature task, in the order Spark starts them (factoring, a guided self-scheduling):
    each task takes half its slot's share of what is left (``left / (2 slots)``), at most ``max_images``
    (a retried task redoes at most that, ~25 s of one core), at least ``min_images`` (one commit batch:
    smaller loses the worker's decode/infer overlap). Tasks shrink towards the end, so a worker that runs slower (a noisy neighbour,
    a slower node, S3 latency) leaves the others idle for one small task at most, not for a big one."""
    sizes, left, slots = [], images, max(1, slots)
    while left > 0:
        size = min(max_images, max(min_images, -(-left // (2 * slots))), left)
        if left - size < min_images:  # no runt task at the end
            size = left
        sizes.append(size)
        left -= size
    return sorted(sizes, reverse=True)


def even_sizes(images: int, tasks: int) -> list[int]:
    """``--partitions N``: N tasks of (nearly) equal size."""
    tasks = max(1, min(tasks, images))
    return [images // tasks + (1 if i < images % tasks else 0) for i in range(tasks)]


class WarmUp:
    """Starts the Python workers and builds their engines in a background Spark job (see
    :func:`make_warmer`) while the driver takes the lock, reads OUTPUT's index and plans; :meth:`wait`
    before the feature job. Leaving the block early cancels it."""

    def __init__(self, spark: SparkSession, job) -> None:
        self._sc = spark.sparkContext
        self._group = f"fruitlens-warmup-{time.monotonic_ns()}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmup")
        self._future = self._pool.submit(self._run, job)

    def _run(self, job):
        self._sc.setJobGroup(self._group, "warm up the Python workers", interruptOnCancel=True)
        return job()

    def wait(self) -> None:
        t = time.perf_counter()
        self._future.result()  # a worker that cannot load the model fails here, before any image
        if time.perf_counter() - t > 0.1:
            log(f"extract: waited {time.perf_counter() - t:.1f} s for the Python workers to load the model")

    def cancel(self) -> None:
        if not self._future.done():
            self._sc.cancelJobGroup(self._group)

    def __enter__(self) -> WarmUp:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.cancel()
        self._pool.shutdown(wait=False)


def warm_workers(spark: SparkSession, artifact: ModelArtifact, *, batch_size: int) -> WarmUp:
    sc = spark.sparkContext
    warmer = make_warmer(artifact, batch_size=batch_size)
    # One task per slot: each runs in its own Python worker, which the feature job's tasks then reuse.
    return WarmUp(spark, lambda: sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism)
                  .mapPartitions(warmer).collect())
