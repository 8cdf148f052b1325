"""The Helm chart (helm/fruitlens): command-line settings → chart values, and the ``helm`` binary.

- :func:`chart_values` turns command-line settings into chart values (pure, tested without a cluster);
- :class:`Helm` runs ``helm upgrade --install`` / ``uninstall``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fruitlens.config import OPTIONS
from fruitlens.deploy.k8s.errors import K8sError

#: Pipeline config field → chart value under ``pipeline``, from the options table; a forwarded option
#: without one goes through ``pipeline.extraArgs``.
PIPELINE_VALUES = {o.name: o.chart for o in OPTIONS.values() if o.forward and o.chart}
#: What the chart's schema accepts as image.digest.
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# -- values ---------------------------------------------------------------------------------------------

def _set_path(values: dict[str, Any], dotted: str, value: Any) -> None:
    node = values
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def chart_values(
    *,
    input: str | None = None,
    output: str | None = None,
    command: str = "run",
    image: str | None = None,
    pull_policy: str | None = None,
    executors: int | None = None,
    executor_cores: int | None = None,
    executor_memory: str | None = None,
    executor_memory_overhead: str | None = None,
    driver_memory: str | None = None,
    s3_endpoint: str | None = None,
    s3_secret: str | None = None,
    pipeline: Mapping[str, Any] | None = None,
    spark_conf: Mapping[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> dict[str, Any]:
    """The chart values for one job; ``None`` means "keep the chart's default" and is left out.

    Parameters
    ----------
    image
        ``repository[:tag][@sha256:...]``; a digest goes to ``image.digest`` (and the pull policy then
        defaults to IfNotPresent), a registry port (``host:5000/x``) is not mistaken for a tag.
    pipeline
        Pipeline config fields (``pca_k``, ``batch_size``, ...) as in :class:`fruitlens.config.PipelineConfig`.
    """
    values: dict[str, Any] = {"job": {"command": command}}
    if input:
        values["job"]["input"] = input
    if output:
        values["job"]["output"] = output
    if image:
        repository, tag, digest = split_image(image)
        _set_path(values, "image.repository", repository)
        if tag or digest:  # a bare digest clears the chart's default tag, which names another build
            _set_path(values, "image.tag", tag or "")
        if digest:
            _set_path(values, "image.digest", digest)
    for path, value in (("image.pullPolicy", pull_policy), ("executor.instances", executors),
                        ("executor.cores", executor_cores), ("executor.memory", executor_memory),
                        ("executor.memoryOverhead", executor_memory_overhead), ("driver.memory", driver_memory),
                        ("s3.endpoint", s3_endpoint), ("s3.credentials.existingSecret", s3_secret)):
        if value is not None:
            _set_path(values, path, value)
    for key, value in (pipeline or {}).items():
        if value is None or key not in PIPELINE_VALUES:
            continue
        _set_path(values, f"pipeline.{PIPELINE_VALUES[key]}", value)
    if spark_conf:
        _set_path(values, "spark.conf", {str(k): str(v) for k, v in spark_conf.items()})
    if extra_args:
        _set_path(values, "pipeline.extraArgs", list(extra_args))
    return values


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``repo/name[:tag][@sha256:...]`` → (``repo/name``, tag, digest); a registry port (``host:5000/x``)
    is not mistaken for a tag. The chart renders ``repository:tag@digest`` (or ``repository:tag``)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise K8sError(f"--image: {digest!r} is not an image digest (sha256: and 64 hex digits), "
                           f"e.g. registry/fruitlens@sha256:<digest printed by `make push`>")
    head, _, last = image.rpartition("/")
    if ":" in last:
        name, tag = last.rsplit(":", 1)
        return (f"{head}/{name}" if head else name), tag, digest
    return image, None, digest


# -- helm -----------------------------------------------------------------------------------------------

# The chart and the tools are found from the working directory (a checkout's root, where `make` runs),
# never from where this file is installed: an installed package has no checkout around it.

def default_chart() -> Path | None:
    """``$FRUITLENS_CHART``, else helm/fruitlens under the working directory (a checkout's root)."""
    if os.environ.get("FRUITLENS_CHART"):
        return Path(os.environ["FRUITLENS_CHART"])
    here = Path("helm") / "fruitlens"
    return here.resolve() if (here / "Chart.yaml").is_file() else None


def find_helm() -> str:
    """``$HELM``, else build/tools/bin/helm under the working directory (scripts/install-helm.sh), else
    ``helm`` on PATH."""
    return _find_tool("helm", "HELM")


def find_kubectl() -> str:
    """``$KUBECTL``, else build/tools/bin/kubectl under the working directory, else ``kubectl`` on PATH."""
    return _find_tool("kubectl", "KUBECTL")


def _find_tool(name: str, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    local = (Path("build") / "tools" / "bin" / name).resolve()
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise K8sError(f"{name} not found: install it (scripts/install-helm.sh puts it in build/tools/bin) "
                       f"or set {env}")
    return found


@dataclass
class Helm:
    """The ``helm`` command for one namespace (and kube context)."""

    namespace: str = "default"
    kube_context: str | None = None
    kubeconfig: str | None = None
    binary: str = field(default_factory=find_helm)
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run

    def _cmd(self, *args: str) -> list[str]:
        cmd = [self.binary, *args, "--namespace", self.namespace]
        if self.kube_context:
            cmd += ["--kube-context", self.kube_context]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        return cmd

    def _call(self, cmd: list[str], what: str) -> str:
        try:
            done = self.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise K8sError(f"helm not found at {self.binary}: install it or set HELM") from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout or "").strip().splitlines()
            raise K8sError(f"{what} failed: {err[-1] if err else 'exit ' + str(done.returncode)}")
        return done.stdout

    def upgrade_install(self, release: str, chart: str | os.PathLike[str], values: Mapping[str, Any],
                        *, sets: list[str] | None = None, files: list[str] | None = None,
                        create_namespace: bool = True) -> str:
        """``helm upgrade --install RELEASE CHART [-f FILE...] -f <values>``: the values go through a file, so
        numbers keep their types (``--set`` would turn 0.9 into a string, which the chart's schema refuses);
        the user's ``files`` (e.g. k8s/values-production.yaml) come first, so the command's flags win."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="fruitlens-values-") as fh:
            yaml.safe_dump(dict(values), fh, sort_keys=True)
            fh.flush()
            cmd = self._cmd("upgrade", "--install", release, str(chart))
            for path in files or []:
                if not Path(path).is_file():
                    raise K8sError(f"--values {path}: no such file")
                cmd += ["--values", str(path)]
            cmd += ["--values", fh.name]
            if create_namespace:
                cmd.append("--create-namespace")
            for item in sets or []:
                cmd += ["--set", item]
            try:
                return self._call(cmd, f"helm upgrade --install {release}")
            except K8sError as exc:
                if "field is immutable" in str(exc):  # a Job's pod template cannot change in place
                    raise K8sError(f"{exc}; release {release} already has a Job, which cannot be changed: "
                                   f"`fruitlens k8s delete {release}` first (or `k8s submit --replace` once it "
                                   "has finished), or use another --release") from None
                raise

    def uninstall(self, release: str) -> bool:
        """True if a release was removed, False if there was none."""
        try:
            self._call(self._cmd("uninstall", release, "--wait"), f"helm uninstall {release}")
        except K8sError as exc:
            if "release: not found" in str(exc):
                return False
            raise
        return True
