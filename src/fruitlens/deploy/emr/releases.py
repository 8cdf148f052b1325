"""EMR on EKS release labels → the Spark line each release runs: the one place that knows.

fruitlens supports two Spark lines (pyproject: ``pyspark>=3.5,<4.1``), each tested (docs/emr-on-eks.md,
"Releases"): Spark 4.0 on ``emr-spark-8.0.x`` (the default release) and Spark 3.5 on ``emr-7.x``. The
image must be built on a base of the release's line: the image's driver runs under the release's job
runner, and its pyspark is the base's. ``make build`` records the base's Spark in the image label
``fruitlens.spark.version``; ``fruitlens emr submit`` and ``make validate-image`` compare it with the
release here. emr-5.x/6.x are refused: their images are Amazon Linux 2, with neither dnf nor a Python 3.11
package for the image's Python. Standard library only (docker/validate_image.py imports it).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from fruitlens.errors import FruitlensError

DEFAULT_RELEASE = "emr-spark-8.0.0-latest"
#: The label ``make build`` puts on the image: the Spark version of the base it was built on.
SPARK_LABEL = "fruitlens.spark.version"
BASE_REPOSITORY = "public.ecr.aws/emr-on-eks/spark"
#: What to use instead, per Spark line (and for a refused release: either).
RELEASE_FOR_LINE = {"4.0": "emr-spark-8.0.0-latest", "3.5": "an emr-7.x release such as emr-7.5.0-latest"}
SUPPORTED = "emr-spark-8.0.0-latest (Spark 4.0) or an emr-7.x release such as emr-7.5.0-latest (Spark 3.5)"

# emr-7.5.0-latest, emr-7.2.0-20240610, emr-7.0.0-spark-rapids-latest, emr-6.12.0-java17-latest,
# emr-spark-8.0.0-latest, emr-spark-8.0.0-20260421 (the EMR on EKS release pages).
LABEL_RE = re.compile(r"^emr-(?P<runtime>spark-)?(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)"
                      r"(?P<variant>(?:-[a-z][a-z0-9]*)*)-(?P<tag>latest|\d{8})$")
VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?(?:[-+.][0-9A-Za-z.+-]*)?$")


class ReleaseError(FruitlensError, ValueError):
    """A release fruitlens cannot run on, or a release and an image of different Spark lines."""

    exit_code = 2


@dataclass(frozen=True)
class Release:
    label: str
    name: str        # emr-7.5.0, emr-spark-8.0.0 (with a variant: emr-7.0.0-spark-rapids)
    tag: str         # latest or YYYYMMDD
    spark_line: str  # "3.5" | "4.0"

    @property
    def base_image(self) -> str:
        """The EMR on EKS Spark base image of this release (what Dockerfile.emr builds on)."""
        return f"{BASE_REPOSITORY}/{self.name}:{self.tag}"


def release(label: str) -> Release:
    """The release ``label`` names, or :class:`ReleaseError` saying why fruitlens cannot run on it."""
    m = LABEL_RE.match(label)
    if not m:
        raise ReleaseError(f"release {label} is not an EMR on EKS Spark release label fruitlens knows "
                           f"(emr-X.Y.Z-latest, emr-spark-X.Y.Z-latest, or a YYYYMMDD date for latest); use {SUPPORTED}")
    major, minor = int(m["major"]), int(m["minor"])
    runtime = "emr-spark-" if m["runtime"] else "emr-"
    name = f"{runtime}{major}.{minor}.{m['patch']}{m['variant']}"
    if not m["runtime"] and major < 7:
        raise ReleaseError(f"release {label} is an EMR {major}.x release, whose images are Amazon Linux 2: no dnf "
                           "and no Python 3.11 package, and the fruitlens image needs Python 3.11 (its pinned "
                           f"dependencies) beside the base's Spark; use {SUPPORTED}")
    if m["runtime"] and (major, minor) == (8, 0):
        line = "4.0"  # emr-spark-8.0.0: Spark 4.0.2-amzn-0, Scala 2.13
    elif not m["runtime"] and major == 7:
        line = "3.5"  # emr-7.x: Spark 3.5.x-amzn (7.5.0: 3.5.2-amzn-1, 7.13.0: 3.5.6-amzn-2), Scala 2.12
    else:
        raise ReleaseError(f"release {label} is not one fruitlens can run on: it supports Spark 3.5 and 4.0 "
                           f"(pyspark>=3.5,<4.1) and does not know this release's Spark; use {SUPPORTED}")
    return Release(label=label, name=name, tag=m["tag"], spark_line=line)


def spark_line(version: str) -> str:
    """``3.5.2-amzn-1`` → ``3.5``; :class:`ReleaseError` if ``version`` is not a Spark version."""
    m = VERSION_RE.match(version.strip())
    if not m:
        raise ReleaseError(f"{version!r} is not a Spark version such as 4.0.2 or 3.5.2-amzn-1")
    return f"{m[1]}.{m[2]}"


def image_mismatch(label: str, image: str, image_spark: str) -> str | None:
    """Why ``image`` (built on Spark ``image_spark``) cannot run under release ``label``, or None."""
    rel = release(label)
    line = spark_line(image_spark)
    if line == rel.spark_line:
        return None
    other = RELEASE_FOR_LINE.get(line)
    fix = f"submit it with {other}" if other else "rebuild it"
    return (f"release {label} runs Spark {rel.spark_line}, but the image {image} was built on Spark {image_spark}: "
            f"its driver would run under the other Spark's job runner. {fix[0].upper() + fix[1:]}, or build the "
            f"image on the release's base: make build FLAVOUR=emr EMR_BASE={rel.base_image}")


def local_image_spark(image: str) -> str | None:
    """The image's ``fruitlens.spark.version`` label where this machine's Docker has the image (after
    ``make build``/``make push`` here: a pushed digest is one of its RepoDigests); None otherwise."""
    try:
        done = subprocess.run(["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{SPARK_LABEL}"}}}}',
                               image], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value and value != "<no value>" else None
