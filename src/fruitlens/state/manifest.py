"""The records fruitlens keeps in OUTPUT (settings, manifest) and what a run may (re)use.

``OUTPUT/_fruitlens/settings.json`` is written before any feature: the input and the settings that
define a feature vector. A later run continues OUTPUT only with the same ones (else it is refused,
naming the setting, unless ``--overwrite``). ``manifest.json`` is written last (its presence means the
output is finished), and changed only through :func:`update_manifest`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from fruitlens.errors import FruitlensError
from fruitlens.redact import redact
from fruitlens.state import layout
from fruitlens.state.layout import MANIFEST, SETTINGS, STATE
from fruitlens.storage import uris
from fruitlens.storage.store import Store

if TYPE_CHECKING:
    from fruitlens.state.lock import RunLock


class OutputExistsError(FruitlensError, RuntimeError):
    """OUTPUT holds something this run may not continue, and ``--overwrite`` was not given."""


class ForeignFilesError(OutputExistsError):
    """``--overwrite`` of an OUTPUT that holds files fruitlens did not write: refused, nothing deleted."""

    exit_code = 2


class OutputMissingError(FruitlensError, FileNotFoundError):
    """OUTPUT is not a finished fruitlens output."""


def read_json(store: Store, rel: str) -> dict | None:
    text = store.read_text(rel)
    return None if text is None else json.loads(text)


def write_json(store: Store, rel: str, doc: dict, **kwargs) -> None:
    """Every JSON record fruitlens leaves in OUTPUT is written here, secrets masked (fruitlens.redact)."""
    store.write_text(rel, json.dumps(redact(doc), indent=2, sort_keys=False) + "\n", **kwargs)


# ---------------------------------------------------------------- may this run use OUTPUT?

def check_reusable(store: Store, input_uri: str, *, overwrite: bool) -> None:
    """Before the lock and the model: refuse an OUTPUT that is not this INPUT's fruitlens output; with
    ``overwrite``, one that holds anything fruitlens did not write (it would be deleted along)."""
    if not store.exists():
        return
    if overwrite:
        foreign = foreign_entries(store)
        if foreign:
            shown = ", ".join(repr(uris.escape(name)) for name in foreign[:3]) + (" …" if len(foreign) > 3 else "")
            raise ForeignFilesError(
                f"OUTPUT {store.uri} holds files fruitlens did not write ({shown}); --overwrite deletes only "
                "a fruitlens output: choose another OUTPUT, or move those files away first")
        return
    settings = read_json(store, SETTINGS)
    if settings is None:
        others = [i for i in store.fs.get_file_info(_selector(store))
                  if f"/{STATE}" not in i.path and f"/{layout.SPARK_EVENTS}" not in i.path]
        if others:
            raise OutputExistsError(
                f"OUTPUT {store.uri} exists and is not a fruitlens output of this version (no {SETTINGS}); "
                "pass --overwrite to replace it, or choose another path")
        return
    if settings.get("input") != input_uri:
        raise OutputExistsError(
            f"OUTPUT {store.uri} holds the features of INPUT {settings.get('input')}, not {input_uri}; "
            "pass --overwrite to replace them, or choose another OUTPUT")


#: Settings that outputs made before they existed did not record, and the value they had then.
SETTING_DEFAULTS = {"precision": "fp32"}


def check_settings(store: Store, settings: dict, *, overwrite: bool) -> None:
    """Same feature-defining settings as OUTPUT's, or refuse naming the first that differs; then record them."""
    old = None if overwrite else read_json(store, SETTINGS)
    if old is not None:
        for key in dict.fromkeys([*settings, *old]):
            before, value = old.get(key, SETTING_DEFAULTS.get(key)), settings.get(key, SETTING_DEFAULTS.get(key))
            if before != value:
                raise OutputExistsError(
                    f"OUTPUT {store.uri} was built with {key}={before!r}, this run has {key}={value!r}: "
                    "its features would not be comparable. Pass --overwrite to rebuild OUTPUT from scratch, "
                    "or choose another OUTPUT")
        return
    write_json(store, SETTINGS, settings)


