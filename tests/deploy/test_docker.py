"""The container images, built and run for real (`make build`, `make docker-run`), with no network.

Needs a Docker engine: skipped with the reason when none answers, except in CI (CI=true), where a
missing engine is a failure. The image is built once per session by `make build` (on the local base
when the real Spark bases cannot be pulled), then run on two classes of the shared Fruits-360 sample.
The slim variant (no TensorFlow) is built beside the oss image and checked against it; a code-only
change is rebuilt from a copy of the sources to check how little it adds (docker/layer_sizes.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared"
SAMPLE = SHARED / "data" / "fruits-360-sample" / "Test"
CLASSES = ("apple_golden_1", "Plum 5")  # one with a space in its folder name
WEIGHTS = SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGE = os.environ.get("FRUITLENS_TEST_IMAGE", "fruitlens")
NO_NET = ["--network", "none", "--hostname", "fruitlens", "--add-host", "fruitlens:127.0.0.1"]


def _engine_answers() -> str | None:
    if not shutil.which("docker"):
        return "no docker client on PATH"
    try:
        done = subprocess.run(["docker", "info", "-f", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if done.returncode == 0 else f"no Docker engine answers: {done.stderr.strip()[:300]}"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    reason = _engine_answers()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide a Docker engine (.ci/setup.d/20-docker.sh): {reason}")
    pytest.skip(reason)


def make(*args: str, timeout: int = 2400) -> subprocess.CompletedProcess:
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(done.stdout[-2000:])
    return done


def build(flavour: str, variant: str = "full") -> str:
    tag = flavour if variant == "full" else f"{flavour}-{variant}"
    out = make("build", f"FLAVOUR={flavour}", f"VARIANT={variant}", f"IMAGE={IMAGE}", f"TAG={tag}")
    assert f"build: {IMAGE}:{tag}" in out.stdout and "size" in out.stdout  # time and size are reported
    return f"{IMAGE}:{tag}"


def docker(*args: str, timeout: int = 900) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="session")
def oss_image(docker_engine) -> str:
    return build("oss")


@pytest.fixture(scope="session")
def emr_image(docker_engine) -> str:
    return build("emr")


@pytest.fixture(scope="session")
def slim_image(oss_image) -> str:
    return build("oss", "slim")  # after the oss image: it shares its build stages (venv, ONNX export)


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory) -> Path:
    """Two classes of the shared sample, copied (a bind mount cannot follow symlinks out of it)."""
    if not SAMPLE.is_dir():
        pytest.fail(f"the shared sample {SAMPLE} is missing (../shared beside the repository)")
    root = tmp_path_factory.mktemp("docker-input") / "Test"
    for name in CLASSES:
        shutil.copytree(SAMPLE / name, root / name)
    return root


def n_images(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.fixture(scope="session")
def container_run(oss_image, sample_input, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docker-output") / "out"
    make("docker-run", f"IMAGE={IMAGE}", "TAG=oss", f"INPUT={sample_input}", f"OUTPUT={out}",
         "ARGS=--pca-k 8")
    return out


def rel_key(path: str, root_name: str = "Test") -> str:
    """`.../Test/Plum 5/r_1_100.jpg` -> `Plum 5/r_1_100.jpg`: class folder + file name, host or container."""
    parts = path.replace("%20", " ").split("/")
    return "/".join(parts[-2:])


def read_features(out: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(out / "features")
    return {rel_key(p): np.asarray(f, dtype=np.float32)
            for p, f in zip(table.column("path").to_pylist(), table.column("features").to_pylist())}


def test_container_outputs_are_complete(container_run: Path, sample_input: Path) -> None:
    expected = n_images(sample_input)
    manifest = json.loads((container_run / "manifest.json").read_text())
    assert {k: manifest["counts"][k] for k in ("matched", "features", "errors", "new")} == {
        "matched": expected, "features": expected, "errors": 0, "new": expected}
    assert manifest["engine"]["name"] == "onnx"
    assert manifest["pca"]["k"] == 8
    assert manifest["images_per_second"]["extract"] > 0
    assert manifest["spark"]["master"].startswith("local")

    features = pq.read_table(container_run / "features")
    assert features.num_rows == expected
    assert str(features.schema.field("features").type) == "list<element: float>"
    lengths = {len(f) for f in features.column("features").to_pylist()}
    assert lengths == {1280}
    assert set(features.column("label").to_pylist()) == set(CLASSES)
    assert pq.read_table(container_run / "pca").num_rows == expected
    assert (container_run / "pca_model").is_dir()


def test_container_runs_as_non_root(oss_image: str, emr_image: str, container_run: Path) -> None:
    assert docker("run", "--rm", *NO_NET, oss_image, "id", "-u").strip() == "185"
    assert docker("run", "--rm", *NO_NET, emr_image, "id", "-un").strip() == "hadoop"
    assert docker("run", "--rm", *NO_NET, emr_image, "id", "-u").strip() != "0"
    owners = {p.stat().st_uid for p in [container_run / "manifest.json", *(container_run / "features").iterdir()]}
    assert 0 not in owners and owners == {185}, owners


@pytest.mark.parametrize("flavour", ["oss", "emr"])
def test_baked_model_loads_without_network(flavour: str, request) -> None:
    image = request.getfixturevalue(f"{flavour}_image")
    script = (
        "import json, os, time; from fruitlens.engines import prepare_model, load_engine; "
        "from fruitlens.engines.model import resolve_weights, sha256_file;"
        "t = time.time(); a = prepare_model('onnx', 'imagenet'); took = time.time() - t;"
        "import numpy as np; e = load_engine('onnx', a.path);"
        "y = e.predict(np.zeros((2, 224, 224, 3), np.float32));"
        "print(json.dumps({'path': a.path, 'weights': str(resolve_weights('imagenet')), 'sha': a.sha256,"
        " 'took': took, 'shape': list(y.shape), 'keras_home': os.environ['KERAS_HOME'],"
        " 'writable': os.access(os.path.dirname(a.path), os.W_OK)}))"
    )
    info = json.loads(docker("run", "--rm", *NO_NET, image, "python", "-c", script).strip().splitlines()[-1])
    assert info["path"].startswith("/opt/fruitlens/cache/") and info["path"].endswith(".onnx")
    assert info["weights"].startswith(info["keras_home"] + "/models/")
    assert info["took"] < 5, "the ONNX export must be baked in, not redone at run time"
    assert info["shape"] == [2, 1280]
    assert not info["writable"], "the baked model must not be writable by the job's user"
    if WEIGHTS.is_file():
        from fruitlens.engines.model import sha256_file

        assert info["sha"] == sha256_file(WEIGHTS)


@pytest.mark.parametrize("flavour", ["oss", "emr"])
def test_job_script_is_the_cli(flavour: str, request) -> None:
    """local:///opt/fruitlens/job.py (EMR entryPoint, the chart's mainApplicationFile) is `fruitlens`."""
    image = request.getfixturevalue(f"{flavour}_image")
    out = docker("run", "--rm", *NO_NET, image, "python", "/opt/fruitlens/job.py", "--version")
    assert out.strip().startswith("fruitlens ")


