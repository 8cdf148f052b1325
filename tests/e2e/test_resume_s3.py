"""The commit layer and `fruitlens extract` against a real S3 server (SeaweedFS `weed` on 127.0.0.1).

Spark here has no s3a jars, so PCA (a Spark read of OUTPUT/features) cannot run on S3 in these tests;
everything else does: the listing of INPUT, the workers reading images and committing batches with
single PUTs, the index, the plan, rewrites, the lock (conditional PUT) and `fruitlens status`.
"""
from __future__ import annotations

import io
import json
import time

import pyarrow.parquet as pq
import pytest
from test_data_s3 import BUCKET, CLASSES, local_copy, s3_endpoint, s3env  # noqa: F401 - fixtures

from fruitlens.cli import main
from fruitlens.deploy.s3data import staging as s3
from fruitlens.state import ledger, schema
from fruitlens.state.lock import LOCK, LockedError, RunLock
from fruitlens.storage.store import Store, StoreOptions

pytestmark = pytest.mark.slow


@pytest.fixture
def store(s3env, s3_endpoint):  # noqa: F811
    def make(prefix: str) -> Store:
        return Store(f"s3://{BUCKET}/{prefix}", StoreOptions(endpoint=s3_endpoint, region="us-east-1",
                                                             access_key="any", secret_key="any"))
    return make


def test_conditional_create_and_the_lock_on_s3(store, s3env):  # noqa: F811
    out = store(f"lock-{time.time_ns()}")
    assert out.create_exclusive("_fruitlens/x.json", "1") is True
    assert out.create_exclusive("_fruitlens/x.json", "2") is False  # If-None-Match: * honoured by the server
    assert out.read_text("_fruitlens/x.json") == "1"

    first = RunLock.acquire(out, command="first", timeout_s=30)
    with pytest.raises(LockedError, match=r"in use by another fruitlens run \(host .*, pid \d+, started 20"):
        RunLock.acquire(out, command="second", timeout_s=30)
    first.release()
    assert out.read_text(LOCK) is None
    # A lock left by a run that died on another host is taken over once its heartbeat is old.
    out.write_text(LOCK, json.dumps({"run_id": "dead", "host": "node-7", "pid": 1, "started": 0, "heartbeat": 0}))
    RunLock.acquire(out, command="third", timeout_s=30).release()


def test_batches_index_and_rewrites_on_s3(store, s3env):  # noqa: F811
    import numpy as np

    out = store(f"ledger-{time.time_ns()}")
    paths = [f"s3://b/in/{i}.jpg" for i in range(6)]
    for part in (paths[:3], paths[3:]):
        rows = [(p, 1, 5) for p in part]
        out.write_table(f"features/{ledger.batch_name(rows)}", schema.features_table(
            part, ["L"] * 3, [""] * 3, [1] * 3, [5] * 3, np.zeros((3, 1280), np.float32)))
    index = ledger.read_index(out)
    assert sorted(r[0] for f in index for r in f.rows) == paths
    listing = [ledger.SourceFile(p, 1, 5) for p in paths if p != paths[1]]
    p = ledger.plan(index, listing)
    assert p.counts() == {"reused": 5, "new": 0, "changed": 0, "removed": 1, "retried": 0} and len(p.rewrite) == 1
    ledger.apply(out, p)
    index = ledger.read_index(out)
    assert sorted(r[0] for f in index for r in f.rows) == sorted(s.path for s in listing)
    assert ledger.plan(index, listing).rewrite == []


