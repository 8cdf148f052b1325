#!/usr/bin/env python3
"""Check a built image against the contract of its Spark base: `make validate-image IMAGE=... TAG=...`.

Modelled on AWS' custom-image validation tool for EMR on EKS (awslabs/amazon-emr-on-eks-custom-image-cli:
its image-manifest.yaml and validation_tests/): the image's user, working directory and entry point, the
SPARK_HOME and JAVA_HOME it declares, the Spark launchers it must carry, then a local Spark job run
through the image's entry point. fruitlens adds what its job needs: /opt/fruitlens/job.py, the job's
Python importing fruitlens (on the driver and in a Python worker) and refusing a too-old interpreter.

  validate_image.py IMAGE [--contract emr|oss] [--no-app] [--python PATH] [--release LABEL]

The contract defaults to the image's `fruitlens.flavour` label. --no-app checks only the base's part, so
the stand-in bases and the real EMR bases (public.ecr.aws/emr-on-eks/spark/emr-spark-8.0.0, emr-7.x) can be
checked too. The image's Spark is read from its jars (docker/spark_version.py): an app image's
fruitlens.spark.version label must name it, and with --release (emr contract; `make validate-image` passes
the EMR profile's release_label) it must be of that release's Spark line (src/fruitlens/deploy/emr/releases.py).
For the emr contract the checks run with tmpfs over the folders EMR on EKS mounts at run time, so
nothing the job needs may live there. Prints one PASS/FAIL line per check; exit 1 if any failed.
Standard library only: it runs with any python3 beside a Docker client (--release also imports this
repository's src/fruitlens/deploy/emr/releases.py, standard library only itself).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from spark_version import spark_of

# From the tool's image-manifest.yaml (ManifestConfig, EnvironmentVariables, FileStructures "bin-files").
CONTRACTS = {
    "emr": {
        "user": "hadoop:hadoop", "workdir": "/home/hadoop", "entrypoint": "/usr/bin/entrypoint.sh",
        "env": {"SPARK_HOME": "/usr/lib/spark", "JAVA_HOME": "/etc/alternatives/jre"},
        "files": ["/usr/bin/spark-submit", "/usr/bin/pyspark", "/usr/bin/find-spark-home"],
        # Mounted over by EMR on EKS (emptyDirs, log shippers): empty at run time.
        "mounted": ["/tmp", "/home/hadoop", "/mnt", "/var/log/spark/user", "/var/log/spark/apps",
                    "/var/log/fluentd"],
        "whoami": "hadoop",
    },
    "oss": {  # apache/spark's python3 images
        "user": "185", "workdir": "/opt/spark/work-dir", "entrypoint": "/opt/entrypoint.sh",
        "env": {"SPARK_HOME": "/opt/spark", "JAVA_HOME": None},
        "files": ["/opt/spark/bin/spark-submit"],
        "mounted": [],
        "whoami": None,
    },
}
DEFAULT_PYTHON = "/opt/fruitlens/venv/bin/python"
SPARK_LABEL = "fruitlens.spark.version"  # what `make build` records (fruitlens.deploy.emr.releases.SPARK_LABEL)
NO_NET = ["--network", "none", "--hostname", "validate", "--add-host", "validate:127.0.0.1"]

# A PySpark job the image's Spark runs in local mode: the driver and one Python worker import fruitlens.
WORKER_CHECK = r"""
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("validate-image").getOrCreate()
def probe(_):
    import fruitlens, sys
    return "%s %s" % (fruitlens.__version__, sys.executable)
