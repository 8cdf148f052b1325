"""The emr flavour against the EMR on EKS image contract, built and run for real (Docker, no network).

Where public.ecr.aws cannot be reached, `make build FLAVOUR=emr` builds on the local EMR stand-in
(docker/Dockerfile.base-emr-local): user hadoop, /home/hadoop, /usr/bin/entrypoint.sh, /usr/lib/spark,
/etc/alternatives/jre, an old system python3 (3.9) that the base's spark-defaults points Spark at.
docker/validate_image.py checks an image the way AWS' custom-image validation tool does, plus the job's
Python. Needs a Docker engine: skipped without one, except in CI (CI=true), where that fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("FRUITLENS_TEST_IMAGE", "fruitlens")  # the same image tests/test_docker.py builds
VALIDATE = [sys.executable, str(REPO / "docker" / "validate_image.py")]
NO_NET = ["--network", "none", "--hostname", "fruitlens", "--add-host", "fruitlens:127.0.0.1"]


def _engine_problem() -> str | None:
    if not shutil.which("docker"):
        return "no docker client on PATH"
    done = subprocess.run(["docker", "info", "-f", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else f"no Docker engine answers: {done.stderr.strip()[:300]}"


@pytest.fixture(scope="module")
def docker_engine() -> None:
    problem = _engine_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide a Docker engine (.ci/setup.d/20-docker.sh): {problem}")
    if problem:
        pytest.skip(problem)


def make(*args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"make {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def emr_image(docker_engine) -> str:
    make("build", "FLAVOUR=emr", f"IMAGE={IMAGE}", "TAG=emr")
    return f"{IMAGE}:emr"


def labels(image: str) -> dict:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VALIDATE, *args], capture_output=True, text=True, timeout=900)


def test_the_emr_flavour_passes_the_image_contract_validation(emr_image):
    """Finding 11: user, working dir, entry point, SPARK_HOME, JAVA_HOME, launchers, a local Spark job whose
    driver and Python worker import fruitlens, with EMR's run-time mounts (tmpfs) over /tmp, /home/hadoop..."""
    done = make("validate-image", f"IMAGE={IMAGE}", "TAG=emr")
    out = done.stdout
    assert "against the emr contract" in out and "validate-image: all checks passed" in out
    for check in ("user is hadoop:hadoop", "working directory is /home/hadoop", "entrypoint is /usr/bin/entrypoint.sh",
                  "SPARK_HOME=/usr/lib/spark", "JAVA_HOME=/etc/alternatives/jre",
                  "a local Spark job: driver and Python worker import fruitlens"):
        assert f"PASS  {check}" in out, out
    base = labels(emr_image)["fruitlens.base"]
    if base != "public.ecr.aws/emr-on-eks/spark/emr-7.5.0:latest":  # built on the stand-in: it is the EMR contract
        assert validate(base, "--contract", "emr", "--no-app").returncode == 0
        assert "PASS  job.py on the base's /usr/bin/python3 (3.9" in out


def test_the_validation_fails_an_image_that_breaks_the_contract(emr_image):
    """The check can fail: the Debian base of the oss flavour is not an EMR base."""
    done = validate("fruitlens-spark-base:local", "--contract", "emr", "--no-app")
    if "not found" in done.stderr:
        pytest.skip("fruitlens-spark-base:local is not built here")
    assert done.returncode == 1
    for check in ("user is hadoop:hadoop", "entrypoint is /usr/bin/entrypoint.sh", "SPARK_HOME=/usr/lib/spark"):
        assert f"FAIL  {check}" in done.stdout


def test_the_interpreter_comes_from_the_request_not_the_bases_defaults(emr_image):
    """Finding 10: the stand-in's spark-defaults name /usr/bin/python3 (3.9) like an EMR base may; without
    spark.pyspark.python the job stops with a clear message, with it (what `emr submit` sends) it runs."""
    def spark_submit(*conf: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "run", "--rm", *NO_NET, emr_image, "spark-submit", "--master", "local[1]",
                               *conf, "local:///opt/fruitlens/job.py", "--version"],
                              capture_output=True, text=True, timeout=600)

    bare = spark_submit()
    if labels(emr_image)["fruitlens.base"].startswith("public.ecr.aws/"):
        pytest.skip("built on the real EMR base: its defaults are its own")
    said = bare.stdout + bare.stderr  # spark-submit passes the Python process' stderr on to its stdout
    assert bare.returncode != 0
    assert "job.py runs on /usr/bin/python3 (Python 3.9" in said
    assert "set spark.pyspark.python and spark.pyspark.driver.python" in said
    python = "/opt/fruitlens/venv/bin/python"
    sent = spark_submit("--conf", f"spark.pyspark.python={python}", "--conf", f"spark.pyspark.driver.python={python}")
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert sent.stdout.strip().startswith("fruitlens ")


