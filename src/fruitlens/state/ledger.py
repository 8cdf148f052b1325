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
    """A committed file's rows as Arrow columns (``path``, ``size``, ``modified`` as µs): a sequence of
    (path, size, modified_us) tuples to whoever iterates it, without holding millions of tuples."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self)[i]
        row = self.table.slice(i if i >= 0 else len(self) + i, 1).to_pylist()[0]
        return row[PATH], row[SIZE], row[MODIFIED]

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        return zip(*(self.table.column(c).to_pylist() for c in (PATH, SIZE, MODIFIED)), strict=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(tuple(self))


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
        rows = Rows(pa.table({PATH: table.column(PATH), SIZE: table.column(SIZE),
                              MODIFIED: pc.cast(table.column(MODIFIED), pa.int64())}))
        return CommittedFile(kind, info.path, info.mtime_ns or 0, rows,
                             tuple(table.column(KIND).to_pylist()) if kinds else ())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(read, infos))


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
    pos = pc.index_in(idx[PATH], value_set=listed.column(PATH))
    listed_at = pos.is_valid().to_numpy(zero_copy_only=False)
    pos = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = listed.column(SIZE).to_numpy()
    modified = listed.column("modified_us").to_numpy()
    where = np.where(listed_at, pos, 0)
    current = listed_at & (sizes[where] == idx[SIZE]) & (modified[where] == idx[MODIFIED]) if n_listed else listed_at
    unread = np.zeros(n_listed, bool)  # listed versions with a read error: to process again
    unread[pos[current & idx["read"]]] = True
    # Of all rows of a path with the listed version, keep the one in the newest file (ties: the smaller
    # file, which is what a rewrite leaves; then the name, for a deterministic choice); in one file (a path
    # twice only through a bug) the first row.
    candidates = np.flatnonzero(current & ~idx["read"])
    candidates = candidates[np.argsort(idx["order"][candidates], kind="stable")]
    _, first = np.unique(pos[candidates], return_index=True)
    keep = np.zeros(len(pos), bool)
    keep[candidates[first]] = True
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
    """Every committed row as columns: path (Arrow), size, modified, file number, read error, and ``order``
    (the file's rank by newest, smaller, name, then the row's place in it: the lower wins); per file, the
    offset of its first row."""
    lengths = np.array([len(f.rows) for f in index], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    ranked = sorted(range(len(index)), key=lambda i: (-index[i].mtime_ns, len(index[i].rows), index[i].path))
    rank = np.empty(len(index), np.int64)
    rank[ranked] = np.arange(len(index))
    rows = pa.concat_tables([f.rows.table if isinstance(f.rows, Rows) else _rows_table(f.rows) for f in index]
                            or [_rows_table(())])
    paths = rows.column(PATH)
    sizes = rows.column(SIZE).to_numpy()
    modified = rows.column(MODIFIED).to_numpy()
    file_no = np.repeat(np.arange(len(index), dtype=np.int64), lengths)
    row_no = np.arange(total, dtype=np.int64) - offsets[:-1][file_no]
    read = np.zeros(total, bool)
    for i, f in enumerate(index):
        if f.error_kinds:
            read[offsets[i]:offsets[i + 1]] = np.array(f.error_kinds, dtype=object) == READ
    return {PATH: paths, SIZE: sizes, MODIFIED: modified, "file": file_no, "read": read,
            "order": (rank[file_no] << 32) + row_no, "offsets": offsets}


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
