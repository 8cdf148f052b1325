"""The emr flavour against the EMR on EKS image contract, built and run for real (Docker, no network), on
a base of each Spark line fruitlens supports: emr-spark-8.0.0 (Spark 4.0, the default) and emr-7.x (3.5).

Where public.ecr.aws cannot be reached, `make build FLAVOUR=emr EMR_BASE=...` builds on the local stand-in
of that line (docker/base-emr-local.sh): user hadoop, /home/hadoop, /usr/bin/entrypoint.sh, /usr/lib/spark,
/etc/alternatives/jre, and the release's Spark, Scala and system python3 (emr-spark-8.0.0: Spark 4.0.2,
Scala 2.13, python3 3.11; emr-7.5.0: Spark 3.5.2, Scala 2.12, python3 3.9), which the base's spark-defaults
point Spark at. docker/validate_image.py checks an image the way AWS' custom-image validation tool does,
plus the job's Python and the image's Spark against the release. Needs a Docker engine: skipped without
one, except in CI (CI=true), where that fails.
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

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("FRUITLENS_TEST_IMAGE", "fruitlens")  # the same image tests/deploy/test_docker.py builds
VALIDATE = [sys.executable, str(REPO / "docker" / "validate_image.py")]
NO_NET = ["--network", "none", "--hostname", "fruitlens", "--add-host", "fruitlens:127.0.0.1"]
#: Each line's real base and release, and what its stand-in must match (the EMR release guide's versions).
LINES = {
    "emr-spark-8": {"base": "public.ecr.aws/emr-on-eks/spark/emr-spark-8.0.0:latest", "tag": "emr",
                    "release": "emr-spark-8.0.0-latest", "spark": "4.0.2", "scala": "2.13", "python3": "3.11",
                    "other_release": "emr-7.5.0-latest"},
    "emr-7": {"base": "public.ecr.aws/emr-on-eks/spark/emr-7.5.0:latest", "tag": "emr-7",
              "release": "emr-7.5.0-latest", "spark": "3.5.2", "scala": "2.12", "python3": "3.9",
              "other_release": "emr-spark-8.0.0-latest"},
}


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


def make(*args: str, timeout: int = 2400, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"make {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module", params=list(LINES))
def emr_line(request, docker_engine) -> dict:
    """The emr image built on the line's base (its stand-in here), once per line."""
    line = LINES[request.param]
    make("build", "FLAVOUR=emr", f"IMAGE={IMAGE}", f"TAG={line['tag']}", f"EMR_BASE={line['base']}")
    return {**line, "name": request.param, "image": f"{IMAGE}:{line['tag']}"}


@pytest.fixture(scope="module")
def emr_image(emr_line) -> str:
    return emr_line["image"]


def labels(image: str) -> dict:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VALIDATE, *args], capture_output=True, text=True, timeout=900)


