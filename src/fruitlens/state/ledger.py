"""What OUTPUT already holds, and what a run must do to bring it in line with INPUT.

Every feature or error row records the version of its source file (``size``, ``modified``). The index
is those three columns of every committed Parquet file in ``features/`` and ``errors/`` (column reads
only: the feature vectors are never loaded). :func:`plan` compares it with INPUT's listing:

- unchanged (same path, size and time) → reused, never read again; a decode error is a verdict too
  (the file is not a usable image until it changes);
- new or changed → processed by this run; vanished → removed;
- a *read* error (the file could not be read then: network, throttling, permission, I/O) is no
  verdict: its row is dropped and the image processed again, by every run until it is read;
- rows that are stale (old version, vanished path) or duplicated (a crash between writing a rewritten
  file and deleting the old one; a retried task of an older run) are dropped by rewriting only the
  files that hold them: the new file is written first, then the old one deleted. Of duplicates, the
  copy in the newest file wins, so a crash between those two steps is repaired by the next run.

Pure functions over plain data, so the rules are tested without Spark. The listing and the index are held
as Arrow columns and compared with vectorised lookups (one hash of the listed paths), so that planning
10 million photos takes seconds and ~100 bytes a photo, not millions of Python objects (docs/performance.md).
"""
from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fruitlens.state import layout
from fruitlens.state.schema import DECODE, ERROR, INDEX_COLUMNS, KIND, MODIFIED, PATH, READ, SIZE, errors_table
from fruitlens.storage.store import Store


@dataclass(frozen=True)
class SourceFile:
    """One image in INPUT's listing: its path (Spark's spelling) and version."""

    path: str
    size: int
    modified_us: int  # modification time, µs since the epoch (UTC)
    problem: str | None = None  # why it cannot be read at all (see fruitlens.storage.listing): an error row as listed

    @property
    def version(self) -> tuple[int, int]:
        return self.size, self.modified_us


#: INPUT's listing as columns (:func:`listing_table`): what :func:`plan` compares with the index.
LISTING_SCHEMA = pa.schema([(PATH, pa.string()), (SIZE, pa.int64()), ("modified_us", pa.int64()),
                           ("problem", pa.string())])


def listing_table(files: Iterable[SourceFile]) -> pa.Table:
    files = list(files)
    return pa.table([[f.path for f in files], [f.size for f in files], [f.modified_us for f in files],
                     [f.problem for f in files]], schema=LISTING_SCHEMA)


def source_files(table: pa.Table) -> list[SourceFile]:
    """The rows of a :data:`LISTING_SCHEMA` table as :class:`SourceFile` (for the few that need objects)."""
    return [SourceFile(*row) for row in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True)]


