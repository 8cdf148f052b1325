"""The Spark stage: image files → (path, label, split, features | error), one engine per Python worker.

``mapInArrow`` is the Arrow form of ``mapInPandas``: batches arrive as Arrow record batches and the
1280-float feature rows go back as one flat buffer, with no per-row Python objects on the way out.
The function is evaluated once per image; the caller persists its result before writing twice.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.accumulators import Accumulator
from pyspark.sql import DataFrame, SparkSession

from fruitlens.engine import FEATURE_DIM, ModelArtifact, load_engine
from fruitlens.images import DecodeError, decode_rgb, label_and_split, preprocess

RESULT_SCHEMA = "path string, label string, split string, features array<float>, error string"


@dataclass
class WorkerStats:
    """Seconds and counts summed over all Python workers (Spark accumulators)."""

    decode_s: Accumulator
    inference_s: Accumulator
    images: Accumulator

    @classmethod
    def create(cls, spark: SparkSession) -> WorkerStats:
        sc = spark.sparkContext
        return cls(sc.accumulator(0.0), sc.accumulator(0.0), sc.accumulator(0))

    def as_dict(self) -> dict[str, float]:
        return {
            "decode_resize_s": round(self.decode_s.value, 3),
            "inference_s": round(self.inference_s.value, 3),
            "images": self.images.value,
        }


def make_featurizer(
    artifact: ModelArtifact, *, batch_size: int, stats: WorkerStats
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Return the function Spark runs on each partition; all its settings are captured here."""
    engine_name, file_name = artifact.engine, artifact.file_name

    def featurize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import SparkFiles, TaskContext

        ctx = TaskContext.get()
        threads = int(ctx.cpus()) if ctx is not None else 0  # no oversubscription of the task's cores
        engine = load_engine(engine_name, SparkFiles.get(file_name), threads)
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            del batch
            t0 = time.perf_counter()
            errors: list[str | None] = [None] * len(paths)
            pixels = np.empty((len(paths), 224, 224, 3), dtype=np.uint8)
            ok: list[int] = []
            for i in range(len(paths)):
                try:
                    pixels[len(ok)] = decode_rgb(contents[i].as_py())
                    ok.append(i)
                except DecodeError as exc:
                    errors[i] = str(exc)
            del contents  # the image bytes are not needed past this point
            t1 = time.perf_counter()
            features = np.empty((len(ok), FEATURE_DIM), dtype=np.float32)
            for start in range(0, len(ok), batch_size):
                stop = min(start + batch_size, len(ok))
                features[start:stop] = engine.predict(preprocess(pixels[start:stop]))
            t2 = time.perf_counter()
            stats.decode_s.add(t1 - t0)
            stats.inference_s.add(t2 - t1)
            stats.images.add(len(paths))
            yield _result_batch(paths, errors, features)

    return featurize


def _result_batch(paths: list[str], errors: list[str | None], features: np.ndarray) -> pa.RecordBatch:
    failed = np.array([e is not None for e in errors], dtype=bool)
    lengths = np.where(failed, 0, FEATURE_DIM)
    offsets = np.zeros(len(paths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    feature_col = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(features.reshape(-1)), mask=pa.array(failed)
    )
    labels, splits = zip(*(label_and_split(p) for p in paths), strict=True) if paths else ((), ())
    return pa.RecordBatch.from_arrays(
        [pa.array(paths, pa.string()), pa.array(labels, pa.string()), pa.array(splits, pa.string()),
         feature_col, pa.array(errors, pa.string())],
        names=["path", "label", "split", "features", "error"],
    )


def featurize_images(
    images: DataFrame, artifact: ModelArtifact, *, batch_size: int, stats: WorkerStats
) -> DataFrame:
    """``images`` has ``path`` and ``content``; the result has :data:`RESULT_SCHEMA`."""
    fn = make_featurizer(artifact, batch_size=batch_size, stats=stats)
    return images.select("path", "content").mapInArrow(fn, RESULT_SCHEMA)
