"""The package's rules, read from the source (AST) of every module under src/fruitlens:

1. no import cycles between fruitlens modules (imports inside functions count too: a lazy import that
   only hides a cycle is still one);
2. no module imports another module's private name (``from x import _y``, ``x._y``): what a module shares
   is public;
3. the stage modules (what runs the job, on the driver and the executors) import no cloud client and no
   plotting library: not themselves, not through the fruitlens modules they import at module level;
4. package code never finds files by climbing from its own path (``Path(__file__).parents[N]``): an
   installed package has no checkout around it; paths come in (flags, environment), ship as package
   data beside the module, or are resolved from the working directory;
5. building the command line loads neither Spark, TensorFlow nor a cloud client (checked by running it).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "fruitlens"
#: Third-party libraries the stage modules must not reach.
FORBIDDEN = {"boto3", "botocore", "kubernetes", "matplotlib"}
#: The stage modules; a name ending in ".*" is every module of that package.
STAGES = ("images", "featurize", "pca", "pca_stage", "moments", "projection", "mlsave", "pipeline", "spark",
          "config", "engines.*", "storage.*", "state.*", "classify.train", "classify.predictor", "classify.export")
#: Known, argued exceptions to rule 3: module → what it may import (lazily, inside a function).
ALLOWED = {
    # S3's conditional PUT (the run lock's If-None-Match), which pyarrow cannot send; only for s3:// OUTPUT.
    "fruitlens.storage.store": {"boto3", "botocore"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((SRC / PKG).rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None, bool]]:
    """(imported module, imported name or None, at module level) for every import statement."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, id(node) in top) if sub in MODULES else (target, a.name, id(node) in top))
    return out


def _internal_edges(module: str, *, top_only: bool = False) -> set[str]:
    return {m for m, _, top in _imports(module) if m in MODULES and m != module and (top or not top_only)}


def _cycles() -> list[list[str]]:
    graph = {m: _internal_edges(m) for m in MODULES}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in graph:
        if m not in index:
            visit(m)
    return out


def test_the_test_sees_every_package():
    assert {"fruitlens.cli", "fruitlens.engines", "fruitlens.storage.store", "fruitlens.state.ledger",
            "fruitlens.deploy.emr.cli", "fruitlens.deploy.k8s.chart", "fruitlens.classify.report"} <= set(MODULES)


def test_no_import_cycles():
    assert _cycles() == []


def test_no_module_imports_another_modules_private_names():
    found = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text())
        aliases = {}
        for target, name, _ in _imports(module):
            if name and name.startswith("_") and not name.startswith("__") and target.startswith(PKG) \
                    and target != module:
                found.append(f"{module}: from {target} import {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                for a in node.names:
                    if f"{target}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    assert found == []


def _is_stage(module: str) -> bool:
    for pattern in STAGES:
        if pattern.endswith(".*"):
            package = f"{PKG}.{pattern[:-2]}"
            if module == package or module.startswith(package + "."):
                return True
        elif module == f"{PKG}.{pattern}":
            return True
    return False


def _reached(module: str) -> dict[str, set[str]]:
    """Each forbidden library the module reaches → through which fruitlens modules: its own imports (lazy
    ones too), then the module-level imports of what it imports, transitively."""
    seen, todo, found = {module}, [module], {}
    while todo:
        current = todo.pop()
        for target, _, top in _imports(current):
            root = target.split(".")[0]
            if root in FORBIDDEN and (current == module or top) and root not in ALLOWED.get(current, ()):
                found.setdefault(root, set()).add(current)
        for nxt in _internal_edges(current, top_only=current != module):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return found


STAGE_MODULES = sorted(m for m in MODULES if _is_stage(m))


def test_the_stage_list_matches_modules():
    assert {"fruitlens.pipeline", "fruitlens.storage.store", "fruitlens.state.ledger", "fruitlens.config"} \
        <= set(STAGE_MODULES)


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_stage_modules_reach_no_cloud_client_or_plotting_library(module):
    assert _reached(module) == {}


def test_the_rule_follows_imports_through_fruitlens_modules(tmp_path, monkeypatch):
    """The check itself: a stage reaching boto3 through a fruitlens module, and matplotlib directly."""
    stage, helper = tmp_path / "fake_stage.py", tmp_path / "fake_helper.py"
    stage.write_text("import fruitlens.fake_helper\n\ndef plot():\n    import matplotlib\n")
    helper.write_text("import boto3\n")
    monkeypatch.setitem(MODULES, "fruitlens.fake_stage", stage)
    monkeypatch.setitem(MODULES, "fruitlens.fake_helper", helper)
    assert _reached("fruitlens.fake_stage") == {"boto3": {"fruitlens.fake_helper"},
                                                "matplotlib": {"fruitlens.fake_stage"}}


def test_no_module_climbs_out_of_the_package_from_its_own_path():
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("parents", "parent") and (
                    node.attr == "parents" or isinstance(node.value, ast.Attribute) and node.value.attr == "parent"):
                found.append(f"{module}:{node.lineno}")
    assert found == [], "use package data beside the module, a flag/env, or the working directory"


def test_importing_every_stage_loads_no_cloud_client_or_plotting_library():
    code = ("import sys, importlib\n"
            f"for m in {STAGE_MODULES!r}: importlib.import_module(m)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_line_starts_without_spark_tensorflow_or_cloud_clients():
    """`fruitlens predict | status | doctor` start in about a second: building the parser loads none of them."""
    code = ("import sys\nfrom fruitlens.cli import build_parser\nbuild_parser()\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & "
            "{'pyspark', 'tensorflow', 'boto3', 'botocore', 'kubernetes', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tests_unit_holds_only_fast_tests():
    """Slow (Spark/TensorFlow end to end) and Docker tests live in tests/e2e and tests/deploy."""
    marked = []
    for path in sorted((SRC.parent / "tests" / "unit").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("slow", "docker") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
                marked.append(f"{path.name}:{node.lineno}")
    assert marked == []


def _reaches_modules(module: str) -> set[str]:
    """Every fruitlens module ``module`` imports, directly or not (lazy imports included)."""
    seen, todo = set(), [module]
    while todo:
        for nxt in _internal_edges(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_deployment_sits_behind_one_boundary():
    """Only the command line (which registers the commands) and `fruitlens doctor` (which checks the EMR
    profile) import fruitlens.deploy; `fruitlens data` does not import the EMR package; k8s and EMR do
    not import each other."""
    deploy = [m for m in MODULES if m.startswith(f"{PKG}.deploy")]
    importers = {m for m in MODULES if m not in deploy and _internal_edges(m) & set(deploy)}
    assert importers <= {f"{PKG}.cli", f"{PKG}.doctor"}
    for package, other in (("s3data", "emr"), ("k8s", "emr"), ("emr", "k8s")):
        for module in (m for m in deploy if m.startswith(f"{PKG}.deploy.{package}")):
            assert not {m for m in _reaches_modules(module) if m.startswith(f"{PKG}.deploy.{other}")}, module
