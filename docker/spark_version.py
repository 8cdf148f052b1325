#!/usr/bin/env python3
"""The Spark version and Scala version a Spark image carries: `spark_version.py IMAGE` prints e.g. `3.5.2-amzn-1 2.12`.

Read from the name of $SPARK_HOME/jars/spark-core_<scala>-<version>.jar, as every Spark distribution names
it (Apache's, EMR's -amzn builds, pyspark's wheel), in a throwaway container with no network. `make build`
puts the version on the image as the label fruitlens.spark.version; docker/validate_image.py checks that
label against the image's jars and the EMR release's Spark line. Standard library only.
"""
from __future__ import annotations

import re
import subprocess
import sys

JAR_RE = re.compile(r"^spark-core_(?P<scala>\d+\.\d+)-(?P<version>\d+\.\d+\.\d+\S*)\.jar$")
LIST_JARS = 'ls "${SPARK_HOME:-/usr/lib/spark}/jars" 2>/dev/null || ls /opt/spark/jars /usr/lib/spark/jars 2>/dev/null'


def spark_of(image: str) -> tuple[str, str]:
    """(Spark version, Scala version) of ``image``; RuntimeError saying why if it cannot be read."""
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image,
                           "-c", LIST_JARS], capture_output=True, text=True, timeout=300)
    for name in done.stdout.split():
        m = JAR_RE.match(name)
        if m:
            return m["version"], m["scala"]
    raise RuntimeError(f"{image}: no $SPARK_HOME/jars/spark-core_<scala>-<version>.jar found "
                       f"({(done.stderr.strip() or 'exit ' + str(done.returncode))[-300:]})")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: spark_version.py IMAGE", file=sys.stderr)
        return 2
    try:
        version, scala = spark_of(argv[0])
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"spark_version: {exc}", file=sys.stderr)
        return 1
    print(version, scala)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
