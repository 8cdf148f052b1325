"""The Spark stage: image files → features, committed batch by batch by the Python workers.

Each task gets rows ``(path, size, modified_us)`` (the driver's listing of what to process); per Arrow
batch the worker reads those files, decodes, runs the engine (one per Python worker) and writes the
batch's feature rows and error rows as one Parquet file each, atomically (see :mod:`fruitlens.store`),
named from the batch's content (:func:`fruitlens.ledger.batch_name`) so a retried task replaces its
own files instead of adding rows. A crash loses only the batches in flight. The function yields one
tiny summary row per batch: the driver counts from those, never re-reading features.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from fruitlens import faults
from fruitlens.engine import FEATURE_DIM, ModelArtifact, load_engine
from fruitlens.images import DecodeError, decode_rgb, label_and_split, preprocess
from fruitlens.ledger import ERRORS_DIR, FEATURES_DIR, batch_name, errors_table, features_table
from fruitlens.progress import ProgressClient
from fruitlens.store import Store, StoreOptions

TODO_SCHEMA = "path string, size long, modified_us long"
SUMMARY_SCHEMA = "file string, images long, features long, errors long, read_decode_s double, inference_s double"
READ_THREADS = 8


def make_featurizer(
    artifact: ModelArtifact, *, batch_size: int, input_uri: str, output_uri: str, options: StoreOptions,
    progress: tuple[str, int] | None = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Return the function Spark runs on each partition; all its settings are captured here."""
    engine_name, file_name, size = artifact.engine, artifact.file_name, artifact.image_size

    def featurize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles, TaskContext

        ctx = TaskContext.get()
        threads = int(ctx.cpus()) if ctx is not None else 0  # no oversubscription of the task's cores
        engine = load_engine(engine_name, SparkFiles.get(file_name), threads)
        source, out = Store(input_uri, options), Store(output_uri, options)
        pool = ThreadPoolExecutor(READ_THREADS) if not source.is_local else None  # S3: overlap GETs
        reporter = ProgressClient(progress)
        try:
            for batch in batches:
                result = _process(batch, engine, batch_size, source, out, pool, size)
                reporter.add(batch.num_rows)  # image-level progress for the driver (fire and forget)
                yield result
                faults.fail_once()  # after a commit: the retried task must rewrite, not duplicate, it
                if faults.wants("extract"):
                    faults.kill_point("extract", len(out.list(FEATURES_DIR)))
        finally:
            if pool:
                pool.shutdown()

    return featurize


def _read(source: Store, path: str) -> bytes | Exception:
    try:
        return source.read_bytes(source.path_of(path))
    except OSError as exc:  # vanished since the listing, or unreadable: an error row, not a failed job
        return exc


def _process(batch: pa.RecordBatch, engine, batch_size: int, source: Store, out: Store, pool,
             size: int = 224) -> pa.RecordBatch:
    paths = batch.column("path").to_pylist()
    sizes = batch.column("size").to_pylist()
    modified = batch.column("modified_us").to_pylist()
    t0 = time.perf_counter()
    contents = pool.map(lambda p: _read(source, p), paths) if pool else (_read(source, p) for p in paths)
    errors: list[str | None] = [None] * len(paths)
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)  # size: the model's (--image-size)
    ok: list[int] = []
    for i, content in enumerate(contents):
        try:
            if isinstance(content, Exception):
                raise DecodeError(f"cannot read file: {content}")
            pixels[len(ok)] = decode_rgb(content, (size, size))
            ok.append(i)
        except DecodeError as exc:
            errors[i] = str(exc)
    t1 = time.perf_counter()
    features = np.empty((len(ok), FEATURE_DIM), dtype=np.float32)
    for start in range(0, len(ok), batch_size):
        stop = min(start + batch_size, len(ok))
        features[start:stop] = engine.predict(preprocess(pixels[start:stop]))
    t2 = time.perf_counter()

    name = batch_name(zip(paths, sizes, modified, strict=True))
    if ok:
        labels, splits = zip(*(label_and_split(paths[i]) for i in ok), strict=True)
        out.write_table(f"{FEATURES_DIR}/{name}", features_table(
            [paths[i] for i in ok], list(labels), list(splits), [sizes[i] for i in ok],
            [modified[i] for i in ok], features))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        out.write_table(f"{ERRORS_DIR}/{name}", errors_table(
            [paths[i] for i in bad], [errors[i] for i in bad], [sizes[i] for i in bad], [modified[i] for i in bad]))
    return pa.RecordBatch.from_arrays(
        [pa.array([name]), pa.array([len(paths)], pa.int64()), pa.array([len(ok)], pa.int64()),
         pa.array([len(bad)], pa.int64()), pa.array([t1 - t0]), pa.array([t2 - t1])],
        names=["file", "images", "features", "errors", "read_decode_s", "inference_s"],
    )
