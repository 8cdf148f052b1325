"""Derive requirements/runtime.lock from requirements.lock: the pins fruitlens[tf] needs at run time.

The closure of fruitlens' own dependencies (plus the ``tf`` extra: the image exports the ONNX model
at build time and can run the Keras engine) is taken from the installed distributions' metadata;
every version comes from requirements.lock, so the two files can never disagree (tests check it).
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
#: Packaging tools `pip freeze` omits; pinned at the versions installed beside requirements.lock.
BOOTSTRAP = {"setuptools", "wheel"}
HEADER = ("# Runtime pins of the container images: fruitlens + its [tf] extra, versions from requirements.lock.\n"
          "# Regenerate: make runtime-lock (docker/runtime_lock.py). Python 3.11, linux x86_64.\n")


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


def render() -> str:
    locked = pins(LOCK)
    names = closure([Requirement("fruitlens[tf]")])
    for name in BOOTSTRAP & names:  # `pip freeze` leaves these out of requirements.lock: use the venv's
        locked.setdefault(name, f"{name}=={metadata.version(name)}")
    missing = sorted(n for n in names if n not in locked)
    if missing:
        sys.exit(f"runtime_lock: not pinned in {LOCK.name}: {missing}")
    return HEADER + "".join(f"{locked[n]}\n" for n in sorted(names))


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if RUNTIME.is_file() and RUNTIME.read_text() == text else f"{RUNTIME} is stale: make runtime-lock")
    RUNTIME.write_text(text)
    print(f"wrote {RUNTIME} ({text.count(chr(10)) - 2} pins)")
