"""Each S3 bucket's region is resolved once on the driver and reaches the workers inside StoreOptions.

pyarrow (the workers' S3 client) takes its region only from AWS_REGION or the settings; on EMR on EKS IRSA
sets AWS_REGION to the cluster's region, so a bucket in another region failed in every worker. S3 itself
cannot be reached here: pyarrow's resolve_s3_region is replaced by a recording stand-in, and a worker is
played by unpickling the options (Spark ships them to the workers inside the task closure).
"""
from __future__ import annotations

import pickle

import pytest

from fruitlens.storage import store
from fruitlens.storage.store import Store, StoreOptions

REGIONS = {"photos-eu": "eu-west-2", "runs-ap": "ap-southeast-1"}


@pytest.fixture
def s3_regions(monkeypatch) -> list[str]:
    asked: list[str] = []

    def resolve(bucket: str) -> str:
        asked.append(bucket)
        if bucket not in REGIONS:
            raise OSError(f"When resolving region for bucket '{bucket}': AWS Error ACCESS_DENIED")
        return REGIONS[bucket]

    monkeypatch.setattr(store.pafs, "resolve_s3_region", resolve)
    return asked


def on_a_worker(options: StoreOptions, monkeypatch) -> StoreOptions:
    def no_call(bucket):
        raise AssertionError(f"a worker asked S3 for {bucket}'s region")

    monkeypatch.setattr(store.pafs, "resolve_s3_region", no_call)
    return pickle.loads(pickle.dumps(options))


def test_without_an_endpoint_each_buckets_region_is_resolved_on_the_driver_and_reaches_the_workers(
        s3_regions, monkeypatch):
    driver = StoreOptions.from_environment(env={"AWS_REGION": "us-east-1"})  # IRSA: the cluster's region
    options = driver.with_bucket_regions("s3a://photos-eu/fruits-360", "s3://runs-ap/run1", "file:/tmp/x",
                                         "s3://photos-eu/more")
    assert s3_regions == ["photos-eu", "runs-ap"]  # once per bucket; local paths ask nothing
    worker = on_a_worker(options, monkeypatch)
    assert Store("s3a://photos-eu/fruits-360", worker).fs.region == "eu-west-2"
    assert Store("s3://runs-ap/run1", worker).fs.region == "ap-southeast-1"
    assert Store("s3://elsewhere/x", worker).fs.region == "us-east-1"  # not resolved: the configured one


def test_a_bucket_whose_region_cannot_be_read_keeps_the_configured_region(s3_regions):
    options = StoreOptions(region="us-east-1").with_bucket_regions("s3://private-bucket/in")
    assert s3_regions == ["private-bucket"]
    assert Store("s3://private-bucket/in", options).fs.region == "us-east-1"


def test_with_an_endpoint_nothing_is_resolved(s3_regions):
    """An S3-compatible server (SeaweedFS, MinIO) has no regions to resolve."""
    options = StoreOptions.from_environment(env={}, hadoop={"fs.s3a.endpoint": "http://127.0.0.1:8333"})
    assert options.with_bucket_regions("s3a://photos-eu/in") is options
    assert s3_regions == []
    assert Store("s3a://photos-eu/in", options).fs.region == "us-east-1"
