"""The one base class of errors a user can act on: the CLI prints them as one line, no traceback."""
from __future__ import annotations


class FruitlensError(Exception):
    """Says what went wrong, where, and what to do about it."""

    exit_code = 1


class MissingExtra(FruitlensError):
    """A command needs a library of an optional extra (``pip install 'fruitlens[emr]'``) that is not installed."""

    exit_code = 2


def require(module: str, extra: str, what: str):
    """``import module``, or one line naming the extra that installs it (boto3, kubernetes and matplotlib
    are not core dependencies: the stages and ``predict`` run without them; pyproject.toml's extras)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # a dependency of the library is missing, not the library: not ours to explain
        raise MissingExtra(f"{what} needs {top}, which is not installed here: pip install 'fruitlens[{extra}]'") from None
