"""`--keep-uploads URI`: the photos the service sees, kept once each, as the next run's data.

Layout: ``URI/<label>/<sha256>.<jpg|png>`` (the original bytes; Fruits-360's folder-per-label layout), the
label predicted, or the one confirmed later with ``POST /v1/feedback``. The next ``fruitlens run`` on
that INPUT reads only the new files (the ledger), and ``train`` learns from them.
Writes happen after the answer, in a bounded background queue: the API never waits on storage.
A feedback move first records its intent under ``URI/_feedback/`` (hidden from runs: ``_`` prefix), so
another replica finds a moved photo and an interrupted move is finished at the next start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import unicodedata

import pyarrow.fs as pafs
from starlette.requests import Request
from starlette.responses import JSONResponse

from fruitlens.images import label_and_split
from fruitlens.serve.config import ServeConfig, ServeConfigError
from fruitlens.serve.inputs import ApiError
from fruitlens.storage import uris
from fruitlens.storage.store import Store, StoreError, StoreOptions

log = logging.getLogger("fruitlens.serve")
INTENTS = "_feedback"
QUEUE = 256
_NAME = re.compile(r"^([0-9a-f]{64})\.(jpg|png)$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_label(label) -> str:
    """A label as a folder name Spark and train read: one path segment, NFC, printable, not hidden."""
    if not isinstance(label, str) or not label.strip():
        raise ApiError(422, "bad_label", "label must be a non-empty string")
    label = unicodedata.normalize("NFC", label)
    if (len(label) > 128 or label in (".", "..") or label[0] in "._" or any(c in label for c in "/\\")
            or any(unicodedata.category(c).startswith("C") for c in label)):
        raise ApiError(422, "bad_label", "label must be one folder name: at most 128 characters, no / or \\ "
                       "or control characters, not starting with . or _")
    return label


class UploadStore:
    def __init__(self, store: Store, *, allow_new_labels: bool = False) -> None:
        self.store = store
        self.allow_new_labels = allow_new_labels
        self.index: dict[str, str] = {}  # sha → rel path, of what this replica knows is stored
        self.pending: dict[str, list] = {}  # sha → [label, fmt, data] queued, not written yet
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.metrics = None

    @classmethod
    def open(cls, config: ServeConfig, options: StoreOptions | None = None) -> UploadStore:
        """Refuses (one line) a URI whose photos the next train would not learn from."""
        options = options or StoreOptions.from_environment()
        uri = uris.qualify(config.keep_uploads)
        manifest_text = Store(uris.qualify(config.output), options).read_text("manifest.json")
        split = (json.loads(manifest_text).get("classifier") or {}).get("split") if manifest_text else None
        if split == "folders" and label_and_split(f"{uri}/label/photo.jpg")[1].lower() != "training":
            raise ServeConfigError(
                f"--keep-uploads {config.keep_uploads}: OUTPUT was trained on Training/Test folders, and photos "
                "kept there would not be in the Training split; keep them under INPUT/Training")
        store = Store(uri, options)
        store.make_dirs("", INTENTS)
        return cls(store, allow_new_labels=config.allow_new_labels)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(QUEUE)
        await asyncio.to_thread(self._reconcile)
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="fruitlens-uploads")

    async def stop(self, drain_s: float = 10.0) -> None:
        deadline = time.monotonic() + drain_s
        while self._queue is not None and not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._task:
            self._task.cancel()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.uploads.labels(outcome).inc()

    def _reconcile(self) -> None:
        """Index what is stored; finish moves an earlier process recorded but did not complete."""
        for info in self.store.list("", recursive=True):
            rel = info.path[len(self.store.fs_path()) + 1:]
            parts = rel.split("/")
            m = _NAME.match(parts[-1])
            if len(parts) == 2 and m:
                if m.group(1) in self.index:  # two copies: a move was interrupted; the intent decides
                    self._finish_move(m.group(1))
                else:
                    self.index[m.group(1)] = rel
        for info in self.store.fs.get_file_info(pafs.FileSelector(self.store.fs_path(INTENTS), allow_not_found=True)):
            sha = info.base_name.removesuffix(".json")
            if _SHA.match(sha) and sha in self.index:
                self._finish_move(sha)

    def _intent(self, sha: str) -> dict | None:
        text = self.store.read_text(f"{INTENTS}/{sha}.json")
        return json.loads(text) if text else None

    def _finish_move(self, sha: str) -> None:
        intent = self._intent(sha)
        if intent is None:
            return
        found = [i.path for i in self.store.list("", recursive=True) if i.base_name.startswith(sha + ".")]
        target = [p for p in found if p.split("/")[-2] == intent["label"]]
        for p in found:
            if target and p not in target:
                self.store.delete(p)
            elif not target:
                ext = p.rsplit(".", 1)[1]
                dst = self.store.fs_path(f"{intent['label']}/{sha}.{ext}")
                self.store.make_dirs(intent["label"])
                self.store.fs.move(p, dst)
                target = [dst]
        if target:
            self.index[sha] = target[0][len(self.store.fs_path()) + 1:]

    # -- keeping -----------------------------------------------------------------------------------
    def keep(self, sha: str, fmt: str, data: bytes, label: str) -> None:
        """After an answer: queue the photo (never blocks; a full queue drops it, counted)."""
        if sha in self.index or sha in self.pending:
            self._count("duplicate")
            return
        try:
            self._queue.put_nowait(sha)
        except asyncio.QueueFull:
            self._count("dropped")
            return
        self.pending[sha] = [label, fmt, data]

    async def _write_loop(self) -> None:
        while True:
            sha = await self._queue.get()
            label, fmt, data = self.pending[sha]
            rel = f"{label}/{sha}.{fmt}"
            try:
                await asyncio.to_thread(self._write, rel, data)
                self.index[sha] = rel
                self._count("stored")
            except Exception as exc:  # noqa: BLE001 - storage trouble loses one kept photo, never an answer
                log.warning("could not keep %s: %s", rel, exc)
                self._count("failed")
            finally:
                self.pending.pop(sha, None)

    def _write(self, rel: str, data: bytes) -> None:
        if self.store.exists(rel):  # kept by another replica
            return
        self.store.make_dirs(rel.rsplit("/", 1)[0])
        self.store.write_bytes(rel, data)

    def flush(self) -> None:
        """Test helper: wait (from another thread) until the queue is written."""
        deadline = time.monotonic() + 30
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- feedback ----------------------------------------------------------------------------------
    async def feedback(self, request: Request, service) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            raise ApiError(400, "bad_json", 'send JSON: {"id": "<the id predict answered>", "label": "..."}') from None
        if not isinstance(body, dict) or not _SHA.match(str(body.get("id", ""))):
            raise ApiError(400, "bad_feedback", 'send {"id": "<the 64-hex id predict answered>", "label": "..."}')
        sha, label = body["id"], check_label(body.get("label"))
        labels = service.current.info["labels"] if service.current else []
        if not self.allow_new_labels and label not in labels:
            raise ApiError(422, "unknown_label", f"{label!r} is not one of the model's labels (the service "
                           "allows new ones with --allow-new-labels)")
        if sha in self.pending:  # not written yet: write it under the confirmed label
            self.pending[sha][0] = label
            moved = True
            path = f"{label}/{sha}.{self.pending[sha][1]}"
        else:
            path, moved = await asyncio.to_thread(self._move, sha, label, labels)
        if self.metrics is not None:
            self.metrics.feedback.labels("moved" if moved else "unchanged").inc()
        return JSONResponse({"id": sha, "label": label, "path": f"{self.store.uri}/{path}", "moved": moved})

    def _locate(self, sha: str, labels: list[str]) -> str | None:
        if sha in self.index and self.store.exists(self.index[sha]):
            return self.index[sha]
        intent = self._intent(sha)  # moved by another replica
        for label in ([intent["label"]] if intent else []) + list(labels):
            for ext in ("jpg", "png"):
                if self.store.exists(f"{label}/{sha}.{ext}"):
                    return f"{label}/{sha}.{ext}"
        return None

    def _move(self, sha: str, label: str, labels: list[str]) -> tuple[str, bool]:
        rel = self._locate(sha, labels)
        if rel is None:
            raise ApiError(404, "unknown_id", f"no kept photo has id {sha}")
        if rel.split("/")[0] == label:
            return rel, False
        dst = f"{label}/{rel.split('/', 1)[1]}"
        try:
            self.store.write_text(f"{INTENTS}/{sha}.json", json.dumps({"label": label, "at": time.time()}))
            self.store.make_dirs(label)
            self.store.fs.move(self.store.fs_path(rel), self.store.fs_path(dst))
        except (OSError, StoreError) as exc:
            raise ApiError(503, "storage_unavailable", f"could not move the photo: {exc}", retry_after=5) from None
        self.index[sha] = dst
        return dst, True
