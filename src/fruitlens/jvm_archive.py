"""The driver JVM's class archive (AppCDS): where it lives and the JVM options that use or make it.

A local run's JVM spends most of its start-up loading and verifying Spark's classes from ~250 jars. A
dynamic CDS archive (JDK 13+) holds those classes already parsed and verified, mapped from one file:
the session starts in about half the time (docs/performance.md, "Setup"). It is only valid for the JVM
and the jars it was made with, so its name carries a digest of both, and a JVM that finds a mismatched
archive ignores it (silently, with the options below). It is made once, by a step that finishes
(:func:`fruitlens.spark.make_jvm_archive`: `fruitlens doctor --jvm-archive`, which `make setup` runs),
written beside its final name and renamed into place only after the JVM that dumped it exited cleanly:
a half-written archive crashes the JVM that maps it, so none is ever left under the final name. Beside
it, a record of its size: an archive damaged later (truncated) is found and removed before a JVM maps it;
one that crashes the JVM anyway is removed and the JVM started without it (:func:`fruitlens.spark._start_jvm`).

Only JVMs fruitlens starts itself on a local master use it; a cluster's driver starts from its image.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from fruitlens.engines.model import cache_dir

#: The JVM's own messages about the archive (a mismatch after an upgrade, classes it cannot archive) are
#: not the user's business: the JVM then runs without it.
QUIET = "-Xlog:cds*=off"


def java_binary() -> Path | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = shutil.which("java", path=f"{home}/bin" if home else None)
    return Path(found).resolve() if found else None


def spark_home() -> Path:
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def archive_path() -> Path | None:
    """``FRUITLENS_CACHE``/jvm/spark-<version>-<digest>.jsa for this ``java`` and these Spark jars; None
    without a ``java``."""
    java = java_binary()
    if java is None:
        return None
    from pyspark import __version__ as spark_version

    digest = hashlib.sha256()
    stat = java.stat()  # a JDK update rewrites it; a JVM also refuses an archive another JVM made
    digest.update(f"{java}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    home = spark_home()
    digest.update(f"{home.resolve()}\n".encode())
    for jar in sorted((home / "jars").glob("*.jar")):
        digest.update(f"{jar.name}:{jar.stat().st_size}\n".encode())
    return cache_dir() / "jvm" / f"spark-{spark_version}-{digest.hexdigest()[:16]}.jsa"


def record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def record(path: Path, size: int) -> None:
    """Write the record of an archive about to be renamed to ``path`` (record first: an archive is never
    without one)."""
    record_path(path).write_text(json.dumps({"bytes": size}) + "\n")


def usable(path: Path) -> bool:
    """``path`` is there, whole: its size is the one recorded when it was made."""
    try:
        return json.loads(record_path(path).read_text())["bytes"] == path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return False


def use_options(path: Path) -> str:
    # A JVM that crashes on it anyway writes its report to the temp dir, not the user's working directory.
    return f"-XX:SharedArchiveFile={path} {QUIET} -XX:ErrorFile={tempfile.gettempdir()}/fruitlens-jvm-crash-%p.log"


def dump_options(path: Path) -> str:
    return f"-XX:ArchiveClassesAtExit={path} {QUIET}"


def discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)
