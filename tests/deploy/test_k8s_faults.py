"""Node loss and spot, proved through the pod runner (issue 22): the chart's Job on the real image and real photos,
with a fault injected in the middle of the extraction, must end with the output of an uninterrupted run.

- an executor container is killed (SIGKILL, as a lost node): Spark replaces the executor, the job completes;
- the driver pod is evicted as a drain does (DisruptionTarget condition, SIGTERM, grace, deletion): the Job
  replaces it under the chart's podFailurePolicy without counting a failure, the new driver waits for the
  old one's lock, takes it over and continues the OUTPUT;
- with decommissioning on, an executor is evicted as a spot notice does: the kubelet runs Spark's preStop hook
  (/opt/decom.sh: SIGPWR to the executor JVM), then SIGTERM; the executor leaves without failing the job.

Each run's output equals the uninterrupted reference run's (one, shared by the module): the same paths, no
path twice, features within 1e-4. Each run's wall time (manifests applied → the Job's Complete condition) is
printed beside the reference's; docs/kubernetes.md has the figures. Small on purpose (two classes, ~300
photos, 12 tasks of ~25 photos committed one file each) so the faults land mid-extraction and `make test`
stays short. The image: $K8S_TEST_IMAGE, else the session's `make build` image (tests/deploy/test_docker.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE
from fakes.k8s_pod_runner import PodRunner, wait_for
from test_docker import docker_engine, oss_image, rel_key  # noqa: F401 (fixtures, shared with test_docker)
from test_k8s_pod_runner import NAMESPACE, _free_ports, _fruitlens, _install, _job_done, _values, image  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CLASSES = ("apple_golden_1", "apple_red_delicios_1")  # 154 + 150 photos
PIPELINE = {"pcaK": 8, "commitSize": 32, "partitions": 12}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def runner(tmp_path_factory, docker_engine):  # noqa: F811
    with PodRunner(tmp_path_factory.mktemp("fault-runner")) as r:
        yield r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault-data")
    root.chmod(0o755)  # uid 185 in the pods must get in
    for name in CLASSES:
        shutil.copytree(SAMPLE / "Test" / name, root / "in" / name)
    (root / "out").mkdir()
    (root / "out").chmod(0o777)
    return root


def n_photos(data: Path) -> int:
    return sum(1 for _ in (data / "in").rglob("*.jpg"))


def committed(out: Path) -> int:
    return len(list((out / "features").glob("*.parquet"))) if (out / "features").is_dir() else 0


def features(out: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    table = pq.read_table(out / "features")
    keys = [rel_key(p) for p in table.column("path").to_pylist()]
    return keys, {k: np.asarray(f, dtype=np.float32) for k, f in zip(keys, table.column("features").to_pylist())}


def driver_log(runner: PodRunner, release: str) -> str:
    logs = []
    for pod in sorted(runner.pods(NAMESPACE, f"job-name={release}-fruitlens"), key=lambda p: p["metadata"]["name"]):
        cname = runner.containers.get(pod["metadata"]["uid"])
        if cname:
            logs.append(subprocess.run(["docker", "logs", cname], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True).stdout)
    return "\n".join(logs)


def start(runner: PodRunner, image: str, data: Path, release: str, conf: dict | None = None,  # noqa: F811
          metrics_port: int | None = None) -> tuple[Path, float]:
    values = _values(image, runner, data, "/data/in", f"/data/out/{release}", **PIPELINE)
    values["spark"]["conf"].update(conf or {})
    # every pod is on the host's network here: a free port, not the chart's 9464 another run may hold
    values["metrics"] = {"port": metrics_port or _free_ports(1)[0]}
    _install(runner, release, values)
    return data / "out" / release, time.monotonic()


def finish(runner: PodRunner, release: str, started: float) -> dict:
    job = wait_for(lambda: _job_done(runner, f"{release}-fruitlens"), 1200, poll=1, what=f"the {release} Job to end")
    TIMINGS[release] = time.monotonic() - started
    if job["status"].get("succeeded") != 1:
        print("\n".join(line for line in driver_log(runner, release).splitlines()
                        if not line.startswith(("\tat ", "\t... ")))[-12000:])
    print(f"fault run {release}: {TIMINGS[release]:.0f} s wall"
          + (f" (reference {TIMINGS['reference']:.0f} s: {TIMINGS[release] - TIMINGS['reference']:+.0f} s)"
             if "reference" in TIMINGS and release != "reference" else ""))
    return job


def mid_extraction(out: Path, data: Path) -> None:
    """Until a few of the 12 task files are committed, well before all."""
    wait_for(lambda: committed(out) >= 2, 900, poll=0.3, what=f"the first commits in {out}")
    assert committed(out) < 12, "the extraction ended before the fault: give it more tasks"


def running_executors(runner: PodRunner, release: str) -> list[dict]:
    return sorted((p for p in runner.pods(NAMESPACE, f"app.kubernetes.io/instance={release},spark-role=executor")
                   if p.get("status", {}).get("phase") == "Running"), key=lambda p: p["metadata"]["name"])


def assert_same_output(out: Path, reference: Path, data: Path) -> None:
    keys, got = features(out)
    ref_keys, want = features(reference)
    assert len(keys) == len(set(keys)), "a path is committed twice"
    assert set(keys) == set(ref_keys) and len(keys) == n_photos(data)
    worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    assert worst <= 1e-4, worst
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["features"] == n_photos(data) and manifest["counts"]["errors"] == 0
    assert pq.read_table(out / "pca").num_rows == n_photos(data)


SCRAPES: list[str] = []


@pytest.fixture(scope="module")
def reference(runner, image, data) -> Path:  # noqa: F811
    """The uninterrupted run every fault run is compared with; its driver's /metrics is scraped meanwhile."""
    (port,) = _free_ports(1)
    out, started = start(runner, image, data, "reference", metrics_port=port)

    def scrape() -> None:
        while not _job_done(runner, "reference-fruitlens"):
            try:
                SCRAPES.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read().decode())
            except OSError:
                pass
            # Often: on a fast machine the 304 photos' extraction, the PCA and the manifest take ~2 s, after which
            # the driver's endpoint is gone (every 2 s missed that window once in four CI runs).
            time.sleep(0.25)
    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    job = finish(runner, "reference", started)
    scraper.join(timeout=10)
    assert job["status"]["succeeded"] == 1, json.dumps(job["status"])
    assert len(features(out)[0]) == n_photos(data)
    return out