def foreign_entries(store: Store) -> list[str]:
    """Names directly in OUTPUT that fruitlens does not write (sorted); all of them when OUTPUT has
    no ``_fruitlens/`` (then nothing in it is known to be fruitlens's), or OUTPUT itself if a file."""
    import pyarrow.fs as pafs

    if store.info().type == pafs.FileType.File:
        return [store.root.rsplit("/", 1)[-1]]
    names = sorted(i.base_name for i in store.fs.get_file_info(_selector(store, recursive=False)))
    ours = {n for n in names if n in layout.ENTRIES or n in layout.KEPT or layout.temporary(n)}
    if STATE not in names:  # (an event log alone: a run whose session started, then failed before the lock)
        return [n for n in names if n not in layout.KEPT]
    return [n for n in names if n not in ours]


def leftovers(store: Store) -> list[str]:
    """Temporary files of our interrupted atomic writes in OUTPUT itself, its run state and committed rows."""
    top = [p for p in store.hidden_leftovers("") if layout.temporary(p.rsplit("/", 1)[-1])]
    return top + [p for folder in (STATE, *layout.COMMITTED) for p in store.hidden_leftovers(folder)]


def clear(store: Store) -> None:
    """``--overwrite``: remove fruitlens's entries (:data:`layout.ENTRIES`) but the lock (held by this run);
    anything else in OUTPUT is left alone (:func:`check_reusable` refuses such an OUTPUT before)."""
    lock_name = layout.LOCK.rsplit("/", 1)[-1]
    for info in store.fs.get_file_info(_selector(store, recursive=False)):
        if info.base_name != STATE and (info.base_name in layout.ENTRIES or layout.temporary(info.base_name)):
            store.delete_tree(info.path[len(store.root) + 1:])
    for info in store.fs.get_file_info(_selector(store, STATE)):
        if info.base_name != lock_name:
            store.delete(info.path)


def drop_derived(store: Store) -> None:
    """Remove what was made from the PCA (:data:`layout.DERIVED`): it is about to change."""
    for name in layout.DERIVED:
        store.delete_tree(name)


def _selector(store: Store, rel: str = "", recursive: bool = True):
    import pyarrow.fs as pafs

    return pafs.FileSelector(store.fs_path(rel), recursive=recursive, allow_not_found=True)


# ---------------------------------------------------------------- the manifest

def read_manifest(store: Store) -> dict:
    manifest = read_json(store, MANIFEST)
    if manifest is None:
        raise OutputMissingError(
            f"{store.uri}/{MANIFEST} not found: OUTPUT is not a finished fruitlens output "
            "(run `fruitlens run` or `fruitlens extract` to finish it; `fruitlens status OUTPUT` tells more)")
    return manifest


def publish(store: Store, lock: RunLock, manifest: dict, *, before_publish=None) -> None:
    """Write the manifest, last and atomically (its presence means the output is complete), unless this
    run lost its lock (then nothing more may be published)."""
    lock.check()
    write_json(store, MANIFEST, manifest, before_publish=before_publish)


def unpublish(store: Store) -> None:
    """OUTPUT is about to change: it is no longer a finished output until :func:`publish`."""
    store.delete(store.fs_path(MANIFEST))


def update_manifest(store: Store, lock: RunLock, change: Callable[[dict], dict], *, unpublished: bool = False,
                    before_publish=None) -> dict:
    """The one read-modify-write of a finished OUTPUT's manifest, under the run's lock: ``change`` gets the
    manifest and returns the new one (it may do the work that changes OUTPUT meanwhile). ``unpublished``:
    the manifest is removed while ``change`` runs (what it describes is being rewritten)."""
    manifest = read_manifest(store)
    if unpublished:
        unpublish(store)
    manifest = change(manifest)
    publish(store, lock, manifest, before_publish=before_publish)
    return manifest
