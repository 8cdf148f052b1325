"""The ``fruitlens`` command: parses, builds the one config object, calls one function per subcommand.

Deployment commands (``emr``, ``k8s``, ``data``) live in their own modules and register themselves
through :data:`COMMAND_MODULES`; each exposes ``register(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from fruitlens import __version__, console
from fruitlens.config import DEFAULT_INPUT, ENGINES, IMAGE_SIZES, load_config
from fruitlens.errors import FruitlensError
from fruitlens.redact import redact_text

#: Modules adding subcommands; a module that is not there yet is skipped.
COMMAND_MODULES = ("fruitlens.state.status", "fruitlens.bench", "fruitlens.bench.engines", "fruitlens.deploy.emr.cli", "fruitlens.deploy.k8s.cli",
                   "fruitlens.deploy.s3data.cli", "fruitlens.classify.cli", "fruitlens.doctor")


def _conf_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def add_pipeline_options(parser: argparse.ArgumentParser, *, pca: bool = True) -> None:
    """Options of the job itself; also used by `emr submit` / `k8s submit` to forward them."""
    g = parser.add_argument_group("pipeline")
    if pca:
        k = g.add_mutually_exclusive_group()
        k.add_argument("--pca-k", type=int, help="keep exactly K principal components")
        k.add_argument("--pca-variance", type=float, help="keep the fewest components reaching this "
                       "fraction of the variance (default 0.95)")
        g.add_argument("--pca-standardize", action="store_true", default=None,
                       help="scale features to unit variance before PCA (they are always centred)")
        g.add_argument("--train", action="store_true", default=None,
                       help="then fit the classifier on the PCA (as `fruitlens train`)")
        g.add_argument("--report", action="store_true", default=None,
                       help="then write OUTPUT/report/index.html (as `fruitlens report`)")
    g.add_argument("--batch-size", type=int, help="images per inference call (default 64)")
    g.add_argument("--arrow-batch-size", type=int, help="images per committed batch: one Parquet file, one progress step and what a crash can lose (default 256)")
    g.add_argument("--partitions", type=int, help="repartition the images into N tasks (default: Spark's split)")
    g.add_argument("--limit", type=int, help="process only the first N images (sorted by path)")
    g.add_argument("--engine", choices=ENGINES, help="inference engine (default auto = onnx; onnx-int8: "
                   "opt-in, quantized, calibrated on INPUT's photos)")
    g.add_argument("--image-size", type=int, choices=IMAGE_SIZES, help="resize photos to this square and "
                   "build the model at it (default 224; smaller is faster, less faithful)")
    g.add_argument("--max-image-mpx", type=float, metavar="MPX",
                   help="refuse (an error row) a photo of more megapixels than this as decoded; JPEGs "
                        "decode reduced, so only other formats reach it (default 50)")
    g.add_argument("--weights", help="'imagenet' (Keras cache) or a .h5 file path/URI")
    g.add_argument("--master", help="Spark master (default local[*], or what spark-submit set)")
    g.add_argument("--retry-timeout", type=float, metavar="SECONDS",
                   help="how long a worker retries a read or write that may succeed later (network, S3 "
                        "throttling, permission, I/O) before recording a read error (default 45; 0: no retries)")
    g.add_argument("--max-error-rate", type=float, metavar="FRACTION",
                   help="fail the run when more than this fraction of the images end as errors, decode or "
                        "read (default 0.05; 0: never)")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="start OUTPUT from scratch (default: continue what it holds for the same INPUT)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress lines")
    add_verbosity_options(g)
    g.add_argument("--conf", dest="spark_conf", action="append", type=_conf_pair, metavar="KEY=VALUE",
                   help="extra Spark setting (repeatable)")
    g.add_argument("--config", dest="config_file", help="YAML file of settings (lowest precedence)")


def add_verbosity_options(group) -> None:
    v = group.add_mutually_exclusive_group()
    v.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default=None,
                   help="also show Spark's, the JVM's and TensorFlow's output")
    v.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                   help="only errors and the final summary")


def add_lock_options(parser: argparse.ArgumentParser) -> None:
    """OUTPUT's one-run-at-a-time lock (docs/resume.md): decided where the run starts, not forwarded."""
    g = parser.add_argument_group("lock")
    g.add_argument("--force-unlock", action="store_true", default=None,
                   help="take over OUTPUT's lock even if the run holding it looks alive")
    g.add_argument("--lock-timeout", type=float,
                   help="seconds without heartbeat after which another run's lock is taken over (default 60)")
    g.add_argument("--lock-wait", type=float,
                   help="seconds to wait for another run's lock to be released or go stale before refusing "
                        "(default 0; cluster retries set FRUITLENS_LOCK_WAIT)")


PIPELINE_FLAGS = {
    "pca_k": "--pca-k", "pca_variance": "--pca-variance", "pca_standardize": "--pca-standardize",
    "batch_size": "--batch-size", "arrow_batch_size": "--arrow-batch-size", "partitions": "--partitions",
    "limit": "--limit", "engine": "--engine", "image_size": "--image-size", "weights": "--weights", "overwrite": "--overwrite",
}
#: Stages after the PCA (fruitlens.classify.cli); forwarded by `emr submit`, not (yet) chart values.
STAGE_FLAGS = {"train": "--train", "report": "--report"}
#: How failures are retried and bounded; no chart values: forwarded as raw arguments (k8s: extraArgs).
ERROR_FLAGS = {"retry_timeout": "--retry-timeout", "max_error_rate": "--max-error-rate"}
#: How photos are decoded; no chart values: forwarded as raw arguments (k8s: extraArgs).
DECODE_FLAGS = {"max_image_mpx": "--max-image-mpx"}


def pipeline_args(ns: argparse.Namespace) -> list[str]:
    """The pipeline options given on this command line, as arguments for a remote `fruitlens run`."""
    args: list[str] = []
    for key, flag in {**PIPELINE_FLAGS, **STAGE_FLAGS, **ERROR_FLAGS, **DECODE_FLAGS}.items():
        value = getattr(ns, key, None)
        if value is None or value is False:
            continue
        args += [flag] if value is True else [flag, str(value)]
    for key, value in getattr(ns, "spark_conf", None) or []:
        args += ["--conf", f"{key}={value}"]
    return args


def config_from_args(ns: argparse.Namespace):
    cli = {k: v for k, v in vars(ns).items() if k not in ("func", "command", "config_file")}
    if cli.get("spark_conf") is not None:
        cli["spark_conf"] = dict(cli["spark_conf"])
    return load_config(cli, config_file=ns.config_file)


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
        add_pipeline_options(p, pca=name == "run")
        add_lock_options(p)
        p.set_defaults(func=_run)

    p = sub.add_parser("pca", help="(re)fit PCA on OUTPUT/features")
    p.add_argument("output", metavar="OUTPUT")
    g = p.add_argument_group("pca")
    k = g.add_mutually_exclusive_group()
    k.add_argument("--pca-k", type=int)
    k.add_argument("--pca-variance", type=float)
    g.add_argument("--pca-standardize", action="store_true", default=None)
    g.add_argument("--master")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    add_verbosity_options(g)
    g.add_argument("--config", dest="config_file")
    add_lock_options(p)
    p.set_defaults(func=_pca, spark_conf=None)

    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
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
