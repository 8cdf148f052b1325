"""The one typed configuration object of a pipeline job.

Config flows one way: YAML file < environment (``FRUITLENS_*``) < command line → :class:`PipelineConfig`
→ the stages. Nothing downstream reads the environment or argv again.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruitlens.engines import IMAGE_SIZES  # the model's input sizes; 224 is the faithful default
from fruitlens.engines import NAMES as ENGINES  # the registry's engines and "auto"
from fruitlens.errors import FruitlensError

ENV_PREFIX = "FRUITLENS_"
VERBOSITY = ("quiet", "normal", "verbose")
#: Where ``make data`` puts the public dataset: the job's input when none is given.
DEFAULT_INPUT = "data/fruits-360"
#: Pixels a photo may have as decoded (a JPEG after its reduced decode), in millions. PIL holds 8-bit
#: RGB at 4 bytes a pixel: the largest photo allowed costs ~200 MB, ~400 MB with the one converted
#: copy, within a Python worker's share of an executor's default 1.5 GB memory overhead. 50 Mpx is the
#: full resolution of the largest phone sensors' usual modes (48-50 Mpx); their 108/200 Mpx modes
#: write JPEGs, which are decoded reduced (fruitlens.images). PIL's own bomb limit (89 Mpx warns,
#: 179 Mpx refuses) stays in force above it.
MAX_IMAGE_MPX = 50.0


class ConfigError(FruitlensError, ValueError):
    """A setting is missing, malformed or contradicts another one."""

    exit_code = 2


_FLAG = object()  # option(flag=...) not given: the flag is --<name-with-dashes>


@dataclass(frozen=True)
class Option:
    """One pipeline option, declared once beside its :class:`PipelineConfig` field (:func:`option`).

    Everything else derives from it: the YAML key and the field are ``name``, the environment variable
    ``FRUITLENS_<NAME>``, the command line's flag (fruitlens.cli.options), what ``emr submit`` /
    ``k8s submit`` forward to the cluster's ``fruitlens run`` and the Helm chart's value under
    ``pipeline`` (checked against helm/fruitlens by tests/deploy/test_helm_chart.py).
    """

    name: str
    default: Any
    type: Any  # the field's value type: int, float, str, bool, dict
    help: str
    flag: str | None  # None: YAML and environment only
    scope: str  # "job" (run, extract), "pca" (run, pca), "stage" (run: after the PCA), "lock" (every job command)
    forward: bool  # `emr submit` / `k8s submit` pass it on to the job
    chart: str | None  # the chart's value `pipeline.<chart>`; None: forwarded through `pipeline.extraArgs`
    choices: tuple | None
    metavar: str | None
    exclusive: str | None  # options sharing this name are mutually exclusive on the command line
    aliases: tuple[str, ...]  # older flags, still accepted
    env_aliases: tuple[str, ...]  # older FRUITLENS_* names (without the prefix), still accepted

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def help_text(self) -> str:
        return self.help.format(default=self.default)


def option(default: Any, help: str, *, flag: Any = _FLAG, scope: str = "job", forward: bool = True,
           chart: str | None = None, choices: tuple | None = None, metavar: str | None = None,
           exclusive: str | None = None, aliases: tuple[str, ...] = (),
           env_aliases: tuple[str, ...] = ()) -> Any:
    """A :class:`PipelineConfig` field that is also a pipeline option (the rest of :class:`Option`)."""
    meta = {"option": dict(help=help, flag=flag, scope=scope, forward=forward, chart=chart, choices=choices,
                           metavar=metavar, exclusive=exclusive, aliases=aliases, env_aliases=env_aliases)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline job needs to know.

    Parameters
    ----------
    input, output
        Hadoop URIs or local paths (``/data/x``, ``file:///x``, ``s3://b/p``, ``s3a://b/p``).
    pca_k, pca_variance
        Keep exactly ``pca_k`` components, or the fewest reaching ``pca_variance`` of the variance.
    batch_size
        Images per inference call, independent of ``commit_size``: the images per committed batch (one
        Parquet file each; ``--arrow-batch-size`` / ``FRUITLENS_ARROW_BATCH_SIZE``, its old names, still work).
    engine
        ``onnx`` (ONNX Runtime on an export of the Keras model), ``keras`` (TensorFlow), or ``auto``:
        ONNX when ONNX Runtime is installed. ``onnx-int8`` (opt-in, faster, slightly less faithful): the ONNX
        export quantized to int8, calibrated on a class-balanced set of INPUT's photos (docs/performance.md).
    image_size
        Side of the square the photos are resized to and the model is built at: 224 (default, the
        weights' own size) or 160, 128, 96 (faster; the fidelity cost is measured in docs/performance.md).
    max_image_mpx
        Refuse (an error row, from the file's header, before decoding) a photo with more than this many
        million pixels as decoded: one photo cannot take a worker's memory (:data:`MAX_IMAGE_MPX`).
    verbosity
        ``quiet`` (errors and the summary), ``normal`` (fruitlens' lines and progress) or ``verbose``
        (also Spark's, the JVM's and TensorFlow's output).
    weights
        ``imagenet`` (Keras' cache, downloaded by Keras on the driver only if missing) or a ``.h5``
        file, local or any Hadoop URI.
    pca_exact, pca_drift_tolerance
        PCA is incremental (:mod:`fruitlens.pca_state`): OUTPUT keeps the moments of its features, a run
        reads only new feature files and projects only those while the basis in force still fits within
        ``pca_drift_tolerance``; ``pca_exact`` refits from every feature and projects every row again.
    driver_pca_max_rows
        Up to this many feature rows to read (~5 KB each), PCA's per-file work (the moments of new files,
        the projection) streams the Parquet files on the driver: no Spark job, so no job latency. Above
        it, it runs as Spark tasks over the files on the executors.
    price_table
        The rates the manifest's estimated cost uses (:mod:`fruitlens.cost`); a local file on the driver.
    train, report
        After the PCA, fit the classifier (``fruitlens train``) / write the HTML report.
    overwrite
        Start OUTPUT from scratch; without it a run continues what OUTPUT holds (same INPUT and settings).
    force_unlock, lock_timeout
        Take over OUTPUT's lock even if its run looks alive; a lock whose heartbeat is older than
        ``lock_timeout`` seconds is taken over anyway.
    lock_wait
        Seconds to wait for a live lock to be released or go stale before refusing (0: refuse at once).
        A retried cluster driver sets it (``FRUITLENS_LOCK_WAIT``) so that it continues its
        predecessor's run instead of failing on the lock that run left.
    retry_timeout
        Seconds a worker keeps retrying (with exponential backoff) a read of an image, or a write of
        a committed batch, that fails for a reason that may pass: network, S3 throttling (503
        SlowDown), permission, I/O. An image still unreadable then is a *read* error row, which is
        not a verdict: the next run tries it again. 0: no retries.
    event_log
        Where Spark writes the event log of each session (``spark.eventLog.dir``): ``OUTPUT/_spark-events``
        when empty, so a finished run's Spark UI outlives its cluster (``fruitlens history OUTPUT``);
        ``off``: none. ``--conf spark.eventLog.*`` wins over it.
    metrics_port
        Driver port of the Prometheus endpoint (:mod:`fruitlens.metrics`); 0: none.
    max_error_rate
        Fail the run (no manifest; what was committed stays) when more than this fraction of INPUT's
        images end as error rows of either kind (decode or read): an outage cannot pass as a finished
        run. 0 turns the check off.
    """

    output: str
    input: str = DEFAULT_INPUT
    pca_k: int | None = option(None, "keep exactly K principal components", scope="pca", chart="pcaK", metavar=None,
                               exclusive="pca")
    pca_variance: float | None = option(None, "keep the fewest components reaching this fraction of the variance "
                                        "(default 0.95)", scope="pca", chart="pcaVariance", metavar=None,
                                        exclusive="pca")
    pca_standardize: bool = option(False, "scale features to unit variance before PCA (they are always centred)",
                                   scope="pca", chart="pcaStandardize")
    pca_exact: bool = option(False, "refit PCA from all features and project every row again (default: add the "
                             "new files' moments to OUTPUT's record and keep the basis while it still fits)",
                             scope="pca", chart="pcaExact")
    pca_drift_tolerance: float = option(1e-3, "keep the basis in force while it explains within this fraction of "
                                        "the variance the exact refit explains, and its centre is off by at most "
                                        "this fraction of it (default {default:g}; 0: refit whenever new rows "
                                        "change the fit)", scope="pca", chart="pcaDriftTolerance",
                                        metavar="FRACTION")
    batch_size: int = option(64, "images per inference call (default {default})", chart="batchSize", metavar=None)
    commit_size: int = option(256, "images per committed batch: one Parquet file, one progress step and what a "
                              "crash can lose (default {default})", chart="commitSize", metavar=None,
                              aliases=("--arrow-batch-size",), env_aliases=("ARROW_BATCH_SIZE",))
    partitions: int | None = option(None, "repartition the images into N tasks (default: Spark's split)",
                                    chart="partitions", metavar=None)
    limit: int | None = option(None, "process only the first N images (sorted by path)", chart="limit",
                               metavar=None)
    master: str | None = option(None, "Spark master (default local[*], or what spark-submit set)", forward=False,
                                metavar=None)
    overwrite: bool = option(False, "start OUTPUT from scratch (default: continue what it holds for the same INPUT)",
                             chart="overwrite")
    force_unlock: bool = option(False, "take over OUTPUT's lock even if the run holding it looks alive",
                                scope="lock", forward=False)
    lock_timeout: float = option(60.0, "seconds without heartbeat after which another run's lock is taken over "
                                 "(default {default:g})", scope="lock", forward=False, metavar=None)
    lock_wait: float = option(0.0, "seconds to wait for another run's lock to be released or go stale before "
                              "refusing (default {default:g}; cluster retries set FRUITLENS_LOCK_WAIT)",
                              scope="lock", forward=False, metavar=None)
    retry_timeout: float = option(45.0, "how long a worker retries a read or write that may succeed later "
                                  "(network, S3 throttling, permission, I/O) before recording a read error "
                                  "(default {default:g}; 0: no retries)", chart="retryTimeout", metavar="SECONDS")
    max_error_rate: float = option(0.05, "fail the run when more than this fraction of the images end as errors, "
                                   "decode or read (default {default:g}; 0: never)", chart="maxErrorRate",
                                   metavar="FRACTION")
    engine: str = option("auto", "inference engine (default auto = onnx; onnx-int8: opt-in, quantized, "
                         "calibrated on INPUT's photos)", chart="engine", choices=ENGINES, metavar=None)
    image_size: int = option(224, "resize photos to this square and build the model at it (default {default}; "
                             "smaller is faster, less faithful)", chart="imageSize", choices=IMAGE_SIZES,
                             metavar=None)
    max_image_mpx: float = option(MAX_IMAGE_MPX, "refuse (an error row) a photo of more megapixels than this as "
                                  "decoded; JPEGs decode reduced, so only other formats reach it "
                                  "(default {default:g})", chart="maxImageMpx", metavar="MPX")
    weights: str = option("imagenet", "'imagenet' (Keras cache) or a .h5 file path/URI", chart="weights",
                          metavar=None)
    progress: bool = option(True, "no progress lines", flag="--no-progress", forward=False)
    verbosity: str = option("normal", "quiet (-q: only errors and the final summary), normal, or verbose (-v: "
                            "also Spark's, the JVM's and TensorFlow's output)", flag=None, forward=False,
                            choices=VERBOSITY)
    spark_conf: dict[str, str] = option({}, "extra Spark setting (repeatable)", flag="--conf", metavar="KEY=VALUE")
    driver_max_images: int = option(1000, "a run on a local master with at most this many images to featurize "
                                    "does them in the driver process, without starting Spark's Python workers "
                                    "(their start-up is most of a small run's setup; default {default}, 0: never)",
                                    flag=None, forward=False)
    driver_pca_max_rows: int = option(250_000, "up to this many feature rows PCA streams the features on the "
                                      "driver, above it as Spark jobs (default {default})", flag=None,
                                      forward=False)
    price_table: str | None = option(None, "a JSON or YAML file of per-vCPU-hour and per-GB-hour rates for the run's "
                                     "estimated cost (default: EMR on EKS on Fargate, us-east-1, dated: "
                                     "fruitlens.cost; a local path or a URI)", chart="priceTable", metavar="FILE")
    # Not forwarded by `k8s submit` / `emr submit`: the chart has its own keys for them (eventLog.*, metrics.*),
    # and a submit's `--conf spark.eventLog.dir=...` reaches the job.
    event_log: str = option("", "folder or URI where Spark writes the run's event log, which `fruitlens history` "
                            "serves as the Spark UI (default OUTPUT/_spark-events; off: none)", metavar="URI",
                            forward=False)
    metrics_port: int = option(0, "serve the run's figures (images done, images/s, errors) and Spark's driver and "
                               "executor metrics as Prometheus text at http://DRIVER:PORT/metrics (default 0: off)",
                               metavar="PORT", forward=False)
    train: bool = option(False, "then fit the classifier on the PCA (as `fruitlens train`)", scope="stage",
                         chart="train")
    report: bool = option(False, "then write OUTPUT/report/index.html (as `fruitlens report`)", scope="stage",
                          chart="report")

    def __post_init__(self) -> None:
        if self.pca_k is not None and self.pca_variance is not None:
            raise ConfigError("give either --pca-k or --pca-variance, not both")
        if self.pca_k is None and self.pca_variance is None:
            object.__setattr__(self, "pca_variance", 0.95)
        if self.pca_k is not None and not 1 <= self.pca_k <= 1280:
            raise ConfigError(f"--pca-k must be between 1 and 1280 (the feature size), got {self.pca_k}")
        if self.pca_variance is not None and not 0.0 < self.pca_variance <= 1.0:
            raise ConfigError(f"--pca-variance must be in (0, 1], got {self.pca_variance}")
        if self.driver_max_images < 0:
            raise ConfigError(f"driver_max_images must be 0 or more, got {self.driver_max_images}")
        if not 0.0 <= self.pca_drift_tolerance < 1.0:
            raise ConfigError(f"--pca-drift-tolerance must be in [0, 1), got {self.pca_drift_tolerance}")
        if self.driver_pca_max_rows < 0:
            raise ConfigError(f"driver_pca_max_rows must be 0 or more, got {self.driver_pca_max_rows}")
        for name in ("batch_size", "commit_size", "partitions", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.lock_wait < 0:
            raise ConfigError(f"--lock-wait must be 0 or more seconds, got {self.lock_wait}")
        if self.lock_timeout <= 0:
            raise ConfigError(f"--lock-timeout must be a positive number of seconds, got {self.lock_timeout}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be a TCP port (1..65535) or 0 (off), got {self.metrics_port}")
        if self.event_log.strip() != self.event_log:
            raise ConfigError(f"--event-log {self.event_log!r} has surrounding spaces: give a folder, a URI or 'off'")
        if self.retry_timeout < 0:
            raise ConfigError(f"--retry-timeout must be 0 or more seconds, got {self.retry_timeout}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"--max-error-rate must be between 0 (off) and 1, got {self.max_error_rate}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.image_size not in IMAGE_SIZES:
            raise ConfigError(f"--image-size must be one of {', '.join(map(str, IMAGE_SIZES))} (pixels), "
                              f"got {self.image_size}")
        if not self.max_image_mpx > 0:
            raise ConfigError(f"--max-image-mpx must be a positive number of megapixels, got {self.max_image_mpx}")
        if self.verbosity not in VERBOSITY:
            raise ConfigError(f"verbosity must be one of {', '.join(VERBOSITY)}, got {self.verbosity!r}")
        if not self.output:
            raise ConfigError("OUTPUT is required: a local folder or a URI such as s3://bucket/prefix")
        if not self.input:
            raise ConfigError("INPUT is empty: give a local folder or a URI such as s3://bucket/prefix")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, raw: Any, hint: Any) -> Any:
    """Turn a YAML or environment value into the field's type, with an error naming the setting."""
    if raw is None:
        return None
    # Unwrap `X | None`; keep generic types such as dict[str, str] whole.
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else []
    target = args[0] if args else hint
    if typing.get_origin(target) is dict:
        if isinstance(raw, Mapping):
            return {str(k): str(v) for k, v in raw.items()}
        if isinstance(raw, str):  # env: "k1=v1,k2=v2"
            pairs = [p for p in raw.split(",") if p.strip()]
            try:
                return dict(p.split("=", 1) for p in pairs)
            except ValueError:
                raise ConfigError(f"{name}: expected key=value pairs, got {raw!r}") from None
        raise ConfigError(f"{name}: expected a mapping, got {raw!r}")
    try:
        if target is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return target(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {target.__name__}, got {raw!r}") from None


def _yaml_problem(exc) -> str:
    """``line N, column M: what`` from a YAML parser error (its own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)])) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML ({' '.join(what.split())})"


def merge_sources(
    cls: type,
    *,
    cli: Mapping[str, Any] | None,
    env: Mapping[str, str],
    env_prefix: str,
    file: str | os.PathLike[str] | None,
    file_label: str,
    file_hint: str,
    merge_keys: tuple[str, ...] = ("spark_conf",),
    env_aliases: Mapping[str, tuple[str, ...]] | None = None,
    key_aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The settings of dataclass ``cls`` from YAML < ``{env_prefix}<FIELD>`` env < CLI, typed.

    ``None`` on the CLI means "not given". Mapping settings named in ``merge_keys`` merge key by key
    across the sources; every other setting is replaced by the higher-precedence source. ``env_aliases``
    (field → older variable names) and ``key_aliases`` (older YAML key → field) keep old spellings working.
    """
    import yaml

    env_aliases = env_aliases or {}
    key_aliases = key_aliases or {}

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    merged: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        merged[key] = {**merged.get(key, {}), **value} if key in merge_keys else value

    if file:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{file_label} {path} does not exist; {file_hint}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file_label} {path}: {_yaml_problem(exc)}; {file_hint}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file_label} {path}: expected a mapping of settings at the top level")
        unknown = sorted(set(str(k).replace("-", "_") for k in data) - set(names) - set(key_aliases))
        if unknown:
            raise ConfigError(f"{file_label} {path}: unknown settings {unknown}; known: {names}")
        for key, value in data.items():
            key = str(key).replace("-", "_")
            key = key_aliases.get(key, key)
            if value is not None:
                put(key, _coerce(f"{path}:{key}", value, hints[key]))

    for key in names:
        for env_name in (key.upper(), *env_aliases.get(key, ())):
            raw = env.get(env_prefix + env_name)
            if raw is not None and raw != "":
                put(key, _coerce(env_prefix + env_name, raw, hints[key]))
                break

    for key, value in (cli or {}).items():
        if value is not None:
            put(key, value)
    return merged


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> PipelineConfig:
    """Merge the sources (YAML < env < CLI; ``None`` on the CLI means "not given") and validate once."""
    env = os.environ if env is None else env
    merged = merge_sources(PipelineConfig, cli=cli, env=env, env_prefix=ENV_PREFIX,
                           file=config_file or env.get(f"{ENV_PREFIX}CONFIG"),
                           file_label="config file", file_hint=f"fix --config or {ENV_PREFIX}CONFIG",
                           env_aliases={o.name: o.env_aliases for o in OPTIONS.values() if o.env_aliases},
                           key_aliases={a.lower(): o.name for o in OPTIONS.values() for a in o.env_aliases})
    if "output" not in merged:
        raise ConfigError("OUTPUT is required: a local folder or a URI such as s3://bucket/prefix")
    # A k given on a higher-precedence source replaces a variance target from a lower one, and back.
    given = {k for k in ("pca_k", "pca_variance") if (cli or {}).get(k) is not None}
    if len(given) == 1:
        merged.pop(({"pca_k", "pca_variance"} - given).pop(), None)
    return PipelineConfig(**merged)


def _options() -> dict[str, Option]:
    hints = typing.get_type_hints(PipelineConfig)
    table = {}
    for f in dataclasses.fields(PipelineConfig):
        if "option" not in f.metadata:
            continue
        spec = dict(f.metadata["option"])
        flag = spec.pop("flag")
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        kind = typing.get_origin(hint) or hint
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        table[f.name] = Option(name=f.name, default=default, type=kind,
                               flag="--" + f.name.replace("_", "-") if flag is _FLAG else flag, **spec)
    return table


#: Every pipeline option by field name, in the field order of :class:`PipelineConfig`.
OPTIONS: dict[str, Option] = _options()