def test_keras_engine_loads_without_network(oss_image: str) -> None:
    script = ("from fruitlens.engines.model import resolve_weights, build_keras_model;"
              "m = build_keras_model(resolve_weights('imagenet')); print(m.output_shape)")
    assert docker("run", "--rm", *NO_NET, oss_image, "python", "-c", script).strip().endswith("(None, 1280)")


def test_container_features_match_host(container_run: Path, sample_input: Path, tmp_path: Path) -> None:
    host_out = tmp_path / "host"
    fruitlens = Path(sys.executable).with_name("fruitlens")
    done = subprocess.run([str(fruitlens), "run", str(sample_input), str(host_out), "--no-progress", "--pca-k", "8"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    host, container = read_features(host_out), read_features(container_run)
    assert len(host) == n_images(sample_input)
    assert host.keys() == container.keys()
    worst = max(float(np.max(np.abs(host[k] - container[k]))) for k in host)
    assert worst <= 1e-4, f"container features differ from the host's by up to {worst}"


# ---- the slim variant: no TensorFlow, the same ONNX export, the same features ----

SLIM_PER_CLASS = 50


@pytest.fixture(scope="session")
def slim_run(slim_image, sample_input, tmp_path_factory) -> Path:
    """`fruitlens run --train --report` in the slim image on 50 photos of each class, no network."""
    subset = tmp_path_factory.mktemp("slim-input") / "Test"
    for name in CLASSES:
        (subset / name).mkdir(parents=True)
        for photo in sorted((sample_input / name).iterdir())[:SLIM_PER_CLASS]:
            shutil.copy(photo, subset / name / photo.name)
    out = tmp_path_factory.mktemp("slim-output") / "out"
    make("docker-run", f"IMAGE={IMAGE}", "TAG=oss-slim", f"INPUT={subset}", f"OUTPUT={out}",
         "ARGS=--pca-k 8 --train --report")
    return out


def test_slim_image_has_no_tensorflow_and_is_smaller(slim_image: str, oss_image: str) -> None:
    script = ("import importlib.util as u, os;"
              "print([m for m in ('tensorflow', 'keras', 'tf2onnx', 'tensorboard', 'h5py') if u.find_spec(m)],"
              " os.environ['FRUITLENS_IMAGE_VARIANT'])")
    assert docker("run", "--rm", *NO_NET, slim_image, "python", "-c", script).strip() == "[] slim"
    sizes = {image: int(docker("image", "inspect", "-f", "{{.Size}}", image)) for image in (slim_image, oss_image)}
    assert sizes[oss_image] - sizes[slim_image] > 1.0e9, sizes  # TensorFlow is ~1.3 GB of the full image


def test_slim_run_trains_reports_and_matches_the_full_image(slim_run: Path, container_run: Path) -> None:
    manifest = json.loads((slim_run / "manifest.json").read_text())
    expected = SLIM_PER_CLASS * len(CLASSES)
    assert manifest["counts"]["features"] == expected and manifest["counts"]["errors"] == 0
    assert manifest["engine"]["name"] == "onnx"
    assert (slim_run / "report" / "index.html").is_file()
    slim, full = read_features(slim_run), read_features(container_run)
    assert len(slim) == expected and slim.keys() <= full.keys()
    worst = max(float(np.max(np.abs(slim[k] - full[k]))) for k in slim)
    assert worst <= 1e-4, f"the slim image's features differ from the full image's by up to {worst}"


def test_slim_image_predicts_and_exports_with_its_trained_model(slim_image: str, slim_run: Path, sample_input: Path,
                                                                  tmp_path: Path) -> None:
    photo = sorted((sample_input / CLASSES[1]).iterdir())[-1]  # not one of the photos it was trained on
    out = docker("run", "--rm", *NO_NET, "-v", f"{slim_run}:/data/output:ro", "-v", f"{photo}:/data/photo.jpg:ro",
                 slim_image, "fruitlens", "predict", "/data/output", "/data/photo.jpg", "--json")
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["path"].endswith("photo.jpg") and answer["label"] == CLASSES[1], answer
    exported = tmp_path / "export"
    exported.mkdir()
    exported.chmod(0o777)  # written by the image's uid 185
    out = docker("run", "--rm", *NO_NET, "-v", f"{slim_run}:/data/output:ro", "-v", f"{exported}:/export",
                 slim_image, "fruitlens", "export", "/data/output", "/export/model.onnx")
    assert json.loads(out.strip().splitlines()[-1])["classes"] == len(CLASSES)
    assert (exported / "model.onnx").stat().st_size > 8_000_000  # MobileNetV2 + PCA + classifier in one graph


def test_slim_image_refuses_the_keras_engine_clearly(slim_image: str, sample_input: Path, tmp_path: Path) -> None:
    done = subprocess.run(["docker", "run", "--rm", *NO_NET, "-v", f"{sample_input}:/data/input:ro", slim_image,
                           "fruitlens", "run", "/data/input", "/tmp/out", "--engine", "keras", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "--engine keras needs TensorFlow, and this image has none" in done.stderr, done.stderr[-2000:]
    assert "fruitlens:oss" in done.stderr and "Traceback" not in done.stderr


# ---- layer order: a code-only change re-makes megabytes, not the venv, weights or ONNX export ----

def test_a_code_only_change_adds_about_a_megabyte_of_layers(oss_image: str, tmp_path: Path) -> None:
    """Rebuild from a copy of the sources with one changed module; compare the layers by content."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("Makefile", "mk", "docker", "requirements", "requirements.lock", "pyproject.toml", "README.md",
                 "src", ".dockerignore"):
        src = REPO / name
        (shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
         if src.is_dir() else shutil.copy2(src, copy / name))
    # The staged dependency wheels, linked (not downloaded again): docker-stage finds them in place.
    shutil.copytree(REPO / "build/docker/wheels", copy / "build/docker/wheels", copy_function=_link_or_copy)
    (copy / ".venv").symlink_to(Path(sys.executable).parents[1])
    module = copy / "src/fruitlens/state/status.py"
    module.write_text(module.read_text() + "\n# a code-only change (tests/deploy/test_docker.py)\n")
    changed = f"{IMAGE}:code-change"
    done = subprocess.run(["make", "--no-print-directory", "build", f"IMAGE={IMAGE}", "TAG=code-change",
                           f"SHARED={SHARED}"], cwd=copy, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    try:
        sys.path.insert(0, str(REPO / "docker"))
        import layer_sizes
    finally:
        sys.path.pop(0)
    try:
        out = layer_sizes.report(changed, since=oss_image)
    finally:
        subprocess.run(["docker", "rmi", changed], capture_output=True)
    new = [row["created_by"] for row in out["layers"] if row["new"]]
    assert out["new_bytes"] <= 3_000_000, (out["new_bytes"], new)
    assert not any("/opt/fruitlens/venv" in row or "/opt/fruitlens/cache" in row or "keras/models" in row
                   for row in new), new
    assert any("install-app.sh" in row for row in new), new  # the code did change


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
