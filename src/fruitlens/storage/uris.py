"""Paths and URIs: the one place where a command-line path or a row's ``path`` is taken apart.

Everything is literal. A local path names the file it spells: ``#``, ``%``, ``?``, spaces, quotes and
non-ASCII letters are characters of the name, never URL syntax (no fragment, no query, no
percent-decoding). URIs (``file:``, ``s3://``, ``s3a://``) are split as Hadoop's ``Path(String)``
splits them: scheme up to the first ``:`` (if it comes before any ``/``), authority after ``//`` up to
the next ``/``, and the rest is the path, as is. So the JVM (Spark, Hadoop) and the Python side
(pyarrow) name the same file with the same string, and a row's ``path`` (``file:/a b/100%25.jpg``,
``s3a://bucket/key#1.jpg``) is its file's name, unambiguously: no decoding step to get wrong.

Spark's readers (``spark.read.parquet``, ``PipelineModel.load``) also expand glob patterns in the paths
they are given; :func:`spark_read_path` escapes them for reads of a folder fruitlens wrote.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

from fruitlens.errors import FruitlensError

#: The one scheme table: each URI scheme fruitlens takes and the kind of store behind it
#: (:mod:`fruitlens.storage.store` has one filesystem per kind). Every check of a scheme asks this table.
STORES = {"file": "local", "s3": "s3", "s3a": "s3", "s3n": "s3"}
S3_SCHEMES = tuple(scheme for scheme, kind in STORES.items() if kind == "s3")
SCHEMES = tuple(STORES)
#: Characters Hadoop's glob matcher gives a meaning (``GlobPattern``); ``\`` escapes one of them.
GLOB_CHARS = frozenset("\\{}[]*?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class PathError(FruitlensError, ValueError):
    """A path or URI fruitlens cannot use as given (unsupported scheme, a name that is not UTF-8)."""

    exit_code = 2


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` ("file", "s3a", ...), ``authority`` (the bucket; "" locally) and the
    literal ``path`` (absolute locally; the key prefix, without a leading ``/``, on S3)."""

    scheme: str
    authority: str
    path: str

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def store(self) -> str:
        """The kind of store (:data:`STORES`): "local", "s3"."""
        return STORES[self.scheme]


def has_scheme(text: str) -> bool:
    """``s3://b/k``, ``file:///a``, ``file:/a`` are URIs; ``a:b`` or ``dir/x:y`` are local paths."""
    scheme, colon, rest = text.partition(":")
    if not colon or "/" in scheme or not _SCHEME.fullmatch(scheme):
        return False
    return rest.startswith("//") or scheme.lower() == "file"


def parse(uri: str) -> Location:
    """Split a URI (or a bare local path) literally, as Hadoop's ``Path(String)`` does."""
    if not has_scheme(uri):
        return Location("file", "", uri)
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    authority = ""
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise PathError(f"{uri}: a file: URI names a local path (file:///absolute/path); "
                            f"{authority!r} looks like a host name")
        return Location("file", "", rest or "/")
    if scheme not in STORES:
        known = " / ".join(f"{s}://" for s in SCHEMES if s != "file")
        raise PathError(f"{uri}: fruitlens reads and writes local paths and {known} URIs; "
                        f"{scheme}:// is not supported")
    if not authority:
        raise PathError(f"{uri}: a {scheme}:// URI names a bucket: {scheme}://bucket/prefix")
    return Location(scheme, authority, rest.lstrip("/"))


def is_s3(uri: str) -> bool:
    """``uri`` names an S3 location (any of :data:`S3_SCHEMES`); false for local paths and anything unparsable."""
    try:
        return parse(uri).store == "s3"
    except PathError:
        return False


def check_utf8(text: str, what: str) -> None:
    """Refuse a name with bytes that are not UTF-8 (Python carries them as surrogates): Parquet
    strings, JSON and the JVM all need UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError(f"{what} {escape(text)} is not valid UTF-8: rename it (e.g. with `convmv`), "
                        "then re-run") from None


def qualify(arg: str) -> str:
    """A command-line INPUT/OUTPUT as a URI the driver and the executors mean alike: local paths become
    absolute ``file://`` URIs (literally: no character is encoded), URIs lose a trailing ``/``."""
    check_utf8(arg, "the path")
    if has_scheme(arg):
        loc = parse(arg)
        if loc.is_local:
            return "file://" + _absolute(loc.path)
        return f"{loc.scheme}://{loc.authority}" + (f"/{loc.path.rstrip('/')}" if loc.path.strip("/") else "")
    return "file://" + _absolute(os.path.expanduser(arg))


def _absolute(path: str) -> str:
    path = os.path.abspath(path)
    return "/" + path.lstrip("/")  # POSIX keeps a leading "//"; "file:////x" would read as a host


def local_path(uri: str) -> str:
    """The local path a ``file:`` URI (or a bare path) names."""
    loc = parse(uri)
    if not loc.is_local:
        raise PathError(f"{uri} is not a local path")
    return loc.path


def spark_read_path(uri: str) -> str:
    """``uri`` for Spark's readers, which expand glob patterns: each glob character escaped so the
    folder named is the folder read (never another that the pattern also matches). Writes take the
    plain URI."""
    scheme, sep, rest = uri.partition("://") if "://" in uri else ("", "", uri)
    return scheme + sep + "".join("\\" + c if c in GLOB_CHARS else c for c in rest)


def java_uri(uri: str) -> str:
    """``uri`` as a Spark setting that java.net.URI parses (``spark.eventLog.dir``): its path percent-encoded,
    so a space, ``#``, ``%`` or ``ü`` names that folder literally (unencoded, Spark takes a space as the end of
    a URI and resolves the rest against the working directory). Local paths and schemeless text as they are."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority}{slash}{urllib.parse.quote(path, safe='/')}"


def escape(name: str) -> str:
    """A file name for a message or a row: bytes that are not UTF-8 (surrogates, as ``os`` decodes
    them) shown as ``\\xff``; newlines and other control characters as escapes too."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)
