"""The ``fruitlens`` command: parses, builds the one config object, calls one function per subcommand.

The job's commands (run, extract, pca) are here; the others live in their own modules, each exposing
``register(subparsers)``, listed in :data:`COMMANDS` (imported here: a missing one is an error, not a
command that silently disappears). Their imports are light: Spark, TensorFlow and the cloud clients load
only when a command runs (tests/unit/test_architecture.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fruitlens import __version__, bench, console, doctor, history
from fruitlens.bench import engines as bench_engines
from fruitlens.classify import cli as classify_cli
from fruitlens.cli_options import (
    SCOPES,
    add_lock_options,
    add_pca_command_options,
    add_pipeline_options,
    config_from_args,
)
from fruitlens.config import DEFAULT_INPUT
from fruitlens.deploy.emr import cli as emr_cli
from fruitlens.deploy.k8s import cli as k8s_cli
from fruitlens.deploy.s3data import cli as data_cli
from fruitlens.errors import FruitlensError
from fruitlens.redact import redact_text
from fruitlens.serve import cli as serve_cli
from fruitlens.state import status

#: The command modules, in the order of `fruitlens --help`.
COMMANDS = (status, history, bench, bench_engines, emr_cli, k8s_cli, data_cli, classify_cli, doctor, serve_cli)


def _configured(ns: argparse.Namespace):
    """The config, with the console set up before Spark or TensorFlow is imported."""
    config = config_from_args(ns)
    console.configure(config.verbosity)
    return config


def _run(ns: argparse.Namespace) -> int:
    config = _configured(ns)
    from fruitlens.pipeline import run

    manifest = run(config, with_pca=ns.command == "run")
    print(json.dumps({"output": manifest["output"], "counts": manifest["counts"],
                      "images_per_second": manifest["images_per_second"],
                      "pca_k": (manifest.get("pca") or {}).get("k")}))
    return 0


def _pca(ns: argparse.Namespace) -> int:
    config = _configured(ns)
    from fruitlens.pipeline import refit_pca

    manifest = refit_pca(config)
    print(json.dumps({"output": manifest["output"], "pca": {k: manifest["pca"].get(k) for k in ("k", "variance_kept")}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruitlens", description="Fruit photos → Spark → MobileNetV2 features → Parquet → PCA.")
    parser.add_argument("--version", action="version", version=f"fruitlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (("run", "images → features → PCA (the whole job)"),
                            ("extract", "images → features only")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("input", nargs="?", default=None, metavar="INPUT",
                       help=f"folder or URI of images (default $FRUITLENS_INPUT or {DEFAULT_INPUT})")
        p.add_argument("output", nargs="?", default=None, metavar="OUTPUT", help="output folder or URI")
        add_pipeline_options(p, pca="pca" in SCOPES[name])
        add_lock_options(p)
        p.set_defaults(func=_run)

    p = sub.add_parser("pca", help="(re)fit PCA on OUTPUT/features")
    p.add_argument("output", metavar="OUTPUT")
    add_pca_command_options(p)
    p.set_defaults(func=_pca, spark_conf=None)

    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if argv is None:  # the `fruitlens` command itself, not a caller of main() (tests, notebooks)
        console.exit_on_interrupt()
    try:
        return ns.func(ns)
    except FruitlensError as exc:
        line = redact_text(f"fruitlens: error: {exc}")
        print(line, file=sys.stderr)
        console.record_termination(line)
        return exc.exit_code
    except Exception as exc:
        console.record_termination(f"{type(exc).__name__}: {exc}".splitlines()[0])
        if console.jvm_stderr is not None:  # the JVM's own account of what failed, hidden so far
            console.jvm_stderr.dump()
        raise
    except BrokenPipeError:  # `fruitlens ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # before Spark runs (after: fruitlens.console.stop_on_interrupt)
        print(console.INTERRUPTED, file=sys.stderr)
        console.record_termination(console.INTERRUPTED)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
