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

Pure functions over plain data, so the rules are tested without Spark.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class CommittedFile:
    """One committed Parquet file and the (path, size, modified_us) of its rows."""

    kind: str  # "features" | "errors"
    path: str  # filesystem path
    mtime_ns: int  # when the file was written: the newest copy of a duplicate wins
    rows: tuple[tuple[str, int, int], ...]
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
        modified = pc.cast(table.column(MODIFIED), pa.int64()).to_pylist()
        rows = tuple(zip(table.column(PATH).to_pylist(), table.column(SIZE).to_pylist(), modified, strict=True))
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


def plan(index: Sequence[CommittedFile], listing: Sequence[SourceFile]) -> Plan:
    """Decide what to keep, drop and process (see the module docstring for the rules)."""
    wanted = {f.path: f.version for f in listing}
    # Of all rows of a path with the listed version, keep the one in the newest file (ties: the
    # smaller file, which is what a rewrite leaves; then the name, for a deterministic choice).
    ranked = sorted(index, key=lambda f: (-f.mtime_ns, len(f.rows), f.path))
    winner: dict[str, str] = {}
    seen: set[str] = set()
    unread: set[str] = set()  # paths whose listed version has a read error: to process again
    for f in ranked:
        for i, (path, size, modified) in enumerate(f.rows):
            seen.add(path)
            if wanted.get(path) != (size, modified):
                continue
            if f.read_error(i):
                unread.add(path)
            elif path not in winner:
                winner[path] = f.path
    out = Plan(todo=[])
    for f in index:
        keep = [winner.get(path) == f.path for path, _, _ in f.rows]
        # A path can sit in one file twice only through a bug; keep its first row.
        first: set[str] = set()
        for i, (path, _, _) in enumerate(f.rows):
            if keep[i]:
                keep[i] = path not in first
                first.add(path)
        n = sum(keep)
        out.kept[f.kind] += n
        if n == 0:
            out.delete.append(f.path)
        elif n < len(f.rows):
            out.rewrite.append((f, keep))
    out.todo = sorted((s for s in listing if s.path not in winner), key=lambda s: s.path)
    out.reused = len(winner)
    out.retried = sum(1 for s in out.todo if s.path in unread)
    out.changed = sum(1 for s in out.todo if s.path in seen and s.path not in unread)
    out.new = len(out.todo) - out.changed - out.retried
    out.removed = len(seen - set(wanted))
    return out


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
