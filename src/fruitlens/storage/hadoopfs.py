"""Small file operations on any Hadoop URI (file:, s3:, s3a:, hdfs:) through Spark's own FileSystem.

Going through the JVM means one code path for a laptop and a cluster, and the same credentials and
endpoints Spark itself uses. Errors come back as :class:`StorageError` naming the URI and what to check.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

from fruitlens.errors import FruitlensError
from fruitlens.storage import uris


class StorageError(FruitlensError, RuntimeError):
    """A path cannot be read or written: wrong URI, missing object, no permission, no filesystem."""


def _explain(uri: str, exc: Exception) -> StorageError:
    text = str(exc)
    first = next((ln.strip() for ln in text.splitlines() if "Exception" in ln or "Error" in ln), text[:300])
    scheme = uri.partition(":")[0]
    if "No FileSystem for scheme" in text:
        hint = (
            f"this Spark has no filesystem for {scheme}://. s3a:// needs the hadoop-aws and AWS SDK jars "
            "(the oss image has them); on EMR use s3://"
        )
    elif "AccessDenied" in text or "Forbidden" in text or "403" in text or "Permission denied" in text:
        hint = "permission denied: check the credentials / IAM role policy for this prefix"
    elif "NoSuchBucket" in text or "UnknownHost" in text:
        hint = "the bucket or endpoint does not exist: check the URI and the S3 endpoint settings"
    else:
        hint = first
    return StorageError(f"{uri}: {hint}")


def _fs(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    try:
        fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    except Exception as exc:  # py4j wraps every JVM exception
        raise _explain(uri, exc) from None
    return fs, path


def exists(spark: SparkSession, uri: str) -> bool:
    fs, path = _fs(spark, uri)
    try:
        return bool(fs.exists(path))
    except Exception as exc:
        raise _explain(uri, exc) from None


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    fs, path = _fs(spark, uri)
    try:
        stream = fs.create(path, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
    except Exception as exc:
        raise _explain(uri, exc) from None


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    fs, path = _fs(spark, uri)
    try:
        stream = fs.open(path)
        try:
            return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()
    except Exception as exc:
        raise _explain(uri, exc) from None


def read_text(spark: SparkSession, uri: str) -> str:
    fs, path = _fs(spark, uri)
    try:
        stream = fs.open(path)
        try:
            jvm = spark.sparkContext._jvm
            return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
    except Exception as exc:
        raise _explain(uri, exc) from None


def delete(spark: SparkSession, uri: str) -> None:
    fs, path = _fs(spark, uri)
    try:
        fs.delete(path, True)
    except Exception as exc:
        raise _explain(uri, exc) from None


def fetch(spark: SparkSession, uri: str) -> Path:
    """A local path for a file at any Hadoop URI: local files as they are, others copied once (driver)."""
    if uris.parse(uri).is_local:
        return Path(uris.local_path(uri)).expanduser()
    fs, path = _fs(spark, uri)
    local = Path(tempfile.mkdtemp(prefix="fruitlens-fetch-")) / path.getName()
    try:
        fs.copyToLocalFile(False, path, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(str(local)), True)
    except Exception as exc:
        raise _explain(uri, exc) from None
    return local


def put_file(spark: SparkSession, local: str, uri: str) -> None:
    """Copy a local file to any Hadoop URI (replacing it)."""
    fs, path = _fs(spark, uri)
    try:
        fs.copyFromLocalFile(False, True, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(local), path)
    except Exception as exc:
        raise _explain(uri, exc) from None
