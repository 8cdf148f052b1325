"""The output layout, what may be (re)used, the run record and the manifest (always written last).

``OUTPUT/_fruitlens/settings.json`` is written before any feature: the input and the settings that
define a feature vector. A later run continues OUTPUT only with the same ones (else it is refused,
naming the setting, unless ``--overwrite``). ``_fruitlens/run.json`` records the run in progress (and
the history before it), so an interrupted run is still described by ``fruitlens status``.
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata

from fruitlens.errors import FruitlensError
from fruitlens.redact import redact, redact_text
from fruitlens.storage import uris
from fruitlens.storage.store import Store

SETTINGS = "_fruitlens/settings.json"
RUN = "_fruitlens/run.json"
MANIFEST = "manifest.json"
#: Bumped when the committed layout changes incompatibly.
LAYOUT_VERSION = 1
#: Everything fruitlens writes directly in OUTPUT: ``--overwrite`` deletes these and nothing else.
ENTRIES = frozenset({"_fruitlens", "features", "errors", "pca", "pca_model", MANIFEST, "classifier", "predictor",
                     "report"})


class OutputExistsError(FruitlensError, RuntimeError):
    """OUTPUT holds something this run may not continue, and ``--overwrite`` was not given."""


class ForeignFilesError(OutputExistsError):
    """``--overwrite`` of an OUTPUT that holds files fruitlens did not write: refused, nothing deleted."""

    exit_code = 2


class OutputMissingError(FruitlensError, FileNotFoundError):
    """OUTPUT is not a finished fruitlens output."""


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def _child(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def features(self) -> str:
        return self._child("features")

    @property
    def errors(self) -> str:
        return self._child("errors")

    @property
    def pca(self) -> str:
        return self._child("pca")

    @property
    def pca_model(self) -> str:
        return self._child("pca_model")

    @property
    def manifest(self) -> str:
        return self._child(MANIFEST)


def read_json(store: Store, rel: str) -> dict | None:
    text = store.read_text(rel)
    return None if text is None else json.loads(text)


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
        others = [i for i in store.fs.get_file_info(_selector(store)) if "/_fruitlens" not in i.path]
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
    ours = {n for n in names if n in ENTRIES or _temporary(n)}
    if "_fruitlens" not in names:
        return names
    return [n for n in names if n not in ours]


def _temporary(name: str) -> bool:
    """A temporary file of an interrupted atomic write of ours (``.manifest.json.tmp-…``)."""
    return name.startswith(".") and ".tmp-" in name and name[1:].split(".tmp-", 1)[0] in ENTRIES


def leftovers(store: Store, folders: tuple[str, ...]) -> list[str]:
    """Temporary files of our interrupted atomic writes in OUTPUT itself and in ``folders``."""
    top = [p for p in store.hidden_leftovers("") if _temporary(p.rsplit("/", 1)[-1])]
    return top + [p for folder in folders for p in store.hidden_leftovers(folder)]


def clear(store: Store) -> None:
    """``--overwrite``: remove fruitlens's entries (:data:`ENTRIES`) but the lock (held by this run);
    anything else in OUTPUT is left alone (:func:`check_reusable` refuses such an OUTPUT before)."""
    for info in store.fs.get_file_info(_selector(store, recursive=False)):
        if info.base_name != "_fruitlens" and (info.base_name in ENTRIES or _temporary(info.base_name)):
            store.delete_tree(info.path[len(store.root) + 1:])
    for info in store.fs.get_file_info(_selector(store, "_fruitlens")):
        if info.base_name != "lock.json":
            store.delete(info.path)


def _selector(store: Store, rel: str = "", recursive: bool = True):
    import pyarrow.fs as pafs

    return pafs.FileSelector(store.fs_path(rel), recursive=recursive, allow_not_found=True)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("fruitlens", "pyspark", "numpy", "pandas", "pyarrow", "pillow", "onnxruntime",
                 "tensorflow-cpu", "tensorflow", "keras", "tf2onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist == "pyspark":  # the images' pyspark is their base's $SPARK_HOME/python, not a distribution
                try:
                    from pyspark import __version__ as spark_version
                except ImportError:
                    continue
                versions[dist] = spark_version
    return versions


def write_json(store: Store, rel: str, doc: dict, **kwargs) -> None:
    """Every JSON record fruitlens leaves in OUTPUT is written here, secrets masked (fruitlens.redact)."""
    store.write_text(rel, json.dumps(redact(doc), indent=2, sort_keys=False) + "\n", **kwargs)


def write_manifest(store: Store, manifest: dict, *, before_publish=None) -> None:
    write_json(store, MANIFEST, manifest, before_publish=before_publish)


def read_manifest(store: Store) -> dict:
    manifest = read_json(store, MANIFEST)
    if manifest is None:
        raise OutputMissingError(
            f"{store.uri}/{MANIFEST} not found: OUTPUT is not a finished fruitlens output "
            "(run `fruitlens run` or `fruitlens extract` to finish it; `fruitlens status OUTPUT` tells more)")
    return manifest


def command_line() -> str:
    """This process's command line as records and the lock show it (secrets masked)."""
    return redact_text(" ".join(sys.argv))