print("VALIDATE-WORKER", spark.sparkContext.parallelize([0], 1).map(probe).collect()[0])
import fruitlens
print("VALIDATE-DRIVER", fruitlens.__version__, sys.executable)
spark.stop()
"""


def docker(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


class Validator:
    def __init__(self, image: str, contract: str, app: bool, python: str, release: str | None = None) -> None:
        self.image, self.contract, self.app, self.python = image, CONTRACTS[contract], app, python
        self.name, self.release = contract, release
        self.failed: list[str] = []

    def result(self, ok: bool, what: str, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {what}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            self.failed.append(what)
        return ok

    def run(self, script: str, *, entrypoint: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``bash -c script`` in the image, through its own entry point unless told otherwise."""
        mounts = [arg for path in self.contract["mounted"] for arg in ("--tmpfs", f"{path}:rw,exec,mode=1777")]
        first = ["--entrypoint", entrypoint] if entrypoint else []
        return docker("run", "--rm", *NO_NET, *mounts, *extra, *first, self.image, "bash", "-c", script)

    def manifest(self, config: dict) -> None:
        c = self.contract
        self.result(config.get("User") == c["user"], f"user is {c['user']}", f"image says {config.get('User')!r}")
        self.result(config.get("WorkingDir") == c["workdir"], f"working directory is {c['workdir']}",
                    f"image says {config.get('WorkingDir')!r}")
        entry = (config.get("Entrypoint") or [None])[0]
        self.result(entry == c["entrypoint"], f"entrypoint is {c['entrypoint']}", f"image says {entry!r}")
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        for key, value in c["env"].items():
            if value is None:
                self.result(bool(env.get(key)), f"{key} is set", f"image says {env.get(key)!r}")
            else:
                self.result(env.get(key) == value, f"{key}={value}", f"image says {env.get(key)!r}")

    def base_files(self) -> None:
        c = self.contract
        tests = " && ".join(f"test -x {path}" for path in c["files"])
        done = self.run(f'{tests} && test -d "$SPARK_HOME/jars" && ls "$SPARK_HOME/jars" | grep -q "^spark-core" '
                        f'&& "$JAVA_HOME/bin/java" -version 2>&1 | head -1')
        self.result(done.returncode == 0, f"{', '.join(c['files'])}, $SPARK_HOME/jars/spark-core*, $JAVA_HOME/bin/java",
                    (done.stdout + done.stderr).strip().splitlines()[-1] if (done.stdout + done.stderr).strip() else "")
        if c["whoami"]:
            done = self.run("whoami")
            self.result(done.stdout.strip() == c["whoami"], f"runs as {c['whoami']} through the entry point",
                        (done.stdout + done.stderr).strip()[-200:])

    def spark(self, config: dict) -> None:
        """The image's Spark (from its jars) against its label and the EMR release's Spark line."""
        try:
            version, scala = spark_of(self.image)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.result(False, "the image's Spark version can be read from $SPARK_HOME/jars", str(exc)[-300:])
            return
        print(f"INFO  Spark {version}, Scala {scala} (from $SPARK_HOME/jars)", flush=True)
        if self.app:
            label = (config.get("Labels") or {}).get(SPARK_LABEL)
            self.result(label == version, f"label {SPARK_LABEL} names the image's Spark ({version})",
                        f"image says {label!r}")
        if self.release and self.name == "emr":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
            from fruitlens.deploy.emr.releases import ReleaseError, release, spark_line

            try:
                line = release(self.release).spark_line
            except ReleaseError as exc:
                self.result(False, f"release {self.release} is one fruitlens runs on", str(exc))
                return
            self.result(spark_line(version) == line, f"Spark {version} is release {self.release}'s line (Spark {line})",
                        "" if spark_line(version) == line else f"build on {release(self.release).base_image} "
                        "(make build FLAVOUR=emr EMR_BASE=...) or use a release of this image's line")

    def app_checks(self) -> None:
        done = self.run("test -f /opt/fruitlens/job.py && echo ok")
        self.result(done.stdout.strip() == "ok", "/opt/fruitlens/job.py is in the image", done.stderr.strip()[-200:])
        done = self.run(f"{self.python} -c 'import sys, fruitlens, pyspark; "
                        "print(sys.version_info >= (3, 10), fruitlens.__version__, pyspark.__version__)'")
        self.result(done.returncode == 0 and done.stdout.startswith("True "),
                    f"{self.python} (>= 3.10) imports fruitlens and pyspark", (done.stdout + done.stderr).strip()[-300:])
        done = self.run(f"{self.python} /opt/fruitlens/job.py --version")
        self.result(done.returncode == 0 and done.stdout.startswith("fruitlens "),
                    "job.py on the job's Python is the fruitlens CLI", (done.stdout + done.stderr).strip()[-300:])
        # The job's local Spark run, as AWS' tool runs SparkPi, with the interpreter fruitlens emr submit sends.
        script = (f"cat > /tmp/validate_job.py <<'EOF'\n{WORKER_CHECK}\nEOF\n"
                  f"spark-submit --master 'local[1]' --deploy-mode client --conf spark.pyspark.python={self.python} "
                  f"--conf spark.pyspark.driver.python={self.python} --conf spark.ui.enabled=false "
                  "/tmp/validate_job.py")
        done = self.run(script)
        worker = [line for line in done.stdout.splitlines() if line.startswith(("VALIDATE-WORKER", "VALIDATE-DRIVER"))]
        self.result(done.returncode == 0 and len(worker) == 2,
                    "a local Spark job: driver and Python worker import fruitlens",
                    " | ".join(worker) if len(worker) == 2 else (done.stdout + done.stderr).strip()[-800:])
        # The base's own python3 (EMR 7: 3.9) must not be mistaken for the job's: job.py says what to set.
        old = self.run("/usr/bin/python3 -c 'import sys; print(sys.version_info >= (3, 10), sys.version.split()[0])'")
        if old.stdout.startswith("False"):
            done = self.run("/usr/bin/python3 /opt/fruitlens/job.py --version")
            self.result(done.returncode == 2 and "set spark.pyspark.python" in done.stderr,
                        f"job.py on the base's /usr/bin/python3 ({old.stdout.split()[1]}) refuses with a clear message",
                        (done.stderr.strip().splitlines() or ["no message"])[-1][:300])
        else:
            print(f"SKIP  job.py on an old /usr/bin/python3: it is {old.stdout.strip() or 'missing'}", flush=True)

    def validate(self) -> int:
        done = docker("image", "inspect", self.image)
        if done.returncode != 0:
            print(f"validate-image: {self.image} not found: {done.stderr.strip()}", file=sys.stderr)
            return 2
        config = json.loads(done.stdout)[0]["Config"]
        print(f"validate-image: {self.image} against the {self.name} contract"
              f"{' (base only)' if not self.app else ''}", flush=True)
        self.manifest(config)
        self.base_files()
        self.spark(config)
        if self.app:
            self.app_checks()
        if self.failed:
            print(f"validate-image: {len(self.failed)} check(s) FAILED: {'; '.join(self.failed)}", flush=True)
            return 1
        print("validate-image: all checks passed", flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--contract", choices=sorted(CONTRACTS), help="default: the image's fruitlens.flavour label")
    parser.add_argument("--no-app", dest="app", action="store_false", help="a bare base: skip the fruitlens checks")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help=f"the job's interpreter (default {DEFAULT_PYTHON})")
    parser.add_argument("--release", help="emr: the EMR release label the image must match (its Spark line)")
    ns = parser.parse_args(argv)
    contract = ns.contract
    if contract is None:
        done = docker("image", "inspect", "-f", '{{index .Config.Labels "fruitlens.flavour"}}', ns.image)
        contract = done.stdout.strip()
        if contract not in CONTRACTS:
            parser.error(f"{ns.image} has no fruitlens.flavour label (emr|oss): give --contract")
    return Validator(ns.image, contract, ns.app, ns.python, ns.release or None).validate()


if __name__ == "__main__":
    sys.exit(main())
