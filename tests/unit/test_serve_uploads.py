"""`--keep-uploads`: photos kept once under URI/<label>/, feedback moves them (idempotent, validated, across
replicas, finished after a crash); a URI train would ignore is refused at start."""
from __future__ import annotations

import hashlib
import json

import pytest
from conftest import real_images
from serve_support import Server, write_predictor

from fruitlens.serve.app import create_app
from fruitlens.serve.config import ServeConfig, ServeConfigError
from fruitlens.serve.uploads import UploadStore


def _serve(out, kept, **kw):
    config = ServeConfig(str(out), keep_uploads=str(kept), threads=1, **kw)
    return Server(create_app(config, uploads=UploadStore.open(config)))


def _post(s, body):
    return s.json("POST", "/v1/predict", body, {"Content-Type": "image/jpeg"})[2]


def _feedback(s, sha, label):
    return s.json("POST", "/v1/feedback", json.dumps({"id": sha, "label": label}).encode(),
                  {"Content-Type": "application/json"})


def _files(kept, intents=False):
    return sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (intents or p.parent.name != "_feedback"))


def test_uploads_are_stored_once_under_the_predicted_label(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "in" / "Training"
    write_predictor(out)
    photos = [p.read_bytes() for p in real_images(per_class=1, classes=2)]
    with _serve(out, kept) as s:
        s.wait_ready()
        answers = [_post(s, photos[0]), _post(s, photos[1]), _post(s, photos[0])]
        s.service.uploads.flush()
        metrics = s.request("GET", "/metrics")[2].decode()
    a, b = answers[0], answers[1]
    assert a["id"] == hashlib.sha256(photos[0]).hexdigest() and answers[2]["id"] == a["id"]
    assert _files(kept) == sorted([f"{a['label']}/{a['id']}.jpg", f"{b['label']}/{b['id']}.jpg"])
    assert (kept / a["label"] / f"{a['id']}.jpg").read_bytes() == photos[0]  # the original bytes
    assert 'fruitlens_serve_uploads_total{outcome="stored"} 2.0' in metrics
    assert 'fruitlens_serve_uploads_total{outcome="duplicate"} 1.0' in metrics


def test_feedback_moves_the_photo_and_is_idempotent(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    write_predictor(out)
    photo = real_images(per_class=1, classes=1)[0].read_bytes()
    with _serve(out, kept) as s:
        s.wait_ready()
        a = _post(s, photo)
        s.service.uploads.flush()
        other = next(x for x in ("a", "b", "c") if x != a["label"])
        status, _, fb = _feedback(s, a["id"], other)
        assert status == 200 and fb["moved"] is True and fb["path"].endswith(f"/{other}/{a['id']}.jpg")
        status, _, again = _feedback(s, a["id"], other)
        assert status == 200 and again["moved"] is False
    assert _files(kept) == [f"{other}/{a['id']}.jpg"]
    assert json.loads((kept / "_feedback" / f"{a['id']}.json").read_text())["label"] == other


def test_feedback_rejects_unsafe_unknown_labels_and_unknown_ids(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    write_predictor(out)
    with _serve(out, kept) as s:
        s.wait_ready()
        a = _post(s, real_images(per_class=1, classes=1)[0].read_bytes())
        s.service.uploads.flush()
        for label, code in (("../etc", "bad_label"), ("a/b", "bad_label"), (".hidden", "bad_label"),
                            ("_x", "bad_label"), ("x\x00", "bad_label"), ("", "bad_label"), ("kiwi", "unknown_label")):
            status, _, answer = _feedback(s, a["id"], label)
            assert (status, answer["error"]["code"]) == (422, code), label
        status, _, answer = _feedback(s, "0" * 64, "a")
        assert status == 404 and answer["error"]["code"] == "unknown_id"
        status, _, answer = s.json("POST", "/v1/feedback", b"{not json", {"Content-Type": "application/json"})
        assert status == 400
    with Server(create_app(ServeConfig(str(out), threads=1))) as s:  # no --keep-uploads
        s.wait_ready()
        assert _feedback(s, a["id"], "a")[0] == 404


def test_feedback_finds_a_photo_moved_by_another_replica_and_new_labels_when_allowed(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    write_predictor(out)
    photo = real_images(per_class=1, classes=1)[0].read_bytes()
    with _serve(out, kept) as s1:
        s1.wait_ready()
        a = _post(s1, photo)
        s1.service.uploads.flush()
        with _serve(out, kept, allow_new_labels=True) as s2:  # another replica: indexed the photo at start
            s2.wait_ready()
            assert s2.service.uploads.index == {a["id"]: f"{a['label']}/{a['id']}.jpg"}
            other = next(x for x in ("a", "b", "c") if x != a["label"])
            assert _feedback(s1, a["id"], other)[2]["moved"]  # moved by replica 1: replica 2's index is stale
            status, _, fb = _feedback(s2, a["id"], "Kiwi 2")
            assert status == 200 and fb["moved"]
    assert _files(kept) == [f"Kiwi 2/{a['id']}.jpg"]


def test_an_interrupted_move_is_completed_on_start(tmp_path):
    out, kept = tmp_path / "out", tmp_path / "kept"
    write_predictor(out)
    sha = "ab" * 32
    (kept / "a").mkdir(parents=True)
    (kept / "b").mkdir()
    (kept / "_feedback").mkdir()
    (kept / "a" / f"{sha}.jpg").write_bytes(b"x")  # a copy then delete (S3) stopped between the two
    (kept / "b" / f"{sha}.jpg").write_bytes(b"x")
    (kept / "_feedback" / f"{sha}.json").write_text(json.dumps({"label": "b", "at": 0}))
    with _serve(out, kept) as s:
        s.wait_ready()
    assert _files(kept, intents=True) == [f"_feedback/{sha}.json", f"b/{sha}.jpg"]


def test_keep_uploads_refuses_a_uri_train_would_ignore(tmp_path):
    out = tmp_path / "out"
    write_predictor(out)
    (out / "manifest.json").write_text(json.dumps({"classifier": {"split": "folders"}}))
    with pytest.raises(ServeConfigError, match="INPUT/Training"):
        UploadStore.open(ServeConfig(str(out), keep_uploads=str(tmp_path / "in")))
    UploadStore.open(ServeConfig(str(out), keep_uploads=str(tmp_path / "in" / "Training")))
