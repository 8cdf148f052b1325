"""`fruitlens serve` on a real trained OUTPUT (MobileNetV2 features, Spark-trained head): the same answers
as `fruitlens predict`, and the loop: serve → kept uploads → `run --train` grows the data → the service
swaps in the retrained model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, real_images
from serve_support import Server, multipart

from fruitlens.cli import main
from fruitlens.serve.app import create_app
from fruitlens.serve.config import ServeConfig
from fruitlens.serve.uploads import UploadStore

TRAIN_PER_CLASS, TEST_PER_CLASS, CLASSES = 8, 3, 4
NEW_PER_CLASS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small Fruits-360 INPUT (Training/Test, 4 classes) and `fruitlens run INPUT OUTPUT --train`."""
    root = tmp_path_factory.mktemp("serve-e2e")
    inp, out = root / "fruits", root / "out"
    for split, n in (("Training", TRAIN_PER_CLASS), ("Test", TEST_PER_CLASS)):
        for src in real_images(split, per_class=n, classes=CLASSES):
            dst = inp / split / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    code = main(["run", str(inp), str(out), "--pca-k", "8", "--batch-size", "16", "--no-progress", "--train"])
    assert code == 0
    return inp, out


@pytest.mark.slow
def test_serve_answers_real_photos_like_fruitlens_predict(trained):
    _, out = trained
    photos = real_images("Test", per_class=TEST_PER_CLASS + 2, classes=CLASSES)[-4:]
    done = subprocess.run([sys.executable, "-m", "fruitlens", "predict", str(out), *map(str, photos), "--json"],
                          capture_output=True, text=True, check=True, cwd=REPO)
    expected = [json.loads(line) for line in done.stdout.splitlines()]
    with Server(create_app(ServeConfig(str(out), threads=2))) as s:
        s.wait_ready()
        for photo, want in zip(photos, expected, strict=True):
            status, _, got = s.json("POST", "/v1/predict", photo.read_bytes(), {"Content-Type": "image/jpeg"})
            assert status == 200 and got["label"] == want["label"]
            for g, w in zip(got["top"], want["top"], strict=True):
                assert g["label"] == w["label"] and g["probability"] == pytest.approx(w["probability"], abs=2e-6)
        body, ctype = multipart([("photo", p.name, p.read_bytes()) for p in photos])
        status, _, got = s.json("POST", "/v1/predict", body, {"Content-Type": ctype})
        assert status == 200 and [r["label"] for r in got["results"]] == [w["label"] for w in expected]
        manifest = json.loads((out / "manifest.json").read_text())
        assert got["results"][0]["model"]["test_accuracy"] == manifest["classifier"]["accuracy"]


@pytest.mark.slow
def test_uploads_loop_serve_run_train_swap(trained, tmp_path):
    src_in, _ = trained
    inp, out = tmp_path / "fruits", tmp_path / "out"
    shutil.copytree(src_in, inp)
    run = ["run", str(inp), str(out), "--pca-k", "8", "--batch-size", "16", "--no-progress", "--train"]
    assert main(run) == 0  # OUTPUT remembers its INPUT: a run of its own
    config = ServeConfig(str(out), keep_uploads=str(inp / "Training"), poll_s=0.5, threads=2)
    fresh = [p for p in real_images("Training", per_class=TRAIN_PER_CLASS + NEW_PER_CLASS, classes=CLASSES)
             if not (inp / "Training" / p.parent.name / p.name).exists()]
    assert len(fresh) == NEW_PER_CLASS * CLASSES
    with Server(create_app(config, uploads=UploadStore.open(config))) as s:
        old = s.wait_ready()["model"]
        answers = [s.json("POST", "/v1/predict", p.read_bytes(), {"Content-Type": "image/jpeg"})[2] for p in fresh]
        s.service.uploads.flush()
        # The app confirms the true label of each photo (a feedback move where the prediction was wrong).
        for p, a in zip(fresh, answers, strict=True):
            status, _, fb = s.json("POST", "/v1/feedback", json.dumps({"id": a["id"], "label": p.parent.name}).encode(),
                                   {"Content-Type": "application/json"})
            assert status == 200
        kept = sorted((inp / "Training").glob("*/*.jpg"))
        assert len([k for k in kept if len(k.stem) == 64]) == len(fresh)
        assert main(run) == 0
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        assert counts["new"] == counts["processed"] == len(fresh)  # only the new photos were read
        paths = set(pq.read_table(out / "features", columns=["path"]).column("path").to_pylist())
        for a, p in zip(answers, fresh, strict=True):
            assert any(x.endswith(f"/Training/{p.parent.name}/{a['id']}.jpg") for x in paths)
        deadline = time.monotonic() + 30
        while (new := s.json("GET", "/readyz")[2]["model"])["version"] == old["version"]:
            assert time.monotonic() < deadline, "the retrained model was not swapped in"
            time.sleep(0.2)
        assert new["trained_at"] >= (old["trained_at"] or "")
        status, _, answer = s.json("POST", "/v1/predict", fresh[0].read_bytes(), {"Content-Type": "image/jpeg"})
        assert status == 200 and answer["model"]["version"] == new["version"]
