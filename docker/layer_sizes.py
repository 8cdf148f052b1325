#!/usr/bin/env python3
"""Size of each layer of a built image, what made it, and the total: `make image-layers IMAGE=... TAG=...`.

  layer_sizes.py IMAGE [--since OLD_IMAGE] [--gzip] [--json FILE]

Sizes are the layers' unpacked bytes (`docker history`), what a node stores. --gzip also gzips each
layer's tar (from `docker save`, level 6 as registries' pushes do) to estimate what a node pulls.
--since OLD_IMAGE marks the layers OLD_IMAGE lacks (by content: the layer's diff ID) and sums them:
what a node that already has OLD_IMAGE pulls for this one, e.g. after a code-only change.
Standard library only: it runs with any python3 beside a Docker client.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import zlib

MB = 1_000_000


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"layer_sizes: docker {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def layers(image: str) -> list[dict]:
    """The image's filesystem layers, base first: diff ID, unpacked bytes, the instruction that made it.

    `docker history` lists every instruction, newest first; those that made a layer (a non-zero size, or
    a zero-size RUN/COPY/ADD) pair in order with the image's RootFS diff IDs."""
    diff_ids = json.loads(docker("image", "inspect", image))[0]["RootFS"]["Layers"]
    rows = [line.split("\t", 1) for line in
            docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
            .splitlines()[::-1]]
    made = [(int(size), created) for size, created in rows if _makes_layer(int(size), created)]
    if len(made) != len(diff_ids):
        sys.exit(f"layer_sizes: {image} has {len(diff_ids)} layers but {len(made)} history entries that make "
                 "one; cannot pair them")
    return [{"diff_id": d, "bytes": size, "created_by": _short(created)}
            for d, (size, created) in zip(diff_ids, made)]


def _makes_layer(size: int, created: str) -> bool:
    """Metadata instructions (ENV, LABEL, USER...) are `#(nop)` entries without a layer; COPY/ADD are
    `#(nop)` too but make one (even of 0 bytes), as does every RUN."""
    if "#(nop)" not in created:
        return True
    return created.split("#(nop)", 1)[1].split()[0] in ("COPY", "ADD")


def _short(created: str, width: int = 110) -> str:
    text = " ".join(created.split())
    if "#(nop)" in text:
        text = text.split("#(nop)", 1)[1].strip()
    elif " -c " in text:
        text = "RUN " + text.split(" -c ", 1)[1]
    return text if len(text) <= width else text[: width - 1] + "…"


def gzip_sizes(image: str) -> dict[str, int]:
    """diff ID -> bytes of that layer's tar gzipped at level 6, streaming `docker save` (no temp file)."""
    proc = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    sizes: dict[str, int] = {}
    manifest, configs, by_path = None, {}, {}
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            fh = tar.extractfile(member)
            if member.name.endswith("/layer.tar"):
                comp, total = zlib.compressobj(6, zlib.DEFLATED, 31), 0
                for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 - used at once, in this loop
                    total += len(comp.compress(chunk))
                by_path[member.name] = total + len(comp.flush())
            elif member.name == "manifest.json":
                manifest = json.load(fh)
            elif member.name.endswith(".json"):
                configs[member.name] = json.load(fh)
    proc.wait()
    if proc.returncode != 0 or manifest is None:
        sys.exit(f"layer_sizes: docker save {image} failed")
    entry = manifest[0]
    for path, diff_id in zip(entry["Layers"], configs[entry["Config"]]["rootfs"]["diff_ids"]):
        sizes[diff_id] = by_path.get(path, 0)
    return sizes


def report(image: str, since: str | None = None, gzip: bool = False) -> dict:
    rows = layers(image)
    old = {row["diff_id"] for row in layers(since)} if since else set()
    packed = gzip_sizes(image) if gzip else {}
    for row in rows:
        row["new"] = bool(since) and row["diff_id"] not in old
        if gzip:
            row["gzip_bytes"] = packed.get(row["diff_id"], 0)
    out = {"image": image, "layers": rows, "total_bytes": sum(r["bytes"] for r in rows)}
    if gzip:
        out["total_gzip_bytes"] = sum(r["gzip_bytes"] for r in rows)
    if since:
        new = [r for r in rows if r["new"]]
        out.update(since=since, new_layers=len(new), new_bytes=sum(r["bytes"] for r in new))
        if gzip:
            out["new_gzip_bytes"] = sum(r["gzip_bytes"] for r in new)
    return out


def print_report(out: dict) -> None:
    gz = "total_gzip_bytes" in out
    print(f"layers of {out['image']} (base first; MB = 10^6 bytes, unpacked{', gzip = pulled' if gz else ''}):")
    print(f"  {'#':>2}  {'MB':>9}" + (f"  {'gzip MB':>9}" if gz else "") + ("  new" if "since" in out else "")
          + "  made by")
    for i, row in enumerate(out["layers"], 1):
        print(f"  {i:>2}  {row['bytes'] / MB:>9.1f}" + (f"  {row['gzip_bytes'] / MB:>9.1f}" if gz else "")
              + (f"  {'NEW' if row['new'] else '   '}" if "since" in out else "") + f"  {row['created_by']}")
    print(f"total: {out['total_bytes'] / MB:.1f} MB in {len(out['layers'])} layers"
          + (f", {out['total_gzip_bytes'] / MB:.1f} MB gzipped" if gz else ""))
    if "since" in out:
        print(f"new since {out['since']}: {out['new_layers']} layer(s), {out['new_bytes'] / MB:.1f} MB"
              + (f" ({out['new_gzip_bytes'] / MB:.1f} MB gzipped)" if gz else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--since", metavar="OLD_IMAGE", help="mark and sum the layers OLD_IMAGE does not have")
    parser.add_argument("--gzip", action="store_true", help="also each layer's gzipped size (docker save; slow)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ns = parser.parse_args(argv)
    out = report(ns.image, ns.since, ns.gzip)
    print_report(out)
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