class Rows(Sequence):
    """A committed file's rows, ``length`` rows from ``offset`` of an Arrow table (``path``, ``size``,
    ``modified`` as µs) that the whole index shares: a sequence of (path, size, modified_us) tuples to
    whoever iterates it, without millions of tuples or one Arrow table per file."""

    def __init__(self, table: pa.Table, offset: int = 0, length: int | None = None) -> None:
        self.base, self.offset = table, offset
        self.length = table.num_rows - offset if length is None else length

    @property
    def table(self) -> pa.Table:
        return self.base.slice(self.offset, self.length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self)[i]
        row = self.table.slice(i if i >= 0 else len(self) + i, 1).to_pylist()[0]
        return row[PATH], row[SIZE], row[MODIFIED]

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        table = self.table
        return zip(*(table.column(c).to_pylist() for c in (PATH, SIZE, MODIFIED)), strict=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(tuple(self))


def shared_rows(tables: Sequence[pa.Table]) -> list[Rows]:
    """One :class:`Rows` per table, all views of one concatenated table (``path``, ``size``, ``modified``)."""
    if not tables:
        return []
    base = pa.concat_tables([t.select([PATH, SIZE, MODIFIED]) for t in tables])  # zero-copy: a chunk per file
    offsets = itertools.accumulate((t.num_rows for t in tables), initial=0)
    return [Rows(base, off, t.num_rows) for off, t in zip(offsets, tables, strict=False)]


@dataclass(frozen=True)
class CommittedFile:
    """One committed Parquet file and the (path, size, modified_us) of its rows."""

    kind: str  # "features" | "errors"
    path: str  # filesystem path
    mtime_ns: int  # when the file was written: the newest copy of a duplicate wins
    rows: Sequence[tuple[str, int, int]]  # a tuple, or Rows (as read_index reads them)
    error_kinds: tuple[str, ...] = ()  # errors files: DECODE or READ per row (none: all DECODE)

    def read_error(self, i: int) -> bool:
        return bool(self.error_kinds) and self.error_kinds[i] == READ


def batch_name(rows: Iterable[tuple[str, int, int]]) -> str:
    """A file name from the rows' identities: a retried task rewrites the same file, never a second one."""
    digest = hashlib.sha256()
    for path, size, modified in sorted(rows):
        digest.update(f"{path}\0{size}\0{modified}\n".encode())
    return f"part-{digest.hexdigest()[:32]}.parquet"


def read_index(store: Store, *, threads: int = 16) -> list[CommittedFile]:
    """The index of everything committed in OUTPUT (column reads only, files in parallel)."""
    infos = [(kind, info) for kind in layout.COMMITTED for info in store.list(kind)
             if info.base_name.endswith(".parquet")]

    def read(item) -> CommittedFile:
        kind, info = item
        with store.fs.open_input_file(info.path) as fh:
            parquet = pq.ParquetFile(fh)
            kinds = kind == layout.ERRORS and KIND in parquet.schema_arrow.names
            table = parquet.read(columns=INDEX_COLUMNS + ([KIND] if kinds else []))
        rows = pa.table({PATH: table.column(PATH), SIZE: table.column(SIZE),
                         MODIFIED: pc.cast(table.column(MODIFIED), pa.int64())})
        return kind, info, rows, tuple(table.column(KIND).to_pylist()) if kinds else ()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        read_files = list(pool.map(read, infos))
    # One table for the whole index (files are views of it): at 40,000 files, one table each costs more
    # than their rows.
    rows = shared_rows([r for _, _, r, _ in read_files])
    return [CommittedFile(kind, info.path, info.mtime_ns or 0, r, kinds)
            for (kind, info, _, kinds), r in zip(read_files, rows, strict=True)]


@dataclass
class Plan:
    todo: list[SourceFile]  # to featurize: new + changed, sorted by path
    reused: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    retried: int = 0  # read errors of earlier runs, processed again
    kept: dict[str, int] = field(default_factory=lambda: {k: 0 for k in layout.COMMITTED})  # rows kept per kind
    delete: list[str] = field(default_factory=list)  # files whose rows are all dropped
    rewrite: list[tuple[CommittedFile, list[bool]]] = field(default_factory=list)  # file, keep mask

    def counts(self) -> dict[str, int]:
        return {"reused": self.reused, "new": self.new, "changed": self.changed, "removed": self.removed,
                "retried": self.retried}


def plan(index: Sequence[CommittedFile], listing: Sequence[SourceFile] | pa.Table) -> Plan:
    """Decide what to keep, drop and process (see the module docstring for the rules).

    ``listing`` is INPUT's listing: :class:`SourceFile` objects or a :data:`LISTING_SCHEMA` table."""
    listed = listing if isinstance(listing, pa.Table) else listing_table(listing)
    n_listed = listed.num_rows
    idx = _index_columns(index)
    # Each committed row's place in the listing (-1: not listed), and whether it is the listed version.
    pos = pc.index_in(idx[PATH], value_set=listed.column(PATH)).fill_null(-1).to_numpy().astype(np.int64)
    listed_at = pos >= 0
    at = np.where(listed_at, pos, 0)
    current = listed_at.copy()
    if n_listed:
        current &= listed.column(SIZE).to_numpy()[at] == idx[SIZE]
        current &= listed.column("modified_us").to_numpy()[at] == idx[MODIFIED]
    del at
    unread = np.zeros(n_listed, bool)  # listed versions with a read error: to process again
    unread[pos[current & idx["read"]]] = True
    # Of all rows of a path with the listed version, keep the one in the newest file (ties: the smaller
    # file, which is what a rewrite leaves; then the name, for a deterministic choice); in one file (a path
    # twice only through a bug) the first row. Paths with one candidate row (nearly all) need no ranking.
    keep = current & ~idx["read"]
    copies = np.bincount(pos[keep], minlength=n_listed)
    duplicated = np.flatnonzero(keep & (copies[np.where(listed_at, pos, 0)] > 1)) if n_listed else pos[:0]
    del copies
    if len(duplicated):
        keep[duplicated] = False
        order = idx["rank"][idx["file"][duplicated]] * (1 << 32) + (duplicated - idx["offsets"][idx["file"][duplicated]])
        ranked = duplicated[np.argsort(order, kind="stable")]
        _, first = np.unique(pos[ranked], return_index=True)
        keep[ranked[first]] = True
    won = np.zeros(n_listed, bool)
    won[pos[keep]] = True
    seen = np.zeros(n_listed, bool)
    seen[pos[listed_at]] = True

    out = Plan(todo=[])
    kept_per_file = np.bincount(idx["file"][keep], minlength=len(index))
    for i, f in enumerate(index):
        n = int(kept_per_file[i])
        out.kept[f.kind] += n
        if n == 0:
            out.delete.append(f.path)
        elif n < len(f.rows):
            start = idx["offsets"][i]
            out.rewrite.append((f, keep[start:start + len(f.rows)].tolist()))
    todo_at = np.flatnonzero(~won)
    todo = listed.take(todo_at)
    order = pc.sort_indices(todo, [(PATH, "ascending")]).to_numpy()
    out.todo = source_files(todo.take(order))
    todo_at = todo_at[order]
    out.reused = int(won.sum())
    out.retried = int(unread[todo_at].sum())
    out.changed = int((seen[todo_at] & ~unread[todo_at]).sum())
    out.new = len(out.todo) - out.changed - out.retried
    out.removed = pc.count_distinct(pc.filter(idx[PATH], pa.array(~listed_at))).as_py() if len(pos) else 0
    return out


def _index_columns(index: Sequence[CommittedFile]) -> dict:
    """Every committed row as columns: path (Arrow, views of the index's table), size, modified, file number
    (int32), read error; per file its rank (by newest, smaller, name: the lower wins) and first row's offset."""
    lengths = np.array([len(f.rows) for f in index], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    ranked = sorted(range(len(index)), key=lambda i: (-index[i].mtime_ns, len(index[i].rows), index[i].path))
    rank = np.empty(len(index), np.int64)
    rank[ranked] = np.arange(len(index))
    paths, sizes, modified = [], [], []
    for table in _row_tables(index):
        paths += table.column(PATH).chunks
        sizes += [c.to_numpy() for c in table.column(SIZE).chunks]
        modified += [c.to_numpy() for c in table.column(MODIFIED).chunks]
    empty = np.zeros(0, np.int64)
    read = np.zeros(total, bool)
    for i, f in enumerate(index):
        if f.error_kinds:
            read[offsets[i]:offsets[i + 1]] = np.array(f.error_kinds, dtype=object) == READ
    return {PATH: pa.chunked_array(paths, pa.string()),
            SIZE: np.concatenate(sizes) if sizes else empty, MODIFIED: np.concatenate(modified) if modified else empty,
            "file": np.repeat(np.arange(len(index), dtype=np.int32), lengths), "read": read, "rank": rank,
            "offsets": offsets}


def _row_tables(index: Sequence[CommittedFile]) -> Iterator[pa.Table]:
    """Each file's rows as a table; consecutive views of one shared table as one slice of it (zero-copy)."""
    run: list[CommittedFile] = []

    def flush():
        if run:
            first, last = run[0].rows, run[-1].rows
            yield first.base.slice(first.offset, last.offset + last.length - first.offset)
            run.clear()

    for f in index:
        rows = f.rows
        if isinstance(rows, Rows):
            prev = run[-1].rows if run else None
            if prev is not None and (prev.base is not rows.base or prev.offset + prev.length != rows.offset):
                yield from flush()
            run.append(f)
            continue
        yield from flush()
        yield _rows_table(rows)
    yield from flush()


def _rows_table(rows: Iterable[tuple[str, int, int]]) -> pa.Table:
    paths, sizes, modified = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table({PATH: pa.array(paths, pa.string()), SIZE: pa.array(sizes, pa.int64()),
                     MODIFIED: pa.array(modified, pa.int64())})


def apply(store: Store, p: Plan, *, after_write=None) -> None:
    """Rewrite the files holding dropped rows (new file first, then delete the old), delete the rest."""
    targets: set[str] = set()
    for f, keep in p.rewrite:
        table = store.read_table(f.path)
        kept = table.filter(pa.array(keep))
        rows = [r for r, k in zip(f.rows, keep, strict=True) if k]
        name = batch_name(rows)
        store.write_table(layout.batch_file(f.kind, name), kept)
        targets.add(store.fs_path(layout.batch_file(f.kind, name)))
        if after_write:
            after_write()
        if store.fs_path(layout.batch_file(f.kind, name)) != f.path:
            store.delete(f.path)
    for path in p.delete:
        if path not in targets:
            store.delete(path)


#: Listing problems that may pass (permission, I/O): read errors, listed again by every run. The others
#: (a link loop, a broken link, a name that is not UTF-8) are the entry's verdict until it changes.
_UNLISTABLE = ("cannot list", "cannot inspect")


def commit_listing_errors(store: Store, files: Sequence[SourceFile]) -> tuple[int, int]:
    """The files the listing found unusable (``problem``) as error rows: one file, committed and named
    like a worker's batch; these files are never sent to the workers. Returns (rows, of which read errors)."""
    if not files:
        return 0, 0
    rows = [(f.path, f.size, f.modified_us) for f in files]
    kinds = [READ if f.problem.startswith(_UNLISTABLE) else DECODE for f in files]
    store.write_table(layout.batch_file(layout.ERRORS, batch_name(rows)), errors_table(
        [f.path for f in files], [f.problem for f in files], kinds, [f.size for f in files],
        [f.modified_us for f in files]))
    return len(files), kinds.count(READ)


def committed_rows(store: Store) -> dict[str, int]:
    """Rows per kind (errors also split into decode and read) for `fruitlens status`: feature files
    from their Parquet footers only, error files (few, small) from their ``kind`` column."""
    out = {layout.FEATURES: 0, layout.ERRORS: 0, "decode_errors": 0, "read_errors": 0}
    for kind in layout.COMMITTED:
        for info in store.list(kind):
            if not info.base_name.endswith(".parquet"):
                continue
            with store.fs.open_input_file(info.path) as fh:
                parquet = pq.ParquetFile(fh)
                out[kind] += parquet.metadata.num_rows
                if kind == layout.ERRORS:
                    kinds = (parquet.read(columns=[KIND]).column(KIND).to_pylist()
                             if KIND in parquet.schema_arrow.names else [])
                    read = sum(1 for k in kinds if k == READ)
                    out["read_errors"] += read
                    out["decode_errors"] += parquet.metadata.num_rows - read
    return out


def error_reasons(store: Store, top: int = 3) -> list[tuple[str, int]]:
    """The commonest reasons among OUTPUT's error rows, as ``("read: <reason>", count)``: the reason's
    quoted names (paths, keys, buckets) are blanked so that one cause counts once."""
    counts: Counter[str] = Counter()
    for info in store.list(layout.ERRORS):
        if not info.base_name.endswith(".parquet"):
            continue
        with store.fs.open_input_file(info.path) as fh:
            parquet = pq.ParquetFile(fh)
            table = parquet.read(columns=[ERROR, *([KIND] if KIND in parquet.schema_arrow.names else [])])
        kinds = table.column(KIND).to_pylist() if KIND in table.column_names else [DECODE] * table.num_rows
        for kind, error in zip(kinds, table.column(ERROR).to_pylist(), strict=True):
            counts[f"{kind or DECODE}: {_general(error or '')}"] += 1
    return counts.most_common(top)


def _general(reason: str, width: int = 160) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason.splitlines()[0] if reason else "")
    return text if len(text) <= width else text[:width - 1] + "…"
