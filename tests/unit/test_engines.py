"""The engine registry (fruitlens.engines): the one place that knows each engine. Fast: no model is run."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, WEIGHTS

from fruitlens import config, engines
from fruitlens.cli import build_parser
from fruitlens.engines import ENGINES, NAMES, EngineSpec, ModelError

SRC = REPO / "src"


def test_every_engine_choice_comes_from_the_registry():
    # NAMES is fixed at import; a test may register a fake engine in ENGINES afterwards (tests/fakes)
    assert config.ENGINES == NAMES == ("auto", "onnx", "onnx-int8", "keras") and set(NAMES[1:]) <= set(ENGINES)
    assert build_parser().parse_args(["run", "in", "out", "--engine", "onnx-int8"]).engine == "onnx-int8"
    assert {ENGINES[n].precision for n in NAMES[1:]} == {"fp32", "int8"}


def test_auto_is_onnx_where_onnx_runtime_is_installed_else_keras(monkeypatch):
    import importlib.util

    assert engines.resolve("auto") == "onnx"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert engines.resolve("auto") == "keras"
    with pytest.raises(ModelError, match="unknown engine 'tpu'; known: auto, onnx, onnx-int8, keras"):
        engines.resolve("tpu")


def test_an_engine_whose_providers_this_onnx_runtime_lacks_says_so(monkeypatch):
    """A GPU engine is a registry entry: its providers reach ONNX Runtime, and a build without them is one line."""
    monkeypatch.setitem(ENGINES, "onnx-gpu", EngineSpec(
        "onnx-gpu", "onnx", ENGINES["onnx"].prepare, ENGINES["onnx"].load,
        providers=("NoSuchExecutionProvider", "CPUExecutionProvider"), requires="onnxruntime"))
    with pytest.raises(ModelError, match=r"ONNX Runtime .* has no NoSuchExecutionProvider \(it has .*"
                                         r"CPUExecutionProvider.*\): install the build that does"):
        engines.load_engine("onnx-gpu", "/nonexistent.onnx")


def test_the_manifest_names_the_runtime_and_precision():
    artifact = engines.ModelArtifact("onnx", "/cache/m.onnx", "ab" * 32, image_size=160)
    assert engines.describe(artifact) == {"name": "onnx", "precision": "fp32", "image_size": 160,
                                          "model_file": "m.onnx", "weights_sha256": "ab" * 32}


def _engine_name_comparisons(tree: ast.AST) -> list[str]:
    """``x == "onnx"``, ``x in ("onnx", "keras")`` and the like: decisions on an engine's name."""
    names = set(ENGINES)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_registry_decides_by_an_engine_name():
    offenders = {}
    for path in (SRC / "fruitlens").rglob("*.py"):
        if path.parent == SRC / "fruitlens" / "engines":
            continue
        found = _engine_name_comparisons(ast.parse(path.read_text()))
        if found:
            offenders[str(path.relative_to(SRC))] = found
    assert not offenders, f"ask fruitlens.engines instead: {offenders}"
    providers = [str(p.relative_to(SRC)) for p in (SRC / "fruitlens").rglob("*.py") if "CPUExecutionProvider" in p.read_text()]
    assert providers == ["fruitlens/engines/__init__.py"]


def test_the_registry_and_config_import_no_engine_library():
    code = ("import sys, fruitlens.engines, fruitlens.config; "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'onnxruntime', 'onnx', 'tensorflow', 'keras'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ the image's model stage (docker/bake-model.sh)

def exporter_files() -> list[str]:
    text = (REPO / "mk" / "docker.mk").read_text()
    value = re.search(r"^EXPORTER_FILES :=((?:.*\\\n)*.*)$", text, re.M).group(1)
    return value.replace("\\\n", " ").split()


def _fruitlens_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fruitlens"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fruitlens"))
    return out


def test_the_exporter_files_are_all_the_onnx_export_imports(tmp_path):
    """The image's model stage exports the weights with only EXPORTER_FILES (copied as `make docker-stage`
    does): every fruitlens import in them, even inside a function, must be among them, and prepare_model
    must run with them alone."""
    files = exporter_files()
    copy = tmp_path / "exporter"
    for rel in files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / rel, copy / rel)
    modules = {rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for rel in files}
    for rel in files:
        for name in _fruitlens_imports(copy / rel):
            is_module = (SRC / (name.replace(".", "/") + ".py")).is_file() or (SRC / name.replace(".", "/")).is_dir()
            assert not is_module or name in modules, f"{rel} imports {name}, which EXPORTER_FILES lacks"

    # The cache holds the export already (as a rebuilt image's does): the exporter runs without TensorFlow work.
    cache = tmp_path / "cache"
    cache.mkdir()
    from fruitlens.engines.model import onnx_file_name, sha256_file

    (cache / onnx_file_name(sha256_file(WEIGHTS))).write_bytes(b"onnx")
    code = ("import sys; from fruitlens.engines import prepare_model; print(prepare_model('onnx', sys.argv[1]).path); "
            "print(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('fruitlens')))")
    out = subprocess.run([sys.executable, "-c", code, str(WEIGHTS)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(copy), "FRUITLENS_CACHE": str(cache)}).stdout
    path, loaded = out.splitlines()
    assert path == str(cache / onnx_file_name(sha256_file(WEIGHTS)))
    assert all(f.startswith(str(copy)) for f in ast.literal_eval(loaded)), loaded
