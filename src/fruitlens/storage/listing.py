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
these cases (keys are UTF-8, there are no links): pyarrow lists it, prefix by prefix in parallel
(:func:`list_batches`): at 10 million photos one recursive listing is ~10,000 ListObjectsV2 pages one
after another, while the class folders can be listed side by side.
"""
from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

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


#: The columns of :func:`list_batches` (``path`` is a filesystem path, as :class:`Entry`'s).
ENTRY_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                          ("problem", pa.string())])

#: Concurrent LIST calls on a remote INPUT. S3 serves thousands of LISTs a second per prefix; the bound keeps
#: the driver's connections (and the results waiting to be converted) few.
LIST_THREADS = 16
#: Folder levels listed one level at a time (delimiter listings) to find prefixes to spread over the threads:
#: INPUT/Training/<class>/ is two levels down.
SPLIT_DEPTH = 3


def list_images(store: Store, *, threads: int = LIST_THREADS) -> list[Entry]:
    """Every image file below ``store``'s root (any depth, hidden names skipped), problems included."""
    if store.is_local:
        return list(_walk(store.root))
    return [Entry(*row.values()) for batch in list_batches(store, threads=threads) for row in batch.to_pylist()]


def list_batches(store: Store, *, threads: int = LIST_THREADS) -> Iterator[pa.RecordBatch]:
    """:func:`list_images` as record batches of :data:`ENTRY_SCHEMA`, one per listed prefix, so that a
    listing of millions is held as columns (~100 bytes a file), not as millions of Python objects.

    A remote INPUT with ``threads`` > 1 is listed folder level by folder level (down to :data:`SPLIT_DEPTH`)
    until there are enough folders to spread, then each folder recursively, ``threads`` at a time. The
    same files as one recursive listing (in another order), and the same errors: the first failing LIST
    raises its :class:`StoreError`, and the listings not yet started are cancelled.
    """
    if store.is_local:
        entries = list(_walk(store.root))
        yield pa.RecordBatch.from_pydict({"path": [e.path for e in entries], "size": [e.size for e in entries],
                                          "mtime_ns": [e.mtime_ns for e in entries],
                                          "problem": [e.problem for e in entries]}, schema=ENTRY_SCHEMA)
        return
    if threads <= 1:
        yield _batch(store.list(recursive=True))
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fruitlens-list")
    try:
        files, folders = store.list_level("")
        yield _batch(files)
        for _ in range(SPLIT_DEPTH):
            if not folders or len(folders) >= 4 * threads:
                break
            levels, folders = pool.map(store.list_level, folders), []
            for files, below in levels:
                yield _batch(files)
                folders += below
        # A window of listings ahead of the conversion: LISTs overlap, finished ones wait in a bounded queue.
        ahead: deque = deque()
        for rel in folders:
            ahead.append(pool.submit(store.list, rel, recursive=True))
            if len(ahead) >= 2 * threads:
                yield _batch(ahead.popleft().result())
        while ahead:
            yield _batch(ahead.popleft().result())
    finally:  # an error (or a consumer that stops): no further LISTs
        pool.shutdown(wait=True, cancel_futures=True)


def _batch(infos) -> pa.RecordBatch:
    images = [i for i in infos if is_image_path(i.path)]
    return pa.RecordBatch.from_arrays(
        [pa.array([i.path for i in images], pa.string()), pa.array([i.size for i in images], pa.int64()),
         pa.array([i.mtime_ns or 0 for i in images], pa.int64()), pa.nulls(len(images), pa.string())],
        schema=ENTRY_SCHEMA)


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
