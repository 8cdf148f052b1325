"""Fast checks of the container sources (no Docker needed): hadolint on every Dockerfile, shell syntax of
the build scripts, and requirements/runtime.lock agreeing with requirements.lock."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))


def hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = "hadolint not installed: pip install -r requirements/docker.txt"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_there_are_dockerfiles() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.oss", "Dockerfile.emr", "Dockerfile.base-local"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert "syntax=" not in text and "--mount" not in text, "legacy builder: no BuildKit syntax"
    if dockerfile.name == "Dockerfile.serve":  # the slim serving image: no Spark, no model baked in
        assert "ARG BASE_IMAGE=" in text.split("FROM", 1)[0]
        assert not any(env in text for env in ("KERAS_HOME=", "PYSPARK_PYTHON=", "SPARK_HOME="))
        assert text.index("dist/serve/wheels") < text.index("dist/serve/dist")
        assert users[-1] == "185:185"
    elif not dockerfile.name.startswith("Dockerfile.base-"):  # the app images, not the local stand-in bases
        assert "ARG BASE_IMAGE=" in text.split("FROM", 1)[0]
        for env in ("KERAS_HOME=", "FRUITLENS_CACHE=", "PYSPARK_PYTHON="):
            assert env in text
        # the slow dependency layer comes before the code (wheel) layer
        assert text.index("build/docker/wheels/") < text.index("build/docker/dist/")


def test_final_users() -> None:
    assert (REPO / "docker/Dockerfile.emr").read_text().rstrip().endswith("USER hadoop:hadoop")
    assert (REPO / "docker/Dockerfile.oss").read_text().rstrip().endswith("USER 185")


@pytest.mark.parametrize("script", sorted((REPO / "docker").glob("*.sh")) + [REPO / ".ci/setup.d/20-docker.sh"],
                         ids=lambda p: p.name)
def test_shell_syntax(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_runtime_lock_is_consistent() -> None:
    """Every pin of requirements/runtime.lock is requirements.lock's, and it is up to date."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime_lock", REPO / "docker/runtime_lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)

    def pins(path: Path) -> dict[str, str]:  # name -> version, with runtime_lock's own parser
        return {name: pin.split("==", 1)[1] for name, pin in lock.pins(path).items()}

    full, runtime = pins(REPO / "requirements.lock"), pins(REPO / "requirements/runtime.lock")
    assert {"tensorflow-cpu", "onnxruntime", "pyspark", "numpy", "pillow", "tf2onnx"} <= runtime.keys()
    assert not {"pytest", "moto"} & runtime.keys(), "test libraries do not belong in the image"
    # The image is the job: the extras of what it runs (s3:// OUTPUT's lock, `run --report`), not the
    # clients `fruitlens k8s` uses where the job is submitted from.
    assert {"boto3", "matplotlib"} <= runtime.keys() and "kubernetes" not in runtime.keys()
    for name, version in runtime.items():
        if name in ("setuptools", "wheel"):  # pip freeze omits them from requirements.lock
            continue
        assert full.get(name) == version, f"{name}: runtime.lock {version} != requirements.lock {full.get(name)}"
    done = subprocess.run([sys.executable, str(REPO / "docker/runtime_lock.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_slim_lock_is_the_runtime_lock_minus_tensorflow_and_what_only_it_needs() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime_lock", REPO / "docker/runtime_lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    full, slim = lock.pins(REPO / "requirements/runtime.lock"), lock.pins(REPO / "requirements/runtime-slim.lock")
    assert set(slim.items()) < set(full.items()), "every slim pin is the full lock's, at the same version"
    dropped = full.keys() - slim.keys()
    assert {"tensorflow-cpu", "keras", "tf2onnx", "h5py", "grpcio"} <= dropped
    assert {"onnxruntime", "onnx", "numpy", "pillow", "pyarrow", "pandas", "pyspark", "boto3"} <= slim.keys()
    # Exactly TensorFlow, tf2onnx and what only they need: every dropped pin is in their closure, and
    # nothing the slim roots (fruitlens' own requirements + onnx) need was dropped.
    tf_side = lock.closure([lock.Requirement("tensorflow-cpu"), lock.Requirement("tf2onnx")]) | {"tensorflow-cpu", "tf2onnx"}
    assert dropped <= tf_side, dropped - tf_side
    assert not lock.closure([lock.Requirement(r) for r in lock.ROOTS[lock.SLIM]]) & dropped


def test_tensorflow_missing_is_a_clear_error(monkeypatch) -> None:
    """--engine keras and a new ONNX export need TensorFlow: without it (the slim image) a ModelError says so."""
    import importlib.util

    from fruitlens.engines import model as engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    monkeypatch.setenv("FRUITLENS_IMAGE_VARIANT", "slim")
    with pytest.raises(engine.ModelError, match=r"--engine keras needs TensorFlow, and this image has none.*fruitlens:oss"):
        engine.require_tensorflow("--engine keras")
    monkeypatch.delenv("FRUITLENS_IMAGE_VARIANT")
    with pytest.raises(engine.ModelError, match=r"fruitlens\[tf\]"):
        engine.export_onnx("/nonexistent.h5", "/tmp/x.onnx")


def test_s3a_fetch_verifies_checksums(tmp_path: Path) -> None:
    """The s3a stage's download script checks Maven's SHA-1 and, when pinned, our SHA-256 (file:// repo)."""
    import hashlib

    if not shutil.which("curl") and not shutil.which("wget"):
        pytest.skip("neither curl nor wget")
    repo, out = tmp_path / "repo", tmp_path / "out"
    jar = repo / "org/x/1/x-1.jar"
    jar.parent.mkdir(parents=True)
    out.mkdir()
    jar.write_bytes(b"not really a jar\n")
    jar.with_name("x-1.jar.sha1").write_text(hashlib.sha1(jar.read_bytes()).hexdigest() + "\n")
    good = hashlib.sha256(jar.read_bytes()).hexdigest()

    def fetch(sha256: str) -> int:
        return subprocess.run(["bash", str(REPO / "docker/fetch-s3a.sh"), str(out), f"file://{repo}",
                               "org/x/1/x-1.jar", sha256], capture_output=True).returncode

    assert fetch("") == 0 and fetch(good) == 0
    assert fetch("0" * 64) != 0
    jar.with_name("x-1.jar.sha1").write_text("0" * 40 + "\n")
    assert fetch(good) != 0


def test_ecr_registry_parsing() -> None:
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import ecr_login
    finally:
        sys.path.pop(0)
    assert ecr_login.region_of("123456789012.dkr.ecr.eu-west-1.amazonaws.com") == "eu-west-1"
    with pytest.raises(SystemExit):
        ecr_login.region_of("ghcr.io")


def test_serve_lock_pins_are_requirements_locks() -> None:
    """The serving image's packages (requirements/serve.lock) at requirements.lock's versions, and no Spark,
    TensorFlow or cloud client among them."""
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import runtime_lock  # the images' own reader of these files
    finally:
        sys.path.pop(0)

    def pins(path: Path) -> dict[str, str]:
        return {name: pin.split("==", 1)[1] for name, pin in runtime_lock.pins(path).items()}

    full, serve = pins(REPO / "requirements.lock"), pins(REPO / "requirements/serve.lock")
    assert {"onnxruntime", "numpy", "pillow", "pyarrow", "starlette", "uvicorn", "python-multipart"} <= serve.keys()
    assert {k: v for k, v in serve.items() if full.get(k) != v} == {}
    assert not {"pyspark", "py4j", "tensorflow-cpu", "tensorflow", "boto3", "botocore"} & serve.keys()
