"""bench/make_scale_set.py: the 90k benchmark set is made of distinct, deterministic, real-looking photos."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import real_images
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "make_scale_set.py"


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_levels_hold_distinct_deterministic_photos_in_the_same_folders(tmp_path):
    src = tmp_path / "src"
    for photo in real_images("Training", per_class=2, classes=2):
        target = src / "Training" / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    originals = sorted(src.rglob("*.jpg"))

    def make(dst: Path) -> str:
        return subprocess.run([sys.executable, str(SCRIPT), str(src), str(dst), "--copies", "4", "--levels", "1", "2",
                               "--workers", "1"], capture_output=True, text=True, check=True).stdout

    out = make(tmp_path / "a")
    assert f"level_4: {tmp_path / 'a' / 'x4'} {4 * len(originals)}" in out
    assert f"level_2: {tmp_path / 'a' / 'x2'} {2 * len(originals)}" in out
    full = _digests(tmp_path / "a" / "x4")
    assert len(set(full.values())) == len(full) == 4 * len(originals)  # every photo distinct
    # Same class folders; variant 0 is the photo itself; every variant decodes at the photo's size.
    for photo in originals:
        rel = photo.relative_to(src)
        assert (tmp_path / "a" / "x1" / rel.parent / f"{rel.stem}_v00.jpg").read_bytes() == photo.read_bytes()
        for v in range(4):
            with Image.open(tmp_path / "a" / "x4" / rel.parent / f"{rel.stem}_v{v:02d}.jpg") as img:
                assert img.size == Image.open(photo).size
    # Smaller levels are subsets; a second run elsewhere makes the same bytes.
    assert _digests(tmp_path / "a" / "x2").items() <= full.items()
    make(tmp_path / "b")
    assert _digests(tmp_path / "b" / "x4") == full
