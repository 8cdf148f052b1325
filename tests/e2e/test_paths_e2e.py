"""`fruitlens run` on a tree of odd names and links, as a user's disk holds them: every image is a
feature row under its literal label or an error row naming it; OUTPUT is the folder named, no other."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import real_images, uri_to_path
from PIL import Image

from fruitlens.cli import main

pytestmark = pytest.mark.slow

CLASSES = ("100%25 juice", "pct%41b", "a#b?c [1] 'q'")
# 5 odd entries of 12, on purpose: far above the default --max-error-rate (5 %).
ARGS = ["--pca-k", "2", "--no-progress", "--max-image-mpx", "0.03", "--max-error-rate", "0.5"]


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("odd")
    root = base / "in#1 %20x"
    photos = real_images(per_class=2, classes=3)
    for i, cls in enumerate(CLASSES):
        (root / "Test" / cls).mkdir(parents=True)
        for p in photos[2 * i: 2 * i + 2]:
            shutil.copyfile(p, root / "Test" / cls / p.name)
    juice, pct, weird = (root / "Test" / c for c in CLASSES)
    grey = np.asarray(Image.open(photos[0]).convert("L")).astype("<u2") * 257
    Image.frombytes("I;16", grey.shape[::-1], grey.tobytes()).save(pct / "sixteen bit.png")
    Image.open(photos[1]).convert("RGB").resize((200, 200)).save(weird / "big.png")  # 0.04 Mpx > 0.03
    (juice / "loop").symlink_to("../..")
    (pct / "gone.jpg").symlink_to(base / "nowhere.jpg")
    (pct / "me.jpg").symlink_to("me.jpg")
    with open(os.fsencode(weird) + b"/caf\xe9.jpg", "wb") as fh:
        fh.write(photos[0].read_bytes())
    errors = {str(juice / "loop"): "symbolic link loop", str(pct / "gone.jpg"): "broken symbolic link",
              str(pct / "me.jpg"): "symbolic link loop", f"{weird}/caf\\xe9.jpg": "not valid UTF-8",
              str(weird / "big.png"): "image too large"}
    return {"base": base, "root": root, "features": 7, "errors": errors}


@pytest.fixture(scope="module")
def run_output(odd, tmp_path_factory) -> Path:
    base = odd["base"]
    (base / "out").mkdir()
    (base / "out" / "keep.txt").write_text("mine")
    decoy = base / "out#new 1xa %41" / "features"  # what the OUTPUT name would match as a glob pattern
    decoy.mkdir(parents=True)
    (decoy / "part-0.parquet").write_text("not parquet: a glob read would fail on it")
    out = base / "out#new [1]?{a,b} %41"
    os.environ["FRUITLENS_DRIVER_PCA_MAX_ROWS"] = "0"  # Spark reads OUTPUT/features itself
    try:
        assert main(["run", str(odd["root"]), str(out), *ARGS]) == 0
    finally:
        del os.environ["FRUITLENS_DRIVER_PCA_MAX_ROWS"]
    return out


def test_labels_are_literal_and_odd_files_are_error_rows_naming_them(run_output, odd):
    features = pq.read_table(run_output / "features").to_pylist()
    errors = pq.read_table(run_output / "errors").to_pylist()
    assert {r["label"] for r in features} == set(CLASSES)
    assert len(features) == odd["features"] == len({r["path"] for r in features})
    for r in features:
        assert Path(uri_to_path(r["path"])).is_file()
    got = {uri_to_path(r["path"]): r["error"] for r in errors}
    assert set(got) == set(odd["errors"])
    for path, reason in odd["errors"].items():
        assert reason in got[path], (path, got[path])
    manifest = json.loads((run_output / "manifest.json").read_text())
    n = odd["features"] + len(odd["errors"])
    assert manifest["counts"] == {"matched": n, "features": odd["features"], "errors": len(odd["errors"]),
                                  "decode_errors": len(odd["errors"]), "read_errors": 0, "processed": n, "new": n,
                                  "reused": 0, "changed": 0, "removed": 0, "retried": 0}
    assert manifest["pca"]["on"] == "spark" and len(pq.read_table(run_output / "pca")) == odd["features"]


def test_output_is_the_folder_named_and_no_other(run_output, odd):
    assert sorted(p.name for p in (odd["base"] / "out").iterdir()) == ["keep.txt"]
    assert (run_output / "manifest.json").is_file()


def test_a_second_run_reuses_every_row_the_odd_ones_included(run_output, odd, tmp_path):
    copy = tmp_path / "again #2"
    shutil.copytree(run_output, copy, symlinks=True)
    assert main(["run", str(odd["root"]), str(copy), *ARGS]) == 0
    counts = json.loads((copy / "manifest.json").read_text())["counts"]
    assert counts["processed"] == 0 and counts["reused"] == counts["matched"] == odd["features"] + len(odd["errors"])


def test_overwrite_of_an_output_holding_other_files_deletes_none_of_them(run_output, odd, tmp_path, capsys):
    copy = tmp_path / "shared folder"
    shutil.copytree(run_output, copy, symlinks=True)
    (copy / "my notes.txt").write_text("mine")
    before = sorted(str(p) for p in copy.rglob("*"))
    capsys.readouterr()
    assert main(["run", str(odd["root"]), str(copy), *ARGS, "--overwrite"]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fruitlens: error:")]
    assert "holds files fruitlens did not write ('my notes.txt')" in line
    assert sorted(str(p) for p in copy.rglob("*")) == before
