"""`fruitlens doctor`: what a run or a deployment needs, one line per check, with the fix.

Checks are plain functions returning a :class:`Check`; none of them starts Spark or loads a model, so the
command answers in a second or two. ``fail`` means a local run cannot work; ``warn`` means a feature or a
deployment path will not (Docker, helm, AWS, the EMR profile) or will be slower (no ONNX export yet).
The exit code is 1 when any check fails, else 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
#: Free space below which a run is warned: Spark's shuffle/spill and the ONNX export live in temp dirs.
MIN_FREE_GB = 5.0
MIN_JAVA = 17


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Check("python", FAIL, f"{version} at {sys.executable}", "use Python 3.10+ (make setup makes .venv)")
    return Check("python", OK, f"{version} at {sys.executable}")


def check_java() -> Check:
    java = shutil.which("java", path=_java_path())
    if not java:
        return Check("java", FAIL, "no java on PATH or JAVA_HOME: Spark cannot start",
                     "make setup (installs openjdk-17-jre-headless), or set JAVA_HOME")
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    text = (done.stderr or done.stdout).strip()
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_x" is Java 8
        major = int(match.group(2))
    first = text.splitlines()[0] if text else "no output"
    if major < MIN_JAVA:
        return Check("java", FAIL, f"{first} ({java})", f"Spark 4 needs Java {MIN_JAVA}+: make setup")
    return Check("java", OK, f"{first} ({java})")


def _java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{home}/bin{os.pathsep}{path}" if home else path


def check_packages() -> Check:
    needed = ("pyspark", "pyarrow", "numpy", "PIL", "onnxruntime", "yaml")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return Check("python packages", FAIL, f"missing in {sys.prefix}: {', '.join(missing)}",
                     "make setup (installs requirements.lock into .venv)")
    from fruitlens.state.run import library_versions

    versions = library_versions()
    shown = ", ".join(f"{k} {versions[k]}" for k in ("pyspark", "onnxruntime", "numpy") if k in versions)
    return Check("python packages", OK, f"{shown} in {sys.prefix}")


def check_tensorflow() -> Check:
    if importlib.util.find_spec("tensorflow") is None:
        return Check("tensorflow", WARN, "not installed: the ONNX export and --engine keras need it "
                     "(executors running a baked ONNX export do not)", "pip install -r requirements.lock")
    return Check("tensorflow", OK, "installed (the model's source; used to export ONNX once)")


def check_weights() -> Check:
    from fruitlens.engines.model import WEIGHTS_FILE, keras_home

    path = keras_home() / "models" / WEIGHTS_FILE
    if not path.is_file():
        return Check("weights", FAIL, f"{path} missing: offline, --weights imagenet cannot work",
                     "make setup (copies it from ../shared/models), or pass --weights PATH.h5")
    return Check("weights", OK, f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


def check_onnx_export() -> Check:
    from fruitlens.engines.model import WEIGHTS_FILE, cache_dir, keras_home, onnx_file_name, sha256_file

    weights = keras_home() / "models" / WEIGHTS_FILE
    if not weights.is_file():
        return Check("onnx export", WARN, "no weights, so no export to look for", "fix the weights check first")
    export = cache_dir() / onnx_file_name(sha256_file(weights))
    if not export.is_file():
        return Check("onnx export", WARN, f"{export} not made yet: the first run exports it (~20 s, needs TF)",
                     "nothing to do; or run once to warm the cache")
    return Check("onnx export", OK, f"{export}")


def check_jvm_archive() -> Check:
    from fruitlens.jvm_archive import archive_path, usable

    path = archive_path()
    if path is None:
        return Check("jvm archive", WARN, "no java, so no class archive", "fix the java check first")
    if not usable(path):
        return Check("jvm archive", WARN, f"{path} not made (or damaged): a local run's JVM starts about 2x slower",
                     "fruitlens doctor --jvm-archive (once, ~30 s; make setup does it)")
    return Check("jvm archive", OK, f"{path} ({path.stat().st_size / 1e6:.0f} MB)")


def check_disk(path: str | None = None) -> Check:
    import tempfile

    where = Path(path or tempfile.gettempdir())
    while not where.exists() and where != where.parent:
        where = where.parent
    free_gb = shutil.disk_usage(where).free / 1e9
    if free_gb < MIN_FREE_GB:
        return Check("free disk", WARN, f"{free_gb:.1f} GB free at {where}",
                     f"free space or point TMPDIR / SPARK_LOCAL_DIRS elsewhere (≥ {MIN_FREE_GB:.0f} GB advised)")
    return Check("free disk", OK, f"{free_gb:.1f} GB free at {where}")


def check_docker() -> Check:
    if not shutil.which("docker"):
        return Check("docker", WARN, "no docker client: make build / docker-run unavailable",
                     "apt-get install docker.io (or Docker Desktop)")
    done = subprocess.run(["docker", "info", "-f", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        return Check("docker", WARN, "client present, no engine answers",
                     "start the engine (dockerd, or Docker Desktop)")
    return Check("docker", OK, f"engine {done.stdout.strip()}")


def check_helm() -> Check:
    helm = shutil.which("helm") or _repo_tool("helm")
    kubectl = shutil.which("kubectl") or _repo_tool("kubectl")
    missing = [n for n, p in (("helm", helm), ("kubectl", kubectl)) if not p]
    if missing:
        return Check("helm/kubectl", WARN, f"not found: {', '.join(missing)} (needed by fruitlens k8s)",
                     "bash scripts/install-helm.sh build/tools/bin, then add it to PATH")
    return Check("helm/kubectl", OK, f"{helm}, {kubectl}")


def _repo_tool(name: str) -> str | None:
    path = Path.cwd() / "build" / "tools" / "bin" / name
    return str(path) if path.is_file() else None


def check_kube_context() -> Check:
    try:
        from kubernetes import config
    except ImportError:
        return Check("kube context", WARN, "kubernetes client not installed", "make setup")
    try:
        _, active = config.list_kube_config_contexts()
    except Exception as exc:  # noqa: BLE001 - no kubeconfig is the common case, not an error
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return Check("kube context", OK, "in-cluster (service account)")
        return Check("kube context", WARN, f"no kubeconfig context ({str(exc).splitlines()[0][:120]})",
                     "make kind-up, or point KUBECONFIG at your cluster (only for fruitlens k8s)")
    cluster = (active.get("context") or {}).get("cluster", "?")
    return Check("kube context", OK, f"{active.get('name')} (cluster {cluster})")


def check_aws() -> Check:
    try:
        import boto3
    except ImportError:
        return Check("aws credentials", WARN, "boto3 not installed", "make setup")
    session = boto3.session.Session()
    creds = session.get_credentials()
    region = session.region_name
    if creds is None:
        return Check("aws credentials", WARN, "none found (only needed for s3:// data and fruitlens emr)",
                     "aws configure, AWS_PROFILE, or an IAM role")
    if not region:
        return Check("aws credentials", WARN, f"credentials from {creds.method}, no region",
                     "set AWS_REGION (or region in the EMR profile)")
    return Check("aws credentials", OK, f"from {creds.method}, region {region}")


def check_emr_profile(profile: str | None = None) -> Check:
    profile = profile or os.environ.get("FRUITLENS_EMR_PROFILE")
    if not profile:
        return Check("emr profile", WARN, "none given (--emr-profile or FRUITLENS_EMR_PROFILE)",
                     "cp examples/emr-profile.yaml my-profile.yaml and fill it in (only for fruitlens emr)")
    from fruitlens.deploy.emr.profile import load_profile
    from fruitlens.errors import FruitlensError

    try:
        loaded = load_profile(profile_file=profile)
        loaded.require("execution_role_arn", "image")
    except FruitlensError as exc:
        return Check("emr profile", FAIL, f"{profile}: {exc}", "fix the profile (docs/emr-on-eks.md)")
    target = loaded.virtual_cluster_id or loaded.virtual_cluster_name or "no virtual cluster"
    return Check("emr profile", OK, f"{profile}: {target}, image {loaded.image}")


def all_checks(*, output: str | None, emr_profile: str | None) -> list[Callable[[], Check]]:
    return [check_python, check_java, check_packages, check_tensorflow, check_weights, check_onnx_export,
            check_jvm_archive, lambda: check_disk(output), check_docker, check_helm, check_kube_context, check_aws,
            lambda: check_emr_profile(emr_profile)]


def run_checks(checks: list[Callable[[], Check]]) -> list[Check]:
    results = []
    for check in checks:
        try:
            results.append(check())
        except Exception as exc:  # noqa: BLE001 - a broken check is reported, the others still run
            name = getattr(check, "__name__", "check").removeprefix("check_")
            results.append(Check(name, FAIL, f"the check itself failed: {exc!r}"))
    return results


def render(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        line = f"{r.status:<4}  {r.name:<{width}}  {r.detail}"
        if r.fix and r.status != OK:
            line += f"\n      {'':<{width}}  fix: {r.fix}"
        lines.append(line)
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append(f"{len(results)} checks: {len(results) - failed - warned} ok, {warned} warn, {failed} fail")
    return "\n".join(lines)


def _doctor(ns: argparse.Namespace) -> int:
    if ns.jvm_archive:  # before the checks, which then report it
        from fruitlens.spark import make_jvm_archive

        _, what = make_jvm_archive()
        print(f"jvm archive: {what}", file=sys.stderr if ns.json else sys.stdout, flush=True)
    results = run_checks(all_checks(output=ns.output, emr_profile=ns.emr_profile))
    if ns.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render(results))
    return 1 if any(r.status == FAIL for r in results) else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check what a run or a deployment needs (Java, packages, weights, Docker, helm, AWS)",
        description="Check what a local run and each deployment path needs, one line per check with the "
                    "fix. Exits 1 when something a local run needs is missing.\n\n"
                    "example:\n  fruitlens doctor --emr-profile my-profile.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", help="where OUTPUT will go (checks its free disk; default: the temp dir)")
    p.add_argument("--emr-profile", help="EMR profile to validate (default $FRUITLENS_EMR_PROFILE)")
    p.add_argument("--json", action="store_true", help="one JSON list of {name, status, detail, fix}")
    p.add_argument("--jvm-archive", action="store_true",
                   help="first make the local Spark JVM's class archive if missing (~30 s once; halves a local "
                        "run's JVM start-up)")
    p.set_defaults(func=_doctor)
