"""The command line's side of the options table (:data:`fruitlens.config.OPTIONS`): flags, forwarding.

Public for every command module, the deployment ones included (``emr submit`` and ``k8s submit`` take
the pipeline's options and forward them to the cluster's ``fruitlens run``). Nothing here names a single
option: adding one is a field in fruitlens.config (and, for the chart, a value in helm/fruitlens).
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable

from fruitlens.config import OPTIONS, Option, load_config

#: Which options each job command takes, by :attr:`Option.scope`.
SCOPES = {"run": ("job", "pca", "stage", "lock"), "extract": ("job", "lock")}
#: The ``pca`` command: its own options, the lock's, and how it shows itself.
PCA_COMMAND = ("pca_k", "pca_variance", "pca_standardize", "pca_exact", "pca_drift_tolerance", "master", "progress", "verbosity")


def conf_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` → (key, value): the type of repeatable ``--conf``-like flags."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value


def _add(group, opt: Option, exclusive: dict) -> None:
    """One option's flag(s); every default is None ("not given"), so the config's own defaults apply."""
    if opt.name == "verbosity":
        add_verbosity_options(group)
        return
    if opt.flag is None:
        return
    target = group
    if opt.exclusive:
        if opt.exclusive not in exclusive:
            exclusive[opt.exclusive] = group.add_mutually_exclusive_group()
        target = exclusive[opt.exclusive]
    flags = [opt.flag, *opt.aliases]
    kw: dict = {"dest": opt.name, "help": opt.help_text, "default": None}
    if opt.type is bool:
        kw["action"] = "store_false" if opt.default else "store_true"
    elif opt.type is dict:
        kw.update(action="append", type=conf_pair, metavar=opt.metavar)
    else:
        kw.update(type=opt.type, metavar=opt.metavar)
        if opt.choices:
            kw["choices"] = opt.choices
    target.add_argument(*flags, **kw)


def add_options(group, names: Iterable[str]) -> None:
    """The flags of these options (field names), in the table's order."""
    exclusive: dict = {}
    wanted = set(names)
    for opt in OPTIONS.values():
        if opt.name in wanted:
            _add(group, opt, exclusive)


def add_pipeline_options(parser: argparse.ArgumentParser, *, pca: bool = True) -> None:
    """Options of the job itself; also used by ``emr submit`` / ``k8s submit``, which forward them."""
    g = parser.add_argument_group("pipeline")
    scopes = ("job", "pca", "stage") if pca else ("job",)
    add_options(g, [o.name for o in OPTIONS.values() if o.scope in scopes])
    add_config_option(g)


def add_config_option(group) -> None:
    group.add_argument("--config", dest="config_file", help="YAML file of settings (lowest precedence)")


def add_verbosity_options(group) -> None:
    v = group.add_mutually_exclusive_group()
    v.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose", default=None,
                   help="also show Spark's, the JVM's and TensorFlow's output")
    v.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                   help="only errors and the final summary")


def add_lock_options(parser: argparse.ArgumentParser) -> None:
    """OUTPUT's one-run-at-a-time lock (docs/resume.md): decided where the run starts, not forwarded."""
    add_options(parser.add_argument_group("lock"), [o.name for o in OPTIONS.values() if o.scope == "lock"])


def add_pca_command_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pca")
    add_options(g, PCA_COMMAND)
    add_config_option(g)
    add_lock_options(parser)


#: The options ``emr submit`` / ``k8s submit`` forward to the job, field → flag.
FORWARDED = {o.name: o.flag for o in OPTIONS.values() if o.forward}


def pipeline_args(ns: argparse.Namespace, names: Iterable[str] | None = None) -> list[str]:
    """The forwarded options given on this command line (all, or only ``names``), as arguments for a
    remote ``fruitlens run``; ``--conf`` pairs last."""
    wanted = FORWARDED if names is None else {n: FORWARDED[n] for n in names if n in FORWARDED}
    args: list[str] = []
    for key, flag in wanted.items():
        value = getattr(ns, key, None)
        if value is None or value is False:
            continue
        if OPTIONS[key].type is dict:
            continue
        args += [flag] if value is True else [flag, str(value)]
    if "spark_conf" in wanted:
        for key, value in getattr(ns, "spark_conf", None) or []:
            args += [FORWARDED["spark_conf"], f"{key}={value}"]
    return args


def config_from_args(ns: argparse.Namespace):
    """The one typed config from a parsed command line (+ environment and YAML)."""
    cli = {k: v for k, v in vars(ns).items() if k in OPTIONS or k in ("input", "output")}
    if cli.get("spark_conf") is not None:
        cli["spark_conf"] = dict(cli["spark_conf"])
    return load_config(cli, config_file=getattr(ns, "config_file", None))
