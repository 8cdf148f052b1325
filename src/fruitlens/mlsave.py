"""Save the PCA's Spark ML ``PipelineModel`` (scaler → PCA) without running a Spark job.

``model.write().save()`` runs five small Spark jobs (a text file per metadata, a Parquet file per
stage's data): seconds of job latency for a few KB, most of a small run's PCA time. The same files are
written here from the driver: each stage's metadata JSON comes from Spark's own
``DefaultParamsWriter.getMetadataToSave`` (no job), and each stage's data is one Parquet file whose
footer carries Spark's schema (``org.apache.spark.sql.parquet.row.metadata``), so Spark reads the
vector and matrix columns back as ``VectorUDT``/``MatrixUDT``. ``PipelineModel.load`` reads the
result like any saved model (a test loads it and compares its projections).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
from pyspark.ml import PipelineModel
from pyspark.ml.linalg import MatrixUDT, VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql.types import StructField, StructType

from fruitlens.storage.store import Store

SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"
_VECTOR = pa.struct([pa.field("type", pa.int8(), nullable=False), pa.field("size", pa.int32()),
                     pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
                     pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False)))])
_MATRIX = pa.struct([pa.field("type", pa.int8(), nullable=False), pa.field("numRows", pa.int32(), nullable=False),
                     pa.field("numCols", pa.int32(), nullable=False),
                     pa.field("colPtrs", pa.list_(pa.field("element", pa.int32(), nullable=False))),
                     pa.field("rowIndices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
                     pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
                     pa.field("isTransposed", pa.bool_(), nullable=False)])


def _dense_vector(values: np.ndarray) -> dict:
    return {"type": 1, "size": None, "indices": None, "values": np.asarray(values, np.float64).tolist()}


def _dense_matrix(matrix: np.ndarray) -> dict:
    rows, cols = matrix.shape  # stored column-major, as Spark's DenseMatrix
    return {"type": 1, "numRows": rows, "numCols": cols, "colPtrs": None, "rowIndices": None,
            "values": np.asarray(matrix, np.float64).T.reshape(-1).tolist(), "isTransposed": False}


def _data_table(columns: dict[str, tuple[pa.DataType, object, object]]) -> pa.Table:
    """One row; ``columns``: name → (arrow type, Spark UDT, value)."""
    spark_schema = StructType([StructField(name, udt, True) for name, (_, udt, _) in columns.items()])
    schema = pa.schema([pa.field(name, typ) for name, (typ, _, _) in columns.items()],
                       metadata={SPARK_SCHEMA_KEY: spark_schema.json().encode()})
    return pa.Table.from_pylist([{name: value for name, (_, _, value) in columns.items()}], schema=schema)


def _stage_metadata(spark: SparkSession, stage) -> str:
    stage._transfer_params_to_java()
    jvm = spark.sparkContext._jvm
    # (Params, SparkContext, Option, Option) is the form Spark 3.5 and 4.0 both have; the shorter
    # (Params, SparkSession) exists only from 4.0 on (EMR 7.x runs 3.5).
    none = jvm.scala.Option.empty()
    return jvm.org.apache.spark.ml.util.DefaultParamsWriter.getMetadataToSave(
        stage._java_obj, spark.sparkContext._jsc.sc(), none, none)


def save_pca_pipeline(spark: SparkSession, model: PipelineModel, store: Store, rel: str) -> None:
    """Write ``model`` (StandardScalerModel → PCAModel, as :func:`fruitlens.pca.fit_from_moments` builds
    it) under ``store``/``rel`` in Spark ML's layout, replacing what is there."""
    scaler, pca = model.stages
    store.delete_tree(rel)
    store.make_dirs(rel)
    pipeline_meta = {"class": "org.apache.spark.ml.PipelineModel", "timestamp": int(time.time() * 1000),
                     "sparkVersion": spark.version, "uid": model.uid,
                     "paramMap": {"stageUids": [s.uid for s in model.stages]}, "defaultParamMap": {}}
    data = {
        scaler: {"std": (_VECTOR, VectorUDT(), _dense_vector(scaler.std.toArray())),
                 "mean": (_VECTOR, VectorUDT(), _dense_vector(scaler.mean.toArray()))},
        pca: {"pc": (_MATRIX, MatrixUDT(), _dense_matrix(pca.pc.toArray())),
              "explainedVariance": (_VECTOR, VectorUDT(), _dense_vector(pca.explainedVariance.toArray()))},
    }
    for i, stage in enumerate(model.stages):
        folder = f"{rel}/stages/{i}_{stage.uid}"
        store.make_dirs(f"{folder}/metadata", f"{folder}/data")
        store.write_text(f"{folder}/metadata/part-00000", _stage_metadata(spark, stage) + "\n")
        store.write_table(f"{folder}/data/part-00000.snappy.parquet", _data_table(data[stage]))
    store.make_dirs(f"{rel}/metadata")
    # Last: a model folder without its top metadata does not load, so a crash leaves no half model.
    store.write_text(f"{rel}/metadata/part-00000", json.dumps(pipeline_meta, separators=(",", ":")) + "\n")
