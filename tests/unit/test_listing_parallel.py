"""The parallel S3 listing (fruitlens.storage.listing.list_batches) against moto's S3 server: the same files
as one recursive listing, hidden names skipped alike, and errors surfacing as they did."""
from __future__ import annotations

import pytest

from fruitlens import pipeline
from fruitlens.storage import listing
from fruitlens.storage.store import Store, StoreError, StoreOptions

moto_server = pytest.importorskip("moto.server")

BUCKET = "listing"
KEYS = [
    "in/root.jpg", "in/notes.txt",
    *[f"in/Training/class {c}/{i}_100.jpg" for c in "abcdefg" for i in range(7)],
    *[f"in/Test/class {c}/{i}_100.JPG" for c in "abc" for i in range(3)],
    "in/Test/class a/deeper/still/x.png", "in/Test/class b/readme.md",
    "in/_hidden/a.jpg", "in/Training/.cache/b.jpg", "in/Training/class a/_tmp.jpg",
    "in/Training/class a/.part.jpg", "in/flat/" + "f.jpg",
    "other/elsewhere.jpg",  # outside INPUT
]


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = StoreOptions(endpoint=f"http://{host}:{port}", region="us-east-1", access_key="test",
                           secret_key="test")
    import boto3

    client = boto3.client("s3", endpoint_url=options.endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    for key in KEYS:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * (len(key) % 7 + 1))
    client.put_object(Bucket=BUCKET, Key="in/empty folder/", Body=b"")  # a folder marker, nothing below
    try:
        yield options
    finally:
        server.stop()


def paths(store: Store, threads: int) -> list[tuple]:
    return sorted((e.path, e.size, e.problem) for e in listing.list_images(store, threads=threads))


@pytest.mark.parametrize("threads", [2, 4, 16])
def test_the_parallel_listing_finds_what_one_recursive_listing_finds(s3, threads):
    store = Store(f"s3://{BUCKET}/in", s3)
    sequential = paths(store, 1)
    assert [p for p, _, _ in sequential] == sorted(f"{BUCKET}/{k}" for k in KEYS if k.startswith("in/") and (
        k.lower().endswith((".jpg", ".png")) and "/_" not in k and "/." not in k))
    assert paths(store, threads) == sequential


def test_split_depth_and_window_do_not_change_the_result(s3, monkeypatch):
    store = Store(f"s3://{BUCKET}/in", s3)
    expected = paths(store, 1)
    for depth in (0, 1, 5):
        monkeypatch.setattr(listing, "SPLIT_DEPTH", depth)
        assert paths(store, 3) == expected


def test_the_plan_listing_is_sorted_with_spark_paths_and_versions(s3):
    table = pipeline.list_input(Store(f"s3://{BUCKET}/in", s3), None, threads=8)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert rows[0]["path"].startswith(f"s3://{BUCKET}/in/") and all(r["modified_us"] > 0 for r in rows)
    assert table.num_rows == len(paths(Store(f"s3://{BUCKET}/in", s3), 1))


def test_a_missing_bucket_lists_nothing_either_way(s3):
    store = Store("s3://no-such-bucket/in", s3)  # (the run checks that INPUT exists before it lists)
    assert paths(store, 1) == paths(store, 8) == []


def test_an_unreachable_endpoint_fails_with_the_same_error():
    options = StoreOptions(endpoint="http://127.0.0.1:9", region="us-east-1", access_key="a", secret_key="b")
    store = Store("s3://bucket/in", options)
    with pytest.raises(StoreError) as sequential:
        paths(store, 1)
    with pytest.raises(StoreError) as parallel:
        paths(store, 8)
    assert str(parallel.value) == str(sequential.value) == (
        "cannot list s3://bucket/in: the bucket or endpoint cannot be reached: check the URI and the S3 endpoint "
        "settings")


def test_a_failing_prefix_raises_its_error_and_stops_the_listing(s3, monkeypatch):
    store = Store(f"s3://{BUCKET}/in", s3)
    calls = []
    real = Store.list

    def failing(self, rel="", *, recursive=False):
        calls.append(rel)
        if rel == "Training/class c":
            raise StoreError(f"cannot list {self.spark_path(self.fs_path(rel))}: permission denied")
        return real(self, rel, recursive=recursive)

    monkeypatch.setattr(Store, "list", failing)
    with pytest.raises(StoreError, match="cannot list s3://listing/in/Training/class c: permission denied"):
        paths(store, 2)
