"""Shared fixtures: the read-only assets in ../shared, the Keras weights cache, small real inputs."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITLENS_SHARED", REPO.parent / "shared"))
SAMPLE = SHARED / "data" / "fruits-360-sample"
ORIGINAL = SHARED / "data" / "fruits-360-original-size"
WEIGHTS = SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def pytest_collection_modifyitems(items):
    if not SAMPLE.is_dir():  # the assets are part of the test environment: fail loudly, never skip
        raise pytest.UsageError(f"test assets not found at {SHARED}; set FRUITLENS_SHARED")


@pytest.fixture(scope="session", autouse=True)
def keras_cache(tmp_path_factory) -> Path:
    """Make `weights="imagenet"` resolve offline: the real weights in a Keras cache, as on a laptop."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    if not (home / "models" / WEIGHTS.name).is_file():
        home = tmp_path_factory.mktemp("keras_home")
        (home / "models").mkdir()
        (home / "models" / WEIGHTS.name).symlink_to(WEIGHTS)
        os.environ["KERAS_HOME"] = str(home)
    return home


def real_images(split: str = "Test", per_class: int = 5, classes: int | None = None) -> list[Path]:
    """The first `per_class` photos (sorted) of each class of the shared sample."""
    out = []
    for cls in sorted(p for p in (SAMPLE / split).iterdir() if p.is_dir())[:classes]:
        out += sorted(cls.glob("*.jpg"))[:per_class]
    return out


def image_bytes(mode: str, fmt: str, size=(60, 40)) -> bytes:
    """A real photo converted to `mode` and saved as `fmt` (for CMYK, greyscale, RGBA, palette cases)."""
    with Image.open(real_images(per_class=1, classes=1)[0]) as src:
        img = src.convert("RGB").resize(size)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.linear_gradient("L").resize(size))
    elif mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE)
    else:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    data = real_images(per_class=1, classes=1)[0].read_bytes()
    return data[: len(data) // 2]


@pytest.fixture(scope="session")
def mixed_input(tmp_path_factory) -> dict:
    """A Fruits-360-like tree: 3 real classes (one with a space and non-ASCII name) + bad and odd files."""
    root = tmp_path_factory.mktemp("input") / "fruits 360 ü"
    good: dict[str, Path] = {}
    names = {"Cherry 3": "Cherry 3", "Orange 2": "Orange ü 2", "Papaya 2": "Papaya 2"}
    for split, per_class in (("Training", 6), ("Test", 4)):
        for src_name, dst_name in names.items():
            dst = root / split / dst_name
            dst.mkdir(parents=True)
            for src in sorted((SAMPLE / split / src_name).glob("*.jpg"))[:per_class]:
                target = dst / src.name
                shutil.copyfile(src, target)
                good[str(target)] = target
    odd = root / "Test" / "Odd cases"
    odd.mkdir()
    cases = {
        "cmyk.jpg": image_bytes("CMYK", "JPEG"),
        "grey.png": image_bytes("L", "PNG"),
        "rgba.PNG": image_bytes("RGBA", "PNG"),
        "palette.png": image_bytes("P", "PNG"),
        "upper case.JPEG": image_bytes("RGB", "JPEG"),
    }
    for name, data in cases.items():
        (odd / name).write_bytes(data)
        good[str(odd / name)] = odd / name
    bad = {
        "truncated.jpg": (truncated_jpeg(), "cannot decode"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"this is not an image\n", "not an image"),
    }
    bad_paths = {}
    for name, (data, reason) in bad.items():
        (odd / name).write_bytes(data)
        bad_paths[str(odd / name)] = reason
    (odd / "notes.txt").write_text("ignored: not an image extension\n")
    (root / "README.md").write_text("ignored\n")
    return {"root": root, "good": good, "bad": bad_paths}


def uri_to_path(uri: str) -> str:
    """A row's ``path`` (``file:/a b/x.jpg``) as the local path it names, literally."""
    from fruitlens.storage.uris import local_path

    return local_path(uri)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


SERVE_IMAGE = "fruitlens:serve-test"


@pytest.fixture(scope="session")
def serve_image() -> str:
    """The serving image, built by `make build-serve` once per session (CI: a fresh machine builds it here);
    $SERVE_TEST_IMAGE: one already built, used as it is."""
    if os.environ.get("SERVE_TEST_IMAGE"):
        return os.environ["SERVE_TEST_IMAGE"]
    import re
    import subprocess

    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide a Docker engine")
        pytest.skip("no Docker engine")
    done = subprocess.run(["make", "--no-print-directory", "build-serve", f"SERVE_IMAGE={SERVE_IMAGE}"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    size = re.search(r"build-serve: \S+ on \S+, size (\d+) bytes", done.stdout)
    assert size, done.stdout
    print(f"serving image size: {int(size.group(1)) / 2**20:.0f} MiB")
    return SERVE_IMAGE
