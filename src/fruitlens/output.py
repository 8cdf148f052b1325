"""The output layout, the overwrite rule and the manifest (always written last)."""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata

from pyspark.sql import SparkSession

from fruitlens import hadoopfs
from fruitlens.errors import FruitlensError


class OutputExistsError(FruitlensError, RuntimeError):
    """OUTPUT already holds something and ``--overwrite`` was not given."""


class OutputMissingError(FruitlensError, FileNotFoundError):
    """OUTPUT is not a finished fruitlens output."""


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def _child(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def features(self) -> str:
        return self._child("features")

    @property
    def errors(self) -> str:
        return self._child("errors")

    @property
    def pca(self) -> str:
        return self._child("pca")

    @property
    def pca_model(self) -> str:
        return self._child("pca_model")

    @property
    def manifest(self) -> str:
        return self._child("manifest.json")


def prepare_output(spark: SparkSession, layout: OutputLayout, *, overwrite: bool) -> None:
    """Refuse an existing OUTPUT unless ``overwrite``; prove it is writable before any work starts."""
    if hadoopfs.exists(spark, layout.root):
        if not overwrite:
            raise OutputExistsError(
                f"OUTPUT {layout.root} already exists; pass --overwrite to replace it, or choose another path"
            )
        hadoopfs.delete(spark, layout.root)
    probe = f"{layout.root}/_write_check"
    hadoopfs.write_text(spark, probe, "fruitlens write check\n")  # fails here on a missing permission
    hadoopfs.delete(spark, layout.root)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("fruitlens", "pyspark", "numpy", "pandas", "pyarrow", "pillow", "onnxruntime",
                 "tensorflow-cpu", "tensorflow", "keras", "tf2onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(spark: SparkSession, layout: OutputLayout, manifest: dict) -> None:
    hadoopfs.write_text(spark, layout.manifest, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(spark: SparkSession, layout: OutputLayout) -> dict:
    if not hadoopfs.exists(spark, layout.manifest):
        raise OutputMissingError(
            f"{layout.manifest} not found: OUTPUT is not a finished fruitlens output (run `fruitlens extract` first)"
        )
    return json.loads(hadoopfs.read_text(spark, layout.manifest))


def command_line() -> str:
    return " ".join(sys.argv)
