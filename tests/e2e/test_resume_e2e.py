"""Resume and grow, end to end: real Spark, real photos, real SIGKILLs of the whole process group.

Killed runs are `python -m fruitlens run` subprocesses in their own process group; the kill points
are test hooks (fruitlens.testing.faults) so each kill happens exactly where it is meant to, and the test
checks the point was reached. Every interrupted OUTPUT, re-run with the same command, must equal an
uninterrupted run: the same paths, no duplicates, features within 1e-4.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from conftest import SAMPLE

from fruitlens.cli import main

pytestmark = pytest.mark.slow

CLASSES = ("Cherry 3", "Plum 5", "apple_golden_1")
PER_CLASS = 14
ARGS = ["--pca-k", "3", "--arrow-batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Real photos (copies, so they can be changed) in the Fruits-360 layout, and one corrupt file."""
    root = tmp_path_factory.mktemp("resume") / "in"
    for label in CLASSES:
        (root / "Training" / label).mkdir(parents=True)
        for image in sorted((SAMPLE / "Training" / label).glob("*.jpg"))[:PER_CLASS]:
            shutil.copyfile(image, root / "Training" / label / image.name)
    (root / "Training" / CLASSES[0] / "broken.jpg").write_bytes(b"not a photo")
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["run", str(source), str(out), *ARGS]) == 0
    return out