def history(out: Path, expected: int) -> tuple[list[str], dict[str, str]]:
    """`fruitlens history OUT` started as a user would, its printed lines, and the first page of each run."""
    (port,) = _free_ports(1)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from fruitlens.cli import main; sys.exit(main())",
                             "history", str(out), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if len([x for x in lines if "/history/" in x]) >= expected or "error" in line:
                break
        pages = {}
        for line in lines:
            if "/history/" in line:
                url = line.split()[0]
                pages[url] = urllib.request.urlopen(url, timeout=60).read().decode()
        return lines, pages
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_reference_run_figures_were_scraped_from_the_driver(reference):
    done = [int(float(line.rsplit(" ", 1)[1])) for text in SCRAPES for line in text.splitlines()
            if line.startswith('fruitlens_images_done_total{stage="extract"}')]
    assert done and 0 < max(done) <= 304, SCRAPES[-1:]
    assert any("fruitlens_images_per_second" in t for t in SCRAPES)
    assert any(line.startswith("metrics_fruitlens_driver_") for t in SCRAPES for line in t.splitlines())  # Spark's


def test_finished_chart_runs_spark_ui_opens_from_its_event_log(reference):
    assert [p.name for p in (reference / "_spark-events").iterdir()]
    lines, pages = history(reference, expected=1)
    assert lines[0].startswith("Spark History Server: http://127.0.0.1:"), lines
    ((url, page),) = pages.items()
    assert "finished" in next(x for x in lines if url in x)
    assert "<title>fruitlens - Spark Jobs</title>" in page and "Completed Jobs" in page, page[:2000]


