"""The local driver JVM's class archive (fruitlens.jvm_archive), with real JVMs: `fruitlens doctor
--jvm-archive` makes it, a run loads Spark's classes from it, and a damaged one costs a warning, not the run.

Each test works in its own FRUITLENS_CACHE (the ONNX export linked in from the user's cache, so no run
exports the model again), never in the user's own archive.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import real_images

from fruitlens.engines.model import cache_dir
from fruitlens.jvm_archive import archive_path, record_path

pytestmark = pytest.mark.slow


def _cache(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for export in cache_dir().glob("*.onnx"):
        (root / export.name).symlink_to(export)
    return root


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "FRUITLENS_CACHE": str(cache)}


def _archive_in(cache: Path) -> Path:
    old = os.environ.get("FRUITLENS_CACHE")
    os.environ["FRUITLENS_CACHE"] = str(cache)
    try:
        return archive_path()
    finally:
        os.environ.pop("FRUITLENS_CACHE") if old is None else os.environ.__setitem__("FRUITLENS_CACHE", old)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A cache whose archive `fruitlens doctor --jvm-archive` made, as `make setup` makes it."""
    cache = _cache(tmp_path_factory.mktemp("jvm-cache"))
    done = subprocess.run([sys.executable, "-m", "fruitlens", "doctor", "--jvm-archive", "--json"],
                          capture_output=True, text=True, env=_env(cache), timeout=600)
    assert "jvm archive: made " in done.stderr, done.stderr[-3000:]
    return cache


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "in"
    for p in real_images(per_class=1):
        (root / "Test" / p.parent.name).mkdir(parents=True, exist_ok=True)
        (root / "Test" / p.parent.name / p.name).symlink_to(p)
    return root


def _extract(photos: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fruitlens", "extract", str(photos), str(out), "--no-progress",
                           *extra], capture_output=True, text=True, env=_env(cache), timeout=600)


def test_doctor_makes_the_archive_once_under_the_name_of_this_java_and_spark(made):
    archive = _archive_in(made)
    assert archive.is_file() and archive.stat().st_size > 10_000_000 and archive.parent == made / "jvm"
    assert not list(archive.parent.glob("*.partial"))  # only a finished dump is renamed into place
    done = subprocess.run([sys.executable, "-m", "fruitlens", "doctor", "--jvm-archive", "--json"],
                          capture_output=True, text=True, env=_env(made), timeout=120)
    assert f"jvm archive: {archive} (" in done.stderr  # there already: not made again
    check = next(c for c in json.loads(done.stdout) if c["name"] == "jvm archive")
    assert check["status"] == "ok" and str(archive) in check["detail"]


def test_a_local_run_loads_sparks_classes_from_the_archive(made, photos, tmp_path):
    classes = tmp_path / "class-load.log"
    done = _extract(photos, tmp_path / "out", made,
                    "--conf", f"spark.driver.extraJavaOptions=-Xlog:class+load=info:file={classes}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["counts"]["features"] == len(list(photos.rglob("*.jpg")))
    loaded = classes.read_text()
    assert "org.apache.spark.SparkContext source: shared objects file (top)" in loaded


def _damaged(made: Path, cache: Path, *, recorded_whole: bool) -> Path:
    """A third of the archive ``made`` holds, in ``cache``; its record says the whole size or the third."""
    archive, whole = _archive_in(cache), _archive_in(made)
    archive.parent.mkdir()
    with open(whole, "rb") as f:
        archive.write_bytes(f.read(whole.stat().st_size // 3))
    record_path(archive).write_text(record_path(whole).read_text() if recorded_whole
                                    else json.dumps({"bytes": archive.stat().st_size}))
    return archive


def test_a_truncated_archive_is_found_and_removed_and_the_run_goes_on_without_it(made, photos, tmp_path):
    archive = _damaged(made, _cache(tmp_path / "cache"), recorded_whole=True)
    done = _extract(photos, tmp_path / "out", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["counts"]["features"] == len(list(photos.rglob("*.jpg")))
    assert f"the class archive {archive} is damaged (not the size it was made with): removed it" in done.stderr
    assert not archive.exists() and not record_path(archive).exists()


def test_an_archive_that_crashes_the_jvm_is_removed_and_the_jvm_started_without_it(made, photos, tmp_path):
    """Damage the size record cannot see: the JVM that maps it dies (SIGBUS); the run starts one without it.
    (The dying JVM's banner goes to the inherited stdout: the JVM writes it before reading any option.)"""
    archive = _damaged(made, _cache(tmp_path / "cache"), recorded_whole=False)
    work = tmp_path / "cwd"
    work.mkdir()
    done = subprocess.run([sys.executable, "-m", "fruitlens", "extract", str(photos), str(tmp_path / "out"),
                           "--no-progress"], capture_output=True, text=True, env=_env(tmp_path / "cache"),
                          cwd=work, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["features"] == len(list(photos.rglob("*.jpg")))
    assert f"Spark's JVM did not start with the class archive {archive}: removed it" in done.stderr
    assert not archive.exists() and not list(work.iterdir())  # the crash report is not left in the user's folder