def fruitlens(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m fruitlens ...` in a new process group (so a kill takes the JVM and workers with it)."""
    return subprocess.Popen([sys.executable, "-m", "fruitlens", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def killed_at(point: str, source: Path, out: Path) -> subprocess.CompletedProcess:
    proc = fruitlens("run", str(source), str(out), *ARGS, env={"FRUITLENS_TEST_KILL_AT": point})
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: {proc.returncode}\n{stderr[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def table(out: Path, kind: str) -> dict[str, dict]:
    """Rows by path; fails on a duplicate path."""
    rows = ds.dataset(str(out / kind), format="parquet").to_table().to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), f"duplicate paths in {kind}"
    return by_path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_same_output(got: Path, want: Path) -> None:
    for kind in ("features", "errors"):
        a, b = table(got, kind), table(want, kind)
        assert set(a) == set(b), kind
    a, b = table(got, "features"), table(want, "features")
    x = np.array([a[p]["features"] for p in sorted(a)])
    y = np.array([b[p]["features"] for p in sorted(b)])
    assert np.abs(x - y).max() <= 1e-4
    assert set(table(got, "pca")) == set(a)
    np.testing.assert_allclose(manifest(got)["pca"]["explained_variance"], manifest(want)["pca"]["explained_variance"],
                               rtol=1e-5)
    for key in ("matched", "features", "errors"):
        assert manifest(got)["counts"][key] == manifest(want)["counts"][key]


def status(out: Path, capsys) -> dict:
    capsys.readouterr()
    main(["status", str(out), "--json"])
    return json.loads(capsys.readouterr().out)


def test_killed_during_extraction_pca_and_manifest_then_rerun_equals_an_uninterrupted_run(
        source, reference, tmp_path, capsys):
    out = tmp_path / "out"
    images = len(CLASSES) * PER_CLASS + 1

    killed_at("extract:3", source, out)  # after 3 committed batch files (of ~11)
    assert not (out / "manifest.json").exists()
    done = len(table(out, "features"))
    assert len(list((out / "features").glob("part-*.parquet"))) >= 3 and done < images - 1
    st = status(out, capsys)
    assert st["state"] == "interrupted" and st["committed"]["features"] == done

    killed_at("pca", source, out)  # extraction finished, PCA under way
    assert not (out / "manifest.json").exists()
    assert len(table(out, "features")) == images - 1 and len(table(out, "errors")) == 1

    killed_at("manifest", source, out)  # the manifest written to its temporary name, not yet published
    assert not (out / "manifest.json").exists() and list(out.glob(".manifest.json.tmp-*"))

    assert main(["run", str(source), str(out), *ARGS]) == 0
    assert_same_output(out, reference)
    m = manifest(out)
    assert m["counts"] | {"processed": 0} == {"matched": images, "features": images - 1, "errors": 1, "processed": 0,
                                              "decode_errors": 1, "read_errors": 0, "reused": images, "new": 0,
                                              "changed": 0, "removed": 0, "retried": 0}
    assert [h["finished"] for h in m["history"]] == [False, False, False, True]
    assert not list(out.glob(".manifest.json.tmp-*"))
    assert status(out, capsys)["state"] == "finished"


def test_a_worker_dying_mid_task_is_retried_and_a_concurrent_run_is_refused(source, reference, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "worker-died"
    first = fruitlens("run", str(source), str(out), *ARGS, "--master", "local[2,2]",
                      env={"FRUITLENS_TEST_FAIL_ONCE": str(marker)})
    deadline = time.monotonic() + 300
    while not (out / "_fruitlens" / "lock.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
        time.sleep(0.2)
    holder = json.loads((out / "_fruitlens" / "lock.json").read_text())

    capsys.readouterr()
    assert main(["run", str(source), str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert "in use by another fruitlens run" in err and f"pid {first.pid}" in err and holder["host"] in err

    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert marker.exists(), "the injected worker failure never happened"
    assert_same_output(out, reference)
    assert len(manifest(out)["history"]) == 1  # the refused run left no trace


def test_grown_changed_and_removed_images_give_the_right_counts_and_rows(source, reference, tmp_path, capsys):
    src = tmp_path / "in"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    assert main(["run", str(src), str(out), *ARGS]) == 0
    before = table(out, "features")

    cherry, plum = src / "Training" / CLASSES[0], src / "Training" / CLASSES[1]
    replacement = sorted(plum.glob("*.jpg"))[0]  # Plum's bytes, later under a Cherry name
    added = sorted((SAMPLE / "Training" / CLASSES[2]).glob("*.jpg"))[PER_CLASS:PER_CLASS + 3]
    for image in added:
        shutil.copyfile(image, plum / f"new_{image.name}")
    photos = sorted(p for p in cherry.glob("*.jpg") if p.name != "broken.jpg")
    changed, removed = photos[1], [photos[5], photos[9]]  # each in a batch file with other rows kept
    shutil.copyfile(replacement, changed)
    os.utime(changed, (time.time() + 5, time.time() + 5))
    for path in removed:
        path.unlink()

    # Killed after writing the first rewritten file, before deleting the old one: the re-run repairs it.
    proc = fruitlens("run", str(src), str(out), *ARGS, env={"FRUITLENS_TEST_KILL_AT": "cleanup"})
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    capsys.readouterr()
    assert main(["run", str(src), str(out), *ARGS]) == 0
    counts = manifest(out)["counts"]
    assert counts == {"matched": len(before) + 1 + 3 - 2, "features": len(before) + 3 - 2, "errors": 1,
                      "decode_errors": 1, "read_errors": 0, "processed": 4, "reused": len(before) + 1 - 1 - 2,
                      "new": 3, "changed": 1, "removed": 2, "retried": 0}
    after = table(out, "features")  # no duplicates (checked by table())
    uri = lambda p: f"file:{p}"  # noqa: E731
    assert set(after) == (set(before) - {uri(p) for p in removed}) | {uri(plum / f"new_{i.name}") for i in added}
    np.testing.assert_allclose(after[uri(changed)]["features"], before[uri(replacement)]["features"], atol=1e-4)
    assert after[uri(changed)]["size"] == replacement.stat().st_size
    unchanged = sorted(set(after) & set(before) - {uri(changed)})
    assert all(after[p]["features"] == before[p]["features"] for p in unchanged)  # reused, not recomputed
    assert len(table(out, "pca")) == len(after)


def test_an_output_of_another_input_is_refused(source, reference, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(source / "Training" / CLASSES[0], other / "x")
    capsys.readouterr()
    assert main(["run", str(other), str(reference), *ARGS]) == 1
    err = capsys.readouterr().err
    assert f"holds the features of INPUT file://{source}" in err and "--overwrite" in err
