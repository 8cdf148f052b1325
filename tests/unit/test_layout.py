"""The stage modules (what runs the job) never import a cloud client: boto3 and kubernetes belong to the
deployment packages, so an executor, a notebook or `fruitlens run` never loads them."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "fruitlens"
STAGES = ("images", "engine", "featurize", "pca", "mlsave", "moments", "projection", "pipeline", "output", "hadoopfs",
          "ledger", "lock", "status", "faults", "quantize", "rounding",
          "spark", "config", "console", "progress", "retry", "redact")
CLOUD = ("boto3", "botocore", "kubernetes")
#: The storage layer: pyarrow for all I/O; boto3 only, lazily, for S3's conditional PUT (the run lock),
#: which pyarrow cannot send. Importing it still loads no cloud client (checked below).
STORAGE = ("store",)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("stage", [s for s in STAGES if (SRC / f"{s}.py").is_file()])
def test_stage_module_source_imports_no_cloud_client(stage):
    assert not _imports(SRC / f"{stage}.py") & set(CLOUD)


def test_importing_every_stage_loads_no_cloud_client():
    code = ("import sys, importlib\n"
            f"for m in {STAGES + STORAGE!r}:\n"
            "    try: importlib.import_module('fruitlens.' + m)\n"
            "    except ModuleNotFoundError as e:\n"
            "        if e.name != 'fruitlens.' + m: raise\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {CLOUD!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_starts_without_spark_tensorflow_or_cloud_clients():
    """`fruitlens predict | status | doctor` start in about a second: building the parser loads none of them."""
    code = ("import sys\nfrom fruitlens.cli import build_parser\nbuild_parser()\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & "
            "{'pyspark', 'tensorflow', 'boto3', 'botocore', 'kubernetes'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