def test_extract_from_s3_to_s3_commits_batches_and_a_rerun_processes_only_what_changed(
        s3env, local_copy, tmp_path, capsys):  # noqa: F811
    prefix = f"e2e-{time.time_ns()}"
    src, out = f"s3://{BUCKET}/{prefix}/in", f"s3://{BUCKET}/{prefix}/out"
    s3.upload_tree(local_copy, src, workers=8)
    s3env.put_object(Bucket=BUCKET, Key=f"{prefix}/in/Test/{CLASSES[0]}/broken.jpg", Body=b"no image")
    total = len(list(local_copy.rglob("*.jpg"))) + 1
    args = ["--arrow-batch-size", "8", "--no-progress"]
    assert main(["extract", src, out, *args]) == 0
    first = json.loads(capsys.readouterr().out)["counts"]
    assert first == {"matched": total, "features": total - 1, "errors": 1, "decode_errors": 1, "read_errors": 0,
                     "processed": total, "new": total, "reused": 0, "changed": 0, "removed": 0, "retried": 0}

    keys = [k for k, _ in s3.iter_objects(s3env, out)]
    parts = [k for k in keys if "/features/part-" in k]
    assert len(parts) >= total // 8 and not any("_temporary" in k for k in keys)
    body = s3env.get_object(Bucket=BUCKET, Key=parts[0])["Body"].read()
    assert pq.read_table(io.BytesIO(body)).schema.names == ["path", "label", "split", "features", "size", "modified"]

    # Grow by 2, remove 1: only those are touched.
    photo = next(local_copy.rglob("*.jpg"))
    for name in ("new_a.jpg", "new_b.jpg"):
        s3env.put_object(Bucket=BUCKET, Key=f"{prefix}/in/Test/{CLASSES[1]}/{name}", Body=photo.read_bytes())
    gone = sorted(k for k, _ in s3.iter_objects(s3env, src) if k.endswith(".jpg"))[3]
    s3env.delete_object(Bucket=BUCKET, Key=gone)
    assert main(["extract", src, out, *args]) == 0
    again = json.loads(capsys.readouterr().out)["counts"]
    assert again == {"matched": total + 1, "features": total, "errors": 1, "decode_errors": 1, "read_errors": 0,
                     "processed": 2, "new": 2, "reused": total - 1, "changed": 0, "removed": 1, "retried": 0}

    assert main(["status", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "finished" and report["counts"]["new"] == 2 and report["runs"] == 2


def test_s3_keys_are_literal_names_too(store, s3env):  # noqa: F811
    """`#`, `%`, `?` and spaces in a key are characters of the key: listed, read and labelled as spelt."""
    from fruitlens.images import label_and_split
    from fruitlens.storage.listing import list_images
    from fruitlens.storage.uris import qualify

    prefix = f"odd-{time.time_ns()}/in#1 %20x"
    source = store(prefix)
    for cls in ("100%25 juice", "a#b?c [1]"):
        source.write_bytes(f"Test/{cls}/x%41.jpg", b"jpeg bytes")
    assert qualify(source.uri) == source.uri
    entries = list_images(source)
    assert sorted(e.path for e in entries) == [f"{BUCKET}/{prefix}/Test/100%25 juice/x%41.jpg",
                                               f"{BUCKET}/{prefix}/Test/a#b?c [1]/x%41.jpg"]
    rows = [source.spark_path(e.path) for e in entries]
    assert [label_and_split(r) for r in rows] == [("100%25 juice", "Test"), ("a#b?c [1]", "Test")]
    assert all(source.read_bytes(source.path_of(r)) == b"jpeg bytes" for r in rows)


def test_predict_reads_an_s3_output_like_a_local_one(s3env, tmp_path, rng):  # noqa: F811
    """s3:// OUTPUT: the predictor files come down through the same Store as every OUTPUT read."""
    from conftest import real_images
    from test_classify import tiny_predictor

    from fruitlens.classify.predictor import Predictor
    from fruitlens.errors import FruitlensError

    tiny_predictor(tmp_path / "out" / "predictor", rng)
    photos = [str(p) for p in real_images(per_class=1, classes=3)]
    local = Predictor.load(str(tmp_path / "out")).predict_files(photos)
    prefix = f"predict-{time.time_ns()}"
    for f in (tmp_path / "out" / "predictor").iterdir():
        s3env.upload_file(str(f), BUCKET, f"{prefix}/1/predictor/{f.name}")
    remote = Predictor.load(f"s3://{BUCKET}/{prefix}/1").predict_files(photos)
    with pytest.raises(FruitlensError, match=f"s3://{BUCKET}/{prefix}/2/predictor/model.onnx"):
        Predictor.load(f"s3://{BUCKET}/{prefix}/2")
    assert remote == local and local[0]["top"] != local[1]["top"]
