"""Where the driver JVM's class archive lives and when it is trusted (fruitlens.jvm_archive); the real JVM
making, using and surviving a damaged one: tests/e2e/test_jvm_archive_e2e.py."""
from __future__ import annotations

import os

from fruitlens import jvm_archive


def _spark_home(tmp_path, jars: dict[str, int]):
    home = tmp_path / "spark"
    (home / "jars").mkdir(parents=True, exist_ok=True)
    for name, size in jars.items():
        (home / "jars" / name).write_bytes(b"x" * size)
    return home


def test_the_name_changes_with_the_spark_jars_and_lives_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARK_HOME", str(_spark_home(tmp_path, {"spark-core.jar": 10, "scala.jar": 5})))
    first = jvm_archive.archive_path()
    assert first.parent == tmp_path / "cache" / "jvm" and first.suffix == ".jsa"
    assert jvm_archive.archive_path() == first  # stable between runs
    (tmp_path / "spark" / "jars" / "spark-core.jar").write_bytes(b"x" * 11)  # an upgraded jar
    assert jvm_archive.archive_path() != first


def test_no_java_no_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    assert jvm_archive.archive_path() is None
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert jvm_archive.archive_path() is None


def test_an_archive_is_trusted_only_at_the_size_it_was_made_with(tmp_path):
    path = tmp_path / "a.jsa"
    assert not jvm_archive.usable(path)
    path.write_bytes(b"x" * 100)
    assert not jvm_archive.usable(path)  # no record: not made by make_jvm_archive
    jvm_archive.record(path, 100)
    assert jvm_archive.usable(path)
    path.write_bytes(b"x" * 40)  # truncated later
    assert not jvm_archive.usable(path)
    jvm_archive.record_path(path).write_text("{not json")
    assert not jvm_archive.usable(path)
    jvm_archive.discard(path)
    assert not path.exists() and not jvm_archive.record_path(path).exists()


def test_options_use_or_dump_quietly_and_keep_crash_reports_out_of_the_working_directory(tmp_path):
    path = tmp_path / "a.jsa"
    use = jvm_archive.use_options(path).split()
    assert f"-XX:SharedArchiveFile={path}" in use and "-Xlog:cds*=off" in use
    assert any(o.startswith("-XX:ErrorFile=") and not o.startswith(f"-XX:ErrorFile={os.getcwd()}") for o in use)
    assert jvm_archive.dump_options(path).split() == [f"-XX:ArchiveClassesAtExit={path}", "-Xlog:cds*=off"]
