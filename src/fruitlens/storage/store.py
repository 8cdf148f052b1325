"""Files under one root (INPUT or OUTPUT), local or S3, through pyarrow.fs: usable on the driver and in
Python workers alike (workers have no JVM).

Writes that others may read are atomic: on local disk a hidden temporary name (``.`` prefix, which
Spark and pyarrow's dataset readers skip) then ``os.replace``; on S3 one PUT of the whole object,
which S3 makes visible all at once (no rename tricks: S3 has no rename).

Paths are spelt as Hadoop's ``Path.toString`` spells them (``file:/a b/x.jpg``, ``s3a://bucket/key``),
literally (see :mod:`fruitlens.storage.uris`), so rows written here and paths Spark reads name files the same way.
"""
from __future__ import annotations

import errno
import os
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fruitlens.errors import FruitlensError, require
from fruitlens.storage import uris


class StoreError(FruitlensError, RuntimeError):
    """A path cannot be listed, read or written: wrong URI, missing permission, unreachable endpoint."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause  # the OSError behind it: fruitlens.storage.retry decides from it whether to retry


@dataclass(frozen=True)
class StoreOptions:
    """How to reach S3 (from the standard AWS environment and Spark's ``fs.s3a.*`` settings).

    Built once on the driver and shipped to workers inside the task closure; empty fields mean
    "pyarrow's default" (the AWS default credential chain, region resolution).
    """

    endpoint: str | None = None  # "http://127.0.0.1:8333"
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    #: (bucket, region) pairs resolved on the driver (:meth:`with_bucket_regions`); they win over ``region``.
    bucket_regions: tuple[tuple[str, str], ...] = ()

    def with_bucket_regions(self, *locations: str) -> StoreOptions:
        """These options plus the region of each S3 bucket in ``locations``, asked of S3 once, here on the driver.

        pyarrow takes its region only from ``AWS_REGION`` or the settings, and on EMR on EKS that is the
        cluster's region (IRSA injects it): a bucket in another region would fail in every worker while
        Spark's own S3 connector works. With an endpoint (an S3-compatible server) there is nothing to
        resolve. A bucket whose region cannot be read keeps ``region``: its first real call reports why.
        """
        if self.endpoint:
            return self
        regions = dict(self.bucket_regions)
        for uri in locations:
            loc = uris.parse(uri)
            if loc.store == "s3" and loc.authority and loc.authority not in regions:
                bucket = loc.authority
                try:
                    regions[bucket] = pafs.resolve_s3_region(bucket)
                except (OSError, ValueError):
                    pass
        return replace(self, bucket_regions=tuple(sorted(regions.items())))

    def region_for(self, bucket: str) -> str | None:
        return dict(self.bucket_regions).get(bucket) or self.region

    @classmethod
    def from_environment(cls, env=None, hadoop: dict[str, str] | None = None) -> StoreOptions:
        env = os.environ if env is None else env
        hadoop = hadoop or {}
        return cls(
            endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or hadoop.get("fs.s3a.endpoint"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or hadoop.get("fs.s3a.endpoint.region"),
            access_key=hadoop.get("fs.s3a.access.key"),
            secret_key=hadoop.get("fs.s3a.secret.key"),
            session_token=hadoop.get("fs.s3a.session.token"),
        )


def _s3_filesystem(options: StoreOptions, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {}
    if options.endpoint:
        # S3-compatible servers (SeaweedFS, older MinIO) mangle the AWS SDK's default streamed trailing
        # checksums (aws-chunked uploads): with a custom endpoint, checksum only where S3 requires it.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
        parts = urlsplit(options.endpoint if "://" in options.endpoint else "https://" + options.endpoint)
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    if region:
        kwargs["region"] = region
    elif options.endpoint:
        kwargs["region"] = "us-east-1"  # an S3-compatible server: no region to resolve
    if options.access_key and options.secret_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key,
                      session_token=options.session_token)
    return pafs.S3FileSystem(**kwargs)


#: The filesystem of each kind of remote store in :data:`fruitlens.storage.uris.STORES`.
FILESYSTEMS = {"s3": _s3_filesystem}
_FILESYSTEMS: dict = {}


class Store:
    """A root URI and the filesystem it lives on."""

    def __init__(self, uri: str, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        loc = uris.parse(uri)  # literal: "#", "%", "?" are characters of the name
        self.scheme = loc.scheme
        self.region: str | None = None
        if loc.is_local:
            self.fs = pafs.LocalFileSystem()
            self.root = loc.path.rstrip("/") or "/"
        else:
            if loc.store == "s3":
                self.region = self.options.region_for(loc.authority)
            key = (loc.store, self.options, self.region)
            if key not in _FILESYSTEMS:  # one client per process and region (workers reuse it across tasks)
                _FILESYSTEMS[key] = FILESYSTEMS[loc.store](self.options, self.region)
            self.fs = _FILESYSTEMS[key]
            self.root = f"{loc.authority}/{loc.path}".rstrip("/")
        self.uri = uri

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    # -- names -------------------------------------------------------------------------------------
    def fs_path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def spark_path(self, fs_path: str) -> str:
        """The form of Spark's ``path`` column: ``file:/x`` locally, ``s3a://b/k`` on S3."""
        return f"file:{fs_path}" if self.is_local else f"{self.scheme}://{fs_path}"

    def path_of(self, spark_path: str) -> str:
        """Inverse of :meth:`spark_path` (literal: no decoding)."""
        loc = uris.parse(spark_path)
        return loc.path if loc.is_local else f"{loc.authority}/{loc.path}"

    # -- reading -----------------------------------------------------------------------------------
    def info(self, rel: str = "") -> pafs.FileInfo:
        return self._call("inspect", rel, lambda: self.fs.get_file_info(self.fs_path(rel)))

    def exists(self, rel: str = "") -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def list(self, rel: str = "", *, recursive: bool = False) -> list[pafs.FileInfo]:
        """Files below ``rel`` (none if it does not exist); hidden (``.``/``_``) names excluded."""
        selector = pafs.FileSelector(self.fs_path(rel), recursive=recursive, allow_not_found=True)
        infos = self._call("list", rel, lambda: self.fs.get_file_info(selector))
        base = len(self.fs_path(rel)) + 1
        return [i for i in infos if i.type == pafs.FileType.File and not hidden(i.path[base:])]

    def list_level(self, rel: str = "") -> tuple[list[pafs.FileInfo], list[str]]:
        """One folder level below ``rel``: its files and its sub-folders (as ``rel`` paths; on S3 the common
        prefixes of a delimiter listing); hidden names excluded, a missing ``rel`` empty."""
        selector = pafs.FileSelector(self.fs_path(rel), recursive=False, allow_not_found=True)
        infos = self._call("list", rel, lambda: self.fs.get_file_info(selector))
        base = len(self.root) + 1
        files, folders = [], []
        for i in infos:
            below = i.path[base:]
            if hidden(below):
                continue
            if i.type == pafs.FileType.File:
                files.append(i)
            elif i.type == pafs.FileType.Directory:
                folders.append(below)
        return files, folders

    def read_bytes(self, path: str) -> bytes:
        """``path`` is a filesystem path (as :meth:`list` returns)."""
        with self.fs.open_input_stream(path) as stream:
            return stream.readall()

    def read_text(self, rel: str) -> str | None:
        """The text of ``rel``, or None if it does not exist."""
        try:
            return self.read_bytes(self.fs_path(rel)).decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "not exist" in str(exc) or "NoSuchKey" in str(exc) or "Path does not exist" in str(exc):
                return None
            raise self._error("read", rel, exc) from None

    def read_file(self, rel: str) -> bytes:
        """The bytes of ``rel``; any failure (a missing file too) as a :class:`StoreError` naming it."""
        return self._call("read", rel, lambda: self.read_bytes(self.fs_path(rel)))

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=columns, filesystem=self.fs)

    # -- writing -----------------------------------------------------------------------------------
    def make_dirs(self, *rels: str) -> None:
        if self.is_local:
            for rel in rels:
                self._call("create", rel, lambda rel=rel: self.fs.create_dir(self.fs_path(rel), recursive=True))

    def write_bytes(self, rel: str, data: bytes, *, before_publish=None) -> None:
        """Write ``rel`` atomically: readers see the old object or the whole new one, never a part."""
        final = self.fs_path(rel)
        if self.is_local:
            head, name = final.rsplit("/", 1)
            tmp = f"{head}/{temporary_name(name)}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # a full disk, a quota: leave no partial temporary file behind
                _remove(tmp)
                raise self._error("write", rel, exc) from None
            if before_publish:
                before_publish()
            self._call("write", rel, lambda: os.replace(tmp, final))
        else:
            if before_publish:
                before_publish()
            self._call("write", rel, lambda: _put(self.fs, final, data))

    def write_text(self, rel: str, text: str, **kwargs) -> None:
        self.write_bytes(rel, text.encode("utf-8"), **kwargs)

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def create_exclusive(self, rel: str, text: str) -> bool:
        """Create ``rel`` only if absent; False if it exists. Local: O_EXCL. S3: a conditional PUT
        (``If-None-Match: *``), honoured by AWS S3 since 2024 (see docs/resume.md for other servers)."""
        data = text.encode("utf-8")
        if self.is_local:
            try:
                fd = os.open(self.fs_path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise self._error("create", rel, exc) from None
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            except OSError as exc:  # a full disk: an empty lock file would block OUTPUT until it goes stale
                _remove(self.fs_path(rel))
                raise self._error("create", rel, exc) from None
            return True
        bucket, key = self.fs_path(rel).split("/", 1)
        try:
            self._boto().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:  # botocore ClientError
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._error("create", rel, exc) from None
        return True

    def delete(self, path: str) -> None:
        """Delete one file (a filesystem path); a missing file is not an error."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if "not exist" not in str(exc) and "NoSuchKey" not in str(exc):
                raise self._error("delete", path, exc) from None

    def delete_tree(self, rel: str) -> None:
        info = self.info(rel)
        if info.type == pafs.FileType.Directory:
            self._call("delete", rel, lambda: self.fs.delete_dir(self.fs_path(rel)))
        elif info.type == pafs.FileType.File:
            self.delete(self.fs_path(rel))

    def hidden_leftovers(self, rel: str) -> list[str]:
        """Temporary files of interrupted atomic writes (local disk only) directly in ``rel``."""
        if not self.is_local:
            return []
        selector = pafs.FileSelector(self.fs_path(rel), allow_not_found=True)
        return [i.path for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and temporary_of(i.base_name) is not None]

    # -- helpers -----------------------------------------------------------------------------------
    def _boto(self):
        boto3 = require("boto3", "s3", "the run lock of an s3:// OUTPUT (a conditional PUT)")
        o = self.options
        return boto3.client("s3", endpoint_url=o.endpoint, region_name=self.region or None,
                            aws_access_key_id=o.access_key, aws_secret_access_key=o.secret_key,
                            aws_session_token=o.session_token)

    def _call(self, what: str, rel: str, fn):
        try:
            return fn()
        except OSError as exc:
            raise self._error(what, rel, exc) from None

    def _error(self, what: str, rel: str, exc: Exception) -> StoreError:
        where = rel if "://" in rel or rel.startswith("/") else self.spark_path(self.fs_path(rel))
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            hint = ("no space left on the device (or over quota): free space there, then re-run the same command "
                    "(what was committed is kept)")
        elif "ACCESS_DENIED" in text or "AccessDenied" in text or "Permission denied" in text or "403" in text:
            hint = "permission denied: check the credentials / IAM policy for this prefix"
        elif "NoSuchBucket" in text or "NETWORK_CONNECTION" in text:
            hint = "the bucket or endpoint cannot be reached: check the URI and the S3 endpoint settings"
        else:
            hint = text
        return StoreError(f"cannot {what} {where}: {hint}", exc)


def read_uri(uri: str, options: StoreOptions | None = None) -> bytes:
    """The bytes of the file at ``uri`` (a row's ``path``, a user's file); failures as :class:`StoreError`."""
    head, name = uri.rstrip("/").rsplit("/", 1)
    return Store(head, options).read_file(name)


def fetch(uri: str, options: StoreOptions | None = None) -> Path:
    """A local path for the file at ``uri`` (a user's ``--weights``, OUTPUT's pinned model): a local file
    as it is, a remote one copied once into a temporary folder."""
    loc = uris.parse(uri)
    if loc.is_local:
        return Path(loc.path).expanduser()
    data = read_uri(uri, options)
    local = Path(tempfile.mkdtemp(prefix="fruitlens-fetch-")) / uri.rstrip("/").rsplit("/", 1)[-1]
    local.write_bytes(data)
    return local


def temporary_name(name: str) -> str:
    """The hidden name an atomic local write of ``name`` goes through (``.name.tmp-<pid>-<random>``)."""
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temporary_of(name: str) -> str | None:
    """The name a temporary file of :func:`temporary_name` stands for, or None if it is not one."""
    if not name.startswith(".") or ".tmp-" not in name:
        return None
    return name[1:].split(".tmp-", 1)[0]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:  # S3: one PUT (or a multipart upload) on close
        out.write(data)


def hidden(rel: str) -> bool:
    """Spark's rule for files it never reads: any path component starting with ``.`` or ``_``."""
    return any(part.startswith(".") or (part.startswith("_") and "=" not in part) for part in rel.split("/"))