def test_the_emr_flavour_passes_the_image_contract_validation(emr_line):
    """Finding 11: user, working dir, entry point, SPARK_HOME, JAVA_HOME, launchers, a local Spark job whose
    driver and Python worker import fruitlens, with EMR's run-time mounts (tmpfs) over /tmp, /home/hadoop...;
    and the image's Spark (its label, its jars) of the profile's release's line."""
    done = make("validate-image", f"IMAGE={IMAGE}", f"TAG={emr_line['tag']}",
                env={"FRUITLENS_EMR_RELEASE_LABEL": emr_line["release"], "FRUITLENS_EMR_PROFILE": ""})
    out = done.stdout
    assert "against the emr contract" in out and "validate-image: all checks passed" in out
    spark, release = emr_line["spark"], emr_line["release"]
    for check in ("user is hadoop:hadoop", "working directory is /home/hadoop", "entrypoint is /usr/bin/entrypoint.sh",
                  "SPARK_HOME=/usr/lib/spark", "JAVA_HOME=/etc/alternatives/jre",
                  "a local Spark job: driver and Python worker import fruitlens",
                  f"label fruitlens.spark.version names the image's Spark ({spark})",
                  f"Spark {spark} is release {release}'s line (Spark {spark[:3]})"):
        assert f"PASS  {check}" in out, out
    assert labels(emr_line["image"])["fruitlens.spark.version"] == spark
    base = labels(emr_line["image"])["fruitlens.base"]
    if base != emr_line["base"]:  # built on the stand-in: the line's Spark, Scala and Python, the EMR contract
        assert f"INFO  Spark {spark}, Scala {emr_line['scala']} (from $SPARK_HOME/jars)" in out
        python3 = subprocess.run(["docker", "run", "--rm", *NO_NET, "--entrypoint", "/usr/bin/python3", base, "-c",
                                  "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=120).stdout.strip()
        assert python3 == emr_line["python3"]
        assert validate(base, "--contract", "emr", "--no-app", "--release", release).returncode == 0
        if python3 == "3.9":
            assert "PASS  job.py on the base's /usr/bin/python3 (3.9" in out


def test_validation_refuses_an_image_of_another_line_than_the_release(emr_line):
    """`make validate-image` with the other line's release (the profile's release_label) fails, naming both."""
    done = validate(emr_line["image"], "--no-app", "--release", emr_line["other_release"])
    assert done.returncode == 1
    assert f"FAIL  Spark {emr_line['spark']} is release {emr_line['other_release']}'s line" in done.stdout


def test_the_validation_fails_an_image_that_breaks_the_contract(emr_line):
    """The check can fail: the Debian base the stand-in is made from is not an EMR base."""
    done = validate(f"fruitlens-spark-base:local-spark{emr_line['spark']}", "--contract", "emr", "--no-app")
    if "not found" in done.stderr:
        pytest.skip(f"fruitlens-spark-base:local-spark{emr_line['spark']} is not built here")
    assert done.returncode == 1
    for check in ("user is hadoop:hadoop", "entrypoint is /usr/bin/entrypoint.sh", "SPARK_HOME=/usr/lib/spark"):
        assert f"FAIL  {check}" in done.stdout


def test_the_interpreter_comes_from_the_request_not_the_bases_defaults(emr_line):
    """Finding 10: the stand-in's spark-defaults name /usr/bin/python3 (3.9 on emr-7, 3.11 without fruitlens on
    emr-spark-8) like an EMR base may; without spark.pyspark.python the job stops with a clear message, with
    it (what `emr submit` sends) it runs."""
    emr_image = emr_line["image"]

    def spark_submit(*conf: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "run", "--rm", *NO_NET, emr_image, "spark-submit", "--master", "local[1]",
                               *conf, "local:///opt/fruitlens/job.py", "--version"],
                              capture_output=True, text=True, timeout=600)

    bare = spark_submit()
    if labels(emr_image)["fruitlens.base"].startswith("public.ecr.aws/"):
        pytest.skip("built on the real EMR base: its defaults are its own")
    said = bare.stdout + bare.stderr  # spark-submit passes the Python process' stderr on to its stdout
    assert bare.returncode != 0
    assert f"job.py runs on /usr/bin/python3 (Python {emr_line['python3']}" in said
    assert ("but fruitlens needs Python >= 3.10" if emr_line["python3"] == "3.9"
            else "where fruitlens cannot be imported") in said
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
    subprocess.run(["docker", "import", "-c", "LABEL fruitlens.spark.version=4.0.2", str(empty), f"{name}:{tag}"],
                   check=True, capture_output=True)
    try:
        out = make("push", f"IMAGE={name}", f"TAG={tag}", f"REGISTRY={local_registry}").stdout
        pinned = [line.split("image: ", 1)[1] for line in out.splitlines() if "pin it in the EMR profile" in line]
        assert len(pinned) == 1
        spark = [line.split("image_spark: ", 1)[1] for line in out.splitlines() if "image_spark: " in line]
        assert spark == ["4.0.2"]  # what `emr submit` checks against the release (profile image_spark)
        digests = json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .RepoDigests}}",
                                             f"{local_registry}/{name}:{tag}"],
                                            capture_output=True, text=True, check=True).stdout)
        assert pinned == [d for d in digests if d.startswith(f"{local_registry}/{name}@sha256:")]
        from fruitlens.deploy.emr.profile import EmrProfile

        assert EmrProfile(image=pinned[0], image_spark=spark[0]).image == pinned[0]
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{name}:{tag}", f"{local_registry}/{name}:{tag}"], capture_output=True)


