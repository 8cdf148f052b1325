"""The one typed profile of an EMR on EKS deployment: where and how `fruitlens emr` runs the job.

Settings flow one way, as for the pipeline (:mod:`fruitlens.config`): YAML profile < environment
(``FRUITLENS_EMR_*``) < command-line flags → :class:`EmrProfile`, validated once. Nothing downstream reads
the environment again; boto3 alone still reads the standard AWS variables (credentials, ``AWS_REGION``,
``AWS_ENDPOINT_URL``).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fruitlens.config import ConfigError, merge_sources
from fruitlens.deploy.emr.releases import (
    DEFAULT_RELEASE,
    SPARK_LABEL,
    ReleaseError,
    release,
    spark_line,
)
from fruitlens.deploy.emr.validation import api_string_problem
from fruitlens.deploy.s3data.staging import split_uri
from fruitlens.storage import uris

ENV_PREFIX = "FRUITLENS_EMR_"
#: The script the container image must provide: it runs ``fruitlens.cli.main(sys.argv[1:])``.
DEFAULT_ENTRY_POINT = "local:///opt/fruitlens/job.py"
DEFAULT_RELEASE_LABEL = DEFAULT_RELEASE
#: The interpreter of the image's venv (docker/Dockerfile.emr): sent as spark.pyspark.python.
DEFAULT_PYTHON = "/opt/fruitlens/venv/bin/python"
#: The values CloudWatch Logs' PutRetentionPolicy accepts (its API reference; not in botocore's model).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)

# Patterns of the StartJobRun API reference (and of IAM for the ARN); the release label is checked
# against botocore's model of the API (api_string_problem), which is what the service enforces.
ROLE_ARN_RE = re.compile(r"^arn:(aws[a-zA-Z0-9-]*):iam::(\d{12})?:role((/)|(/[\u0021-\u007F]+/))([\w+=,.@-]+)$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
MEMORY_RE = re.compile(r"^\d+[kmgtKMGT]?$")
LOG_GROUP_RE = re.compile(r"^[.\-_/#A-Za-z0-9]{1,512}$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*(:\d+)?(/[a-z0-9._\-]+)+(:[\w.\-]{1,128})?(@sha256:[0-9a-f]{64})?$")
ARCH_RE = re.compile(r"^(amd64|arm64)$")
IDENTITIES = ("irsa", "pod-identity")
#: Kubernetes label syntax (a prefix/name key, a value of at most 63 characters).
LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class EmrProfile:
    """Everything `fruitlens emr` needs besides the job's own options.

    Parameters
    ----------
    region
        AWS region of the virtual cluster; ``None``: boto3's default (``AWS_REGION``, ~/.aws/config).
    virtual_cluster_id, virtual_cluster_name
        The cluster to run on; a name is resolved to the one *RUNNING* virtual cluster of that name.
    execution_role_arn
        IAM role the driver and executors assume (IRSA); its policy: ``fruitlens emr iam-policy``.
    release_label
        EMR release: ``emr-spark-8.0.0-latest`` (Spark 4.0, the default) or an emr-7.x release such as
        ``emr-7.5.0-latest`` or ``emr-7.2.0-20240610`` (Spark 3.5); emr-5.x/6.x are refused
        (:mod:`fruitlens.deploy.emr.releases`). The image must be built on a base of the same Spark line.
    image
        Container image URI (ECR) with fruitlens installed; set as ``spark.kubernetes.container.image``.
        Best pinned by digest (``repo@sha256:...``, printed by ``make push``): a tag is pulled ``Always``.
    image_spark
        The Spark version the image was built on (its ``fruitlens.spark.version`` label, printed by
        ``make push``); ``emr submit`` checks it against the release's line. Unset: read from the image
        where this machine's Docker has it.
    python
        The image's interpreter with fruitlens: ``spark.pyspark.python`` and ``spark.pyspark.driver.python``.
    node_arch
        CPU architecture of the nodes the pods may run on (``kubernetes.io/arch`` node selector): the
        image is built for amd64 only.
    entry_point
        ``local://`` path of the job script inside the image, or an ``s3://`` script.
    executor_instances, executor_cores, executor_memory
        Fixed executor fleet (dynamic allocation off: a model per Python worker is costly to start).
    executor_memory_overhead, memory_overhead_factor
        Off-heap room for the Python workers (ONNX Runtime / TensorFlow live outside the JVM heap):
        an explicit size (``2g``) wins, else the factor (default 0.4: what Spark on Kubernetes already
        gives non-JVM jobs, sent explicitly so it shows in the request and is changed here).
    log_uri, log_group, log_stream_prefix
        Where EMR ships the pods' logs: S3 and/or CloudWatch (``fruitlens emr logs`` reads either).
    log_retention_days
        Retention deploy/emr-on-eks/setup.sh sets on the log group (CloudWatch keeps logs forever otherwise).
    max_attempts
        Retry policy: how many times EMR starts the job in all (1 = no retry). A retry runs the same
        arguments again, so it continues the interrupted OUTPUT; ``--overwrite`` is refused with it.
    input, output
        Default job INPUT/OUTPUT (S3 URIs); also the prefixes the IAM policy grants, so a submit whose
        INPUT/OUTPUT lies outside them is refused.
    output_grant
        The prefix the role may write, when it should be wider than ``output``: a parent
        (``s3://b/runs``) lets several runs (``s3://b/runs/r1``, ``.../r2``) share one grant.
    namespace, oidc_provider
        EKS namespace of the virtual cluster and the cluster's OIDC issuer (no ``https://``): only
        for ``fruitlens emr trust-policy``.
    identity
        How the job's pods get the role: ``irsa`` (IAM roles for service accounts: the OIDC trust) or
        ``pod-identity`` (EKS Pod Identity: ``aws emr-containers create-role-associations``, no OIDC).
    driver_node_selector, executor_node_selector
        Node labels per role (``spark.kubernetes.{driver,executor}.node.selector.*``): losing the driver loses
        the job, executors are replaced, so e.g. ``{karpenter.sh/capacity-type: on-demand}`` for the driver
        and ``{karpenter.sh/capacity-type: spot}`` for executors.
    driver_pod_template, executor_pod_template
        ``s3://`` pod templates (``spark.kubernetes.{driver,executor}.podTemplateFile``) for what Spark has no
        setting for: tolerations, priorityClassName, topologySpreadConstraints
        (deploy/emr-on-eks/pod-templates/); the job role is granted read on them.
    driver_do_not_disrupt
        Annotate the driver pod ``karpenter.sh/do-not-disrupt: "true"``: Karpenter's consolidation then
        leaves its node alone while it runs.
    """

    region: str | None = None
    virtual_cluster_id: str | None = None
    virtual_cluster_name: str | None = None
    execution_role_arn: str | None = None
    release_label: str = DEFAULT_RELEASE_LABEL
    image: str | None = None
    image_spark: str | None = None
    entry_point: str = DEFAULT_ENTRY_POINT
    python: str = DEFAULT_PYTHON
    node_arch: str = "amd64"
    job_name: str = "fruitlens"
    executor_instances: int = 2
    executor_cores: int = 2
    executor_memory: str = "4g"
    executor_memory_overhead: str | None = None
    memory_overhead_factor: float = 0.4
    driver_cores: int = 1
    driver_memory: str = "4g"
    log_uri: str | None = None
    log_group: str | None = None
    log_stream_prefix: str = "fruitlens"
    log_retention_days: int = 30
    max_attempts: int = 1
    input: str | None = None
    output: str | None = None
    output_grant: str | None = None
    namespace: str = "fruitlens"
    oidc_provider: str | None = None
    identity: str = "irsa"
    tags: dict[str, str] = field(default_factory=dict)
    driver_node_selector: dict[str, str] = field(default_factory=dict)
    executor_node_selector: dict[str, str] = field(default_factory=dict)
    driver_pod_template: str | None = None
    executor_pod_template: str | None = None
    driver_do_not_disrupt: bool = True
    spark_conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"EMR profile: {name} {why} (set it in the profile YAML, "
                               f"{ENV_PREFIX}{name.upper()} or --{name.replace('_', '-')})")

        if self.region is not None and not REGION_RE.match(self.region):
            raise bad("region", f"must look like us-east-1, got {self.region!r}")
        if self.virtual_cluster_id is not None and api_string_problem("StartJobRun", "virtualClusterId",
                                                                      self.virtual_cluster_id):
            raise bad("virtual_cluster_id", f"must be 1-64 lower-case letters and digits, got "
                      f"{self.virtual_cluster_id!r} (a name goes in virtual_cluster_name)")
        if self.execution_role_arn is not None and not ROLE_ARN_RE.match(self.execution_role_arn):
            raise bad("execution_role_arn", f"must be an IAM role ARN such as "
                      f"arn:aws:iam::123456789012:role/fruitlens-job, got {self.execution_role_arn!r}")
        problem = api_string_problem("StartJobRun", "releaseLabel", self.release_label)
        if problem:
            raise bad("release_label", f"{problem}; e.g. emr-spark-8.0.0-latest, emr-7.5.0-latest, "
                      "emr-7.2.0-20240610")
        try:
            release(self.release_label)
        except ReleaseError as exc:
            raise bad("release_label", f"is refused: {exc}") from None
        if self.image_spark is not None:
            try:
                spark_line(self.image_spark)
            except ReleaseError as exc:
                raise bad("image_spark", f"must be the image's {SPARK_LABEL} label: {exc}") from None
        if self.image is not None and not IMAGE_RE.match(self.image):
            raise bad("image", f"must be a container image URI such as "
                      f"123456789012.dkr.ecr.us-east-1.amazonaws.com/fruitlens:0.1.0, got {self.image!r}")
        if not self.python.startswith("/"):
            raise bad("python", f"must be an absolute path inside the image, got {self.python!r}")
        if self.identity not in IDENTITIES:
            raise bad("identity", f"must be one of {', '.join(IDENTITIES)}, got {self.identity!r}")
        if not ARCH_RE.match(self.node_arch):
            raise bad("node_arch", f"must be amd64 or arm64 (the image must be built for it), got {self.node_arch!r}")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise bad("log_retention_days", f"must be one of CloudWatch's values {LOG_RETENTION_DAYS}, "
                      f"got {self.log_retention_days}")
        if not self.entry_point.startswith(("local:///", "s3://")):
            raise bad("entry_point", f"must be local:///path/in/image.py or s3://bucket/key.py, "
                      f"got {self.entry_point!r}")
        for name in ("executor_instances", "executor_cores", "driver_cores", "max_attempts"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be a positive integer, got {getattr(self, name)}")
        if self.max_attempts > 10:
            raise bad("max_attempts", f"must be at most 10, got {self.max_attempts}")
        for name in ("executor_memory", "driver_memory", "executor_memory_overhead"):
            value = getattr(self, name)
            if value is not None and not MEMORY_RE.match(value):
                raise bad(name, f"must be a JVM size such as 4g or 512m, got {value!r}")
        if not 0.0 < self.memory_overhead_factor <= 4.0:
            raise bad("memory_overhead_factor", f"must be in (0, 4], got {self.memory_overhead_factor}")
        if self.log_uri is not None and not self.log_uri.startswith("s3://"):
            raise bad("log_uri", f"must be an s3:// URI, got {self.log_uri!r}")
        if self.log_group is not None and not LOG_GROUP_RE.match(self.log_group):
            raise bad("log_group", f"must be a CloudWatch log group name, got {self.log_group!r}")
        for name in ("input", "output", "output_grant"):
            value = getattr(self, name)
            if value is not None and not uris.is_s3(value):
                raise bad(name, f"must be an s3:// URI on EMR, got {value!r}")
        for name in ("driver_node_selector", "executor_node_selector"):
            for key, value in getattr(self, name).items():
                if not LABEL_KEY_RE.match(str(key)) or not LABEL_VALUE_RE.match(str(value)):
                    raise bad(name, f"must map node label keys to label values, got {key!r}: {value!r}")
        for name in ("driver_pod_template", "executor_pod_template"):
            value = getattr(self, name)
            if value is not None and not (value.startswith("s3://") and value.endswith((".yaml", ".yml"))):
                raise bad(name, f"must be the s3:// URI of a pod template YAML (EMR on EKS reads it from S3), "
                          f"got {value!r}")
        if self.output_grant and self.output and not within_prefix(self.output, self.output_grant):
            raise bad("output_grant", f"must contain output {self.output}, got {self.output_grant!r}")

    @property
    def granted_output(self) -> str | None:
        """The prefix the job role may write: ``output_grant``, else ``output``."""
        return self.output_grant or self.output

    def require(self, *names: str) -> None:
        """Fail with one message naming every missing setting and where to give it."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            how = "; ".join(f"--{n.replace('_', '-')} or {ENV_PREFIX}{n.upper()} or '{n}:' in the profile"
                            for n in missing)
            raise ConfigError(f"EMR profile: missing {', '.join(missing)} ({how})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def s3_parts(uri: str) -> tuple[str, str]:
    bucket, prefix = split_uri(uri)
    return bucket, prefix.strip("/")


def within_prefix(uri: str, granted: str) -> bool:
    """``s3://b/runs/r1`` is within ``s3://b/runs``; ``s3://b/runs2`` is not (s3 and s3a alike)."""
    bucket, prefix = s3_parts(uri)
    gbucket, gprefix = s3_parts(granted)
    return bucket == gbucket and (not gprefix or prefix == gprefix or prefix.startswith(gprefix + "/"))


FIELDS = tuple(f.name for f in dataclasses.fields(EmrProfile))


def load_profile(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    profile_file: str | os.PathLike[str] | None = None,
) -> EmrProfile:
    """Merge YAML < env (``FRUITLENS_EMR_*``) < CLI (``None`` = not given) and validate once.

    The YAML file is ``profile_file``, else ``$FRUITLENS_EMR_PROFILE``; its keys are the field names
    (``-`` or ``_``). ``tags`` and ``spark_conf`` merge key by key across the sources.
    """
    env = os.environ if env is None else env
    merged = merge_sources(EmrProfile, cli=cli, env=env, env_prefix=ENV_PREFIX,
                           file=profile_file or env.get(f"{ENV_PREFIX}PROFILE"),
                           file_label="EMR profile", file_hint=f"fix --profile or {ENV_PREFIX}PROFILE",
                           merge_keys=("tags", "spark_conf", "driver_node_selector", "executor_node_selector"))
    # A cluster named on a higher-precedence source replaces an id from a lower one (an id wins otherwise).
    if (cli or {}).get("virtual_cluster_name") is not None and (cli or {}).get("virtual_cluster_id") is None:
        merged.pop("virtual_cluster_id", None)
    return EmrProfile(**merged)