def test_killed_executor_is_replaced_and_the_output_is_the_same(runner, image, data, reference):  # noqa: F811
    out, started = start(runner, image, data, "execkill")
    mid_extraction(out, data)
    victim = running_executors(runner, "execkill")[0]
    subprocess.run(["docker", "kill", runner.containers[victim["metadata"]["uid"]]], check=True, capture_output=True)
    job = finish(runner, "execkill", started)
    assert job["status"]["succeeded"] == 1, json.dumps(job["status"])
    executors = sorted(n for n in runner.started if n.startswith("execkill-fruitlens-exec-"))
    assert len(executors) >= 3, executors  # Spark asked for a replacement
    assert_same_output(out, reference, data)


def test_evicted_driver_is_replaced_by_the_job_and_resumes(runner, image, data, reference):  # noqa: F811
    out, started = start(runner, image, data, "evict")
    mid_extraction(out, data)
    (first,) = runner.pods(NAMESPACE, "job-name=evict-fruitlens")
    runner.evict(first["metadata"]["name"], NAMESPACE)
    job = finish(runner, "evict", started)
    log = driver_log(runner, "evict")
    assert job["status"]["succeeded"] == 1, json.dumps(job["status"])
    assert job["status"].get("failed", 0) == 0  # podFailurePolicy: a disruption is not counted
    drivers = [n for n in runner.started if n.startswith("evict-fruitlens-") and "-exec-" not in n]
    assert len(drivers) == 2 and first["metadata"]["name"] == drivers[0], drivers
    # the second driver took the lock (released by the first as its JVM went, else taken over once stale) and
    # continued the first's OUTPUT: two runs in the record, the first unfinished, the second reusing its commits
    history_ = json.loads((out / "manifest.json").read_text())["history"]
    assert [h["finished"] for h in history_] == [False, True], history_
    assert history_[1]["counts"]["reused"] > 0 and "reused 0," not in log.split("setup:")[-1], log[-4000:]
    print(f"evicted driver: {history_[1]['counts']['reused']} photos reused by the new driver")
    assert_same_output(out, reference, data)
    lines, _ = history(out, expected=2)  # both drivers' Spark UIs, the evicted one's up to its SIGTERM
    assert len([x for x in lines if "/history/" in x]) == 2, lines


def test_decommissioned_executor_leaves_without_failing_the_job(runner, image, data, reference):  # noqa: F811
    has = subprocess.run(["docker", "run", "--rm", "--entrypoint", "test", image, "-x", "/opt/decom.sh"])
    assert has.returncode == 0, f"{image} has no executable /opt/decom.sh, Spark's decommission preStop hook"
    conf = {"spark.decommission.enabled": "true", "spark.storage.decommission.enabled": "true",
            "spark.storage.decommission.shuffleBlocks.enabled": "true",
            "spark.storage.decommission.rddBlocks.enabled": "true"}
    out, started = start(runner, image, data, "decom", conf)
    mid_extraction(out, data)
    victim = running_executors(runner, "decom")[0]
    name = victim["metadata"]["name"]
    assert victim["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["/opt/decom.sh"]
    runner.evict(name, NAMESPACE)
    job = finish(runner, "decom", started)
    assert job["status"]["succeeded"] == 1, json.dumps(job["status"])
    hook = runner.hook_logs.get(name, "")
    assert "SIGPWR to the executor JVM" in hook, runner.hook_logs  # the kubelet ran Spark's preStop hook
    state = wait_for(lambda: runner.final_states.get(name), 60, what=f"{name} to be deleted")
    print(f"decommissioned executor: preStop said {hook!r}; container ended with exit code {state['ExitCode']}")
    assert_same_output(out, reference, data)