def test_the_submitted_request_runs_the_job_in_the_emr_image(emr_line, tmp_path, capsys):
    """What EMR's job runner does with our request, played locally: spark-submit of the request's entry
    point with its spark-defaults and arguments, in the emr image, as hadoop, with tmpfs over EMR's mounted
    folders and no network; `run --train --report`, whose PCA save failed on Spark 3.5. Local folders stand
    in for the S3 URIs (EMR's S3 connector is not here). The request names the image as pushed: `emr submit`
    reads its Spark from the local image's label, and refuses the other line's release naming both."""
    from fruitlens.cli import main

    emr_image = emr_line["image"]
    pushed = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/fruitlens:{emr_line['tag']}-line-test"
    subprocess.run(["docker", "tag", emr_image, pushed], check=True, capture_output=True)

    sample = Path(__file__).resolve().parents[3] / "shared" / "data" / "fruits-360-sample"
    data = tmp_path / "in"
    for split in ("Training", "Test"):
        for label in ("Plum 5", "apple_golden_1"):
            (data / split / label).mkdir(parents=True)
            for image in sorted((sample / split / label).glob("*.jpg"))[:6]:
                shutil.copyfile(image, data / split / label / image.name)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)

    submit = ["emr", "submit", "s3://b/in", "s3://b/out", "--dry-run", "--virtual-cluster-id", "abc",
              "--execution-role-arn", "arn:aws:iam::123456789012:role/r", "--pca-k", "4", "--train", "--report",
              "--image", pushed]
    try:
        assert main([*submit, "--release-label", emr_line["other_release"]]) == 2
        err = capsys.readouterr().err
        assert f"but the image {pushed} was built on Spark {emr_line['spark']}" in err
        assert main([*submit, "--release-label", emr_line["release"]]) == 0
    finally:
        subprocess.run(["docker", "rmi", pushed], capture_output=True)
    request = json.loads(capsys.readouterr().out)
    driver = request["jobDriver"]["sparkSubmitJobDriver"]
    props = request["configurationOverrides"]["applicationConfiguration"][0]["properties"]
    args = [{"s3://b/in": "/data/in", "s3://b/out": "/data/out/run"}.get(a, a) for a in driver["entryPointArguments"]]
    conf = [x for key, value in props.items() for x in ("--conf", f"{key}={value}")]
    mounts = [x for path in ("/tmp", "/home/hadoop", "/mnt", "/var/log/spark/user", "/var/log/spark/apps",
                             "/var/log/fluentd") for x in ("--tmpfs", f"{path}:rw,exec,mode=1777")]
    done = subprocess.run(["docker", "run", "--rm", *NO_NET, *mounts, "-v", f"{data}:/data/in:ro",
                           "-v", f"{out}:/data/out", emr_image, "spark-submit", "--master", "local[2]", *conf,
                           driver["entryPoint"], *args], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["counts"] | {"matched": 24, "features": 24, "errors": 0, "new": 24} == manifest["counts"]
    assert manifest["pca"]["k"] == 4 and manifest["classifier"]["test_rows"] == 12
    assert manifest["versions"]["pyspark"] == emr_line["spark"]  # the job ran on the line's Spark
    assert (out / "run" / "report" / "index.html").is_file()
