"""Make a larger photo set from a real one: distinct JPEGs by deterministic flips, rotations, crops and
colour shifts, with the same ``<split>/<class>/`` folders (so labels and splits stay meaningful).

Variant 0 of each photo is the photo itself (its bytes, unchanged); variant v ≥ 1 is a transform drawn
from a generator seeded with (v, the photo's relative path), so a re-run makes the same bytes. The full
set (``--copies``, default 14: the 6,537-photo sample becomes 91,518, the size of the whole Fruits-360)
is made once under ``DST/x<copies>``; smaller levels (``--levels 1 3``) are hard-link trees of its first
variants, so ``x3`` holds the 19,611 photos ``x1`` ⊂ ``x3`` ⊂ ``x14`` and costs no extra disk.

usage: make_scale_set.py SRC DST [--copies 14] [--levels 1 3] [--workers N]
Prints one ``level_<copies>: <path> <images>`` line per level.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

EXTENSIONS = (".jpg", ".jpeg", ".png")
MARKER = ".scale-set.json"


def variant(content: bytes, seed: str) -> bytes:
    """One deterministic augmentation of a photo, as JPEG bytes of the photo's own size."""
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    with Image.open(io.BytesIO(content)) as img:
        img = img.convert("RGB")
        w, h = img.size
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        if rng.random() < 0.3:
            img = ImageOps.flip(img)
        # Rotation: a quarter turn or a small angle, the corners filled white like Fruits-360's background.
        angle = rng.choice((0, 90, 180, 270)) + rng.uniform(-12, 12)
        img = img.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255))
        # Crop 80-100 % of each side at a random place, back to the original size.
        cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        # Colour: brightness, contrast, saturation, and a small per-channel shift.
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(rng.uniform(0.8, 1.2))
        shift = [rng.randint(-12, 12) for _ in range(3)]
        img = Image.merge("RGB", [band.point(lambda p, s=s: max(0, min(255, p + s)))
                                  for band, s in zip(img.split(), shift, strict=True)])
        out = io.BytesIO()
        img.save(out, "JPEG", quality=rng.randint(88, 96))
        return out.getvalue()


def _make(job: tuple[str, str, int]) -> int:
    src, dst, copies = job
    content = Path(src).read_bytes()
    rel = Path(dst).name
    made = 0
    for v in range(copies):
        target = Path(f"{dst}_v{v:02d}.jpg")
        if target.exists():
            continue
        data = content if v == 0 else variant(content, f"{v}/{rel}")
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # a killed run leaves no half-written photo
        made += 1
    return made


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(EXTENSIONS)
                  and not p.name.startswith("."))


def make_full(src: Path, dst: Path, copies: int, workers: int) -> Path:
    full = dst / f"x{copies}"
    photos = sources(src)
    if not photos:
        raise SystemExit(f"make_scale_set: no photos under {src}")
    marker = full / MARKER
    settings = {"source": str(src.resolve()), "photos": len(photos), "copies": copies}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return full
    jobs = []
    for photo in photos:
        rel = photo.relative_to(src)
        out = full / rel.parent / rel.stem
        out.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(photo), str(out), copies))
    with ProcessPoolExecutor(workers) as pool:
        made = sum(pool.map(_make, jobs, chunksize=64))
    marker.write_text(json.dumps(settings))
    print(f"made {made} photos in {full}", file=sys.stderr)
    return full


def make_level(full: Path, dst: Path, copies: int) -> Path:
    """Hard links to the first ``copies`` variants of every photo (a real folder tree, no extra disk)."""
    level = dst / f"x{copies}"
    if level == full:
        return level
    for photo in full.rglob("*_v[0-9][0-9].jpg"):
        if int(photo.stem.rsplit("_v", 1)[1]) >= copies:
            continue
        target = level / photo.relative_to(full)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(photo, target)
    return level


def count(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.jpg"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="a real photo set, e.g. ../shared/data/fruits-360-sample")
    p.add_argument("dst", type=Path, help="where the levels go (DST/x1, DST/x3, DST/x14)")
    p.add_argument("--copies", type=int, default=14, help="variants per photo in the full set (default 14)")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 3], help="smaller levels, in variants per photo")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.copies < 1 or any(not 1 <= n <= args.copies for n in args.levels):
        raise SystemExit("make_scale_set: --copies ≥ 1 and each level between 1 and --copies")
    full = make_full(args.src, args.dst, args.copies, args.workers)
    for copies in sorted({*args.levels, args.copies}):
        level = make_level(full, args.dst, copies)
        print(f"level_{copies}: {level} {count(level)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
