"""Derive the images' locks from requirements.lock: the pins fruitlens needs at run time.

requirements/runtime.lock (the default image): the closure of fruitlens' own dependencies plus the extras
of what the image runs: ``tf`` (the image exports the ONNX model at build time and can run the Keras
engine), ``s3`` (an s3:// OUTPUT's run lock) and ``report`` (`run --report`). Not ``emr`` nor ``k8s``:
the image is the job, `fruitlens emr` / `fruitlens k8s` run where it is submitted from.
requirements/runtime-slim.lock (the slim image, no TensorFlow): the same without ``tf``, plus ``onnx``
(`fruitlens export` builds its graph with it), so it is runtime.lock minus TensorFlow, tf2onnx and what
only they need.
Closures are taken from the installed distributions' metadata; every version comes from
requirements.lock, so the files can never disagree (tests check it).
Usage: python docker/runtime_lock.py [--check]
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK, RUNTIME = ROOT / "requirements.lock", ROOT / "requirements" / "runtime.lock"
SLIM = ROOT / "requirements" / "runtime-slim.lock"
#: What each lock is the closure of.
ROOTS = {RUNTIME: ["fruitlens[tf,s3,report]"], SLIM: ["fruitlens[s3,report]", "onnx"]}
#: Packaging tools `pip freeze` omits; pinned at the versions installed beside requirements.lock.
BOOTSTRAP = {"setuptools", "wheel"}
HEADERS = {
    RUNTIME: "# Runtime pins of the container images: fruitlens[tf,s3,report], versions from requirements.lock.\n",
    SLIM: "# Runtime pins of the slim images (no TensorFlow): fruitlens[s3,report] + onnx, versions from requirements.lock.\n",
}
REGENERATE = "# Regenerate: make runtime-lock (docker/runtime_lock.py). Python 3.11, linux x86_64.\n"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = f"{name.strip()}=={version.strip()}"
    return out


def closure(roots: list[Requirement]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if name in seen or name == "fruitlens":
            if name == "fruitlens":
                todo += [Requirement(r) for r in project_requires() if _applies(Requirement(r), req.extras)]
                seen.add(name)
            continue
        seen.add(name)
        for text in metadata.requires(req.name) or []:
            dep = Requirement(text)
            if _applies(dep, req.extras):
                todo.append(dep)
    seen.discard("fruitlens")
    return seen


def project_requires() -> list[str]:
    """fruitlens' own requirements from pyproject.toml (this tree), not from an installed copy's metadata."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + [f'{r}; extra == "{extra}"' for extra, reqs in
                                            project.get("optional-dependencies", {}).items() for r in reqs]


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in (extras or {""}))


def render(target: Path = RUNTIME) -> str:
    locked = pins(LOCK)
    names = closure([Requirement(r) for r in ROOTS[target]])
    for name in BOOTSTRAP & names:  # `pip freeze` leaves these out of requirements.lock: use the venv's
        locked.setdefault(name, f"{name}=={metadata.version(name)}")
    missing = sorted(n for n in names if n not in locked)
    if missing:
        sys.exit(f"runtime_lock: not pinned in {LOCK.name}: {missing}")
    return HEADERS[target] + REGENERATE + "".join(f"{locked[n]}\n" for n in sorted(names))


if __name__ == "__main__":
    for target in ROOTS:
        text = render(target)
        if "--check" in sys.argv:
            if not (target.is_file() and target.read_text() == text):
                sys.exit(f"{target} is stale: make runtime-lock")
            continue
        target.write_text(text)
        print(f"wrote {target} ({text.count(chr(10)) - 2} pins)")
