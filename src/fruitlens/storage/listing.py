"""INPUT's listing: every image file below the root with its version, and every one that cannot be used.

A local INPUT is walked here (``os.scandir`` on names as bytes) rather than by pyarrow's recursive
listing, so that what a file system allows never crashes the job or vanishes from it:

- a directory symlink is followed; one that leads back to a folder on its own path (a loop) is not
  followed but reported, once, as a problem naming the link;
- an image symlink that dangles or loops is reported as a problem naming it;
- a name that is not UTF-8 (Parquet, JSON and the JVM need UTF-8) is reported as a problem naming the
  path with those bytes escaped (``b'\\xff.jpg'`` → ``\\xff.jpg``): it cannot be a feature row's path;
- a folder that cannot be listed (permission) is reported as a problem naming it.

The run records each problem as an error row (:func:`fruitlens.state.ledger.listing_errors`). Names starting
with ``.`` or ``_`` are skipped (folders not entered), as Spark skips them. An S3 INPUT has none of
these cases (keys are UTF-8, there are no links): pyarrow lists it.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from fruitlens.images import is_image_path
from fruitlens.storage.store import Store, StoreError, hidden
from fruitlens.storage.uris import escape


@dataclass(frozen=True)
class Entry:
    """One listed image: its file system path (valid UTF-8), version, and why it cannot be used, if so."""

    path: str
    size: int
    mtime_ns: int
    problem: str | None = None


def list_images(store: Store) -> list[Entry]:
    """Every image file below ``store``'s root (any depth, hidden names skipped), problems included."""
    if not store.is_local:
        return [Entry(i.path, i.size, i.mtime_ns or 0) for i in store.list(recursive=True) if is_image_path(i.path)]
    return list(_walk(store.root))


def _walk(root: str):
    try:
        top = os.stat(root)
    except OSError as exc:
        raise StoreError(f"cannot list {root}: {exc.strerror}") from None
    if not stat.S_ISDIR(top.st_mode):
        raise StoreError(f"cannot list {root}: not a folder")
    # (folder, the (device, inode) and path of it and each folder above it): a loop is a folder met
    # again on its own path; a folder met twice through two different links is no loop, and is listed twice.
    stack = [(os.fsencode(root), {(top.st_dev, top.st_ino): root})]
    while stack:
        folder, above = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield _problem(folder, f"cannot list this folder: {exc.strerror}")
            continue
        for child in children:
            name = child.name
            if hidden(name.decode("utf-8", "replace")):
                continue
            if _is_dir(child):
                try:
                    st = child.stat()
                except OSError as exc:
                    yield _problem(child.path, f"cannot inspect this folder: {exc.strerror}")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in above:
                    yield _problem(child.path, f"symbolic link loop: leads back to {escape(above[key])} (which "
                                               "holds it), so it is not followed")
                else:
                    stack.append((child.path, {**above, key: _text(child.path)[0]}))
                continue
            if not is_image_path(name.decode("utf-8", "replace")):
                continue
            yield _file(child)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; False for a dangling or looping one
    except OSError:
        return False


def _file(entry: os.DirEntry) -> Entry:
    try:
        st = entry.stat()  # follows symlinks: the version of the file the link names
    except OSError as exc:
        return _problem(entry.path, _unreachable(entry.path, exc))
    if not stat.S_ISREG(st.st_mode):
        return _problem(entry.path, "not a regular file (a device, FIFO or socket)")
    text, ok = _text(entry.path)
    if not ok:
        return Entry(text, st.st_size, st.st_mtime_ns,
                     "the file name is not valid UTF-8 (shown with the bytes escaped); rename it, e.g. with `convmv`")
    return Entry(text, st.st_size, st.st_mtime_ns)


def _unreachable(path: bytes, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop: the link never reaches a file"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link: its target {escape(os.fsdecode(os.readlink(path)))} does not exist"
    return f"cannot inspect this file: {exc.strerror}"


def _problem(path: bytes, reason: str) -> Entry:
    """A problem row's version is the entry's own (``lstat``): it changes when the entry is fixed."""
    text, ok = _text(path)
    if not ok:
        reason += " (and its name is not valid UTF-8: shown with the bytes escaped)"
    try:
        st = os.lstat(path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime_ns = 0, 0
    return Entry(text, size, mtime_ns, reason)


def _text(path: bytes) -> tuple[str, bool]:
    """``path`` as text, and whether it was valid UTF-8 (else its bad bytes are escaped as ``\\xff``)."""
    try:
        return path.decode("utf-8"), True
    except UnicodeDecodeError:
        return escape(os.fsdecode(path)), False