def test_nothing_the_job_needs_lives_under_emrs_mounted_paths(emr_image):
    """EMR on EKS mounts volumes over these at run time: what the image put there is gone."""
    listing = subprocess.run(
        ["docker", "run", "--rm", *NO_NET, "--entrypoint", "bash", emr_image, "-c",
         "find /tmp /home/hadoop /mnt /var/log/spark /var/log/fluentd -mindepth 1 -not -type d | head -20"],
        capture_output=True, text=True, timeout=300, check=True).stdout.split()
    assert [p for p in listing if "fruitlens" in p or p.endswith((".py", ".onnx", ".h5"))] == []


@pytest.fixture
def local_registry(docker_engine, tmp_path):
    """A real registry (Debian's docker-registry, the distribution v2 server) on 127.0.0.1: Docker pushes to
    loopback registries over plain HTTP."""
    import socket
    import time
    import urllib.request

    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is missing (.ci/setup.d/30-emr.sh installs it)")
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_make_push_prints_the_digest_to_pin(local_registry, tmp_path):
    """Finding 7: a tag can move; `make push` prints repo@sha256:... and the profile takes it."""
    name, tag = f"{IMAGE}-push-test", "emr"
    empty = tmp_path / "empty.tar"
    subprocess.run(["tar", "cf", str(empty), "--files-from", "/dev/null"], check=True)
    subprocess.run(["docker", "import", str(empty), f"{name}:{tag}"], check=True, capture_output=True)
    try:
        out = make("push", f"IMAGE={name}", f"TAG={tag}", f"REGISTRY={local_registry}").stdout
        pinned = [line.split("image: ", 1)[1] for line in out.splitlines() if "pin it in the EMR profile" in line]
        assert len(pinned) == 1
        digests = json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .RepoDigests}}",
                                             f"{local_registry}/{name}:{tag}"],
                                            capture_output=True, text=True, check=True).stdout)
        assert pinned == [d for d in digests if d.startswith(f"{local_registry}/{name}@sha256:")]
        from fruitlens.emr.profile import EmrProfile

        assert EmrProfile(image=pinned[0]).image == pinned[0]
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{name}:{tag}", f"{local_registry}/{name}:{tag}"], capture_output=True)


def test_the_submitted_request_runs_the_job_in_the_emr_image(emr_image, tmp_path, capsys):
    """What EMR's job runner does with our request, played locally: spark-submit of the request's entry
    point with its spark-defaults and arguments, in the emr image, as hadoop, with tmpfs over EMR's mounted
    folders and no network. Local folders stand in for the S3 URIs (EMR's S3 connector is not here)."""
    from fruitlens.cli import main

    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruits-360-sample" / "Test"
    data = tmp_path / "in" / "Test"
    for label in ("Plum 5", "apple_golden_1"):
        (data / label).mkdir(parents=True)
        for image in sorted((sample / label).glob("*.jpg"))[:12]:
            shutil.copyfile(image, data / label / image.name)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)

    assert main(["emr", "submit", "s3://b/in", "s3://b/out", "--dry-run", "--virtual-cluster-id", "abc",
                 "--execution-role-arn", "arn:aws:iam::123456789012:role/r", "--pca-k", "4",
                 "--image", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens@sha256:" + "0" * 64]) == 0
    request = json.loads(capsys.readouterr().out)
    driver = request["jobDriver"]["sparkSubmitJobDriver"]
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    args = [{"s3://b/in": "/data/in", "s3://b/out": "/data/out/run"}.get(a, a) for a in driver["entryPointArguments"]]
    conf = [x for key, value in props.items() for x in ("--conf", f"{key}={value}")]
    mounts = [x for path in ("/tmp", "/home/hadoop", "/mnt", "/var/log/spark/user", "/var/log/spark/apps",
                             "/var/log/fluentd") for x in ("--tmpfs", f"{path}:rw,exec,mode=1777")]
    done = subprocess.run(["docker", "run", "--rm", *NO_NET, *mounts, "-v", f"{data.parent}:/data/in:ro",
                           "-v", f"{out}:/data/out", emr_image, "spark-submit", "--master", "local[2]", *conf,
                           driver["entryPoint"], *args], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["counts"] | {"matched": 24, "features": 24, "errors": 0, "new": 24} == manifest["counts"]
    assert manifest["pca"]["k"] == 4
