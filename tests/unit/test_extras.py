"""boto3, kubernetes and matplotlib are optional extras: the core installs without them, and a command
that needs one it does not find says, in one line, which extra installs it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tomllib

from fruitlens.cli import main
from fruitlens.errors import MissingExtra, require

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]


def test_the_core_dependencies_have_no_cloud_client_or_plotting_library():
    core = " ".join(PYPROJECT["dependencies"])
    assert not any(lib in core for lib in ("boto3", "kubernetes", "matplotlib"))
    extras = PYPROJECT["optional-dependencies"]
    assert any("boto3" in r for r in extras["emr"]) and any("boto3" in r for r in extras["s3"])
    assert any("kubernetes" in r for r in extras["k8s"]) and any("matplotlib" in r for r in extras["report"])


@pytest.mark.parametrize("argv, missing, extra", [
    (["emr", "clusters", "--region", "eu-west-1"], "boto3", "emr"),
    (["k8s", "status", "fruitlens"], "kubernetes", "k8s"),
])
def test_a_missing_extra_is_one_line_naming_it(argv, missing, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # `import boto3` now raises ModuleNotFoundError
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fruitlens: error: ")
    assert f"needs {missing}, which is not installed here: pip install 'fruitlens[{extra}]'" in err


def test_require_does_not_hide_another_missing_module(monkeypatch, tmp_path):
    # Both names: another test may already have imported matplotlib.pyplot into this process.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingExtra, match=r"fruitlens\[report\]"):
        require("matplotlib.pyplot", "report", "the report's figures")
    (tmp_path / "half_installed.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):  # a broken install, shown as it is
        require("half_installed", "report", "x")
