"""The ASGI app: routes, the model watcher, the batcher and the pools they share.

Request path: body (bounded) → photos → each sniffed and decoded in the decode pool, for the model
current at the request's start → the batcher (one engine call for many requests) → the head's answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fruitlens.images import DecodeError
from fruitlens.serve.batcher import MicroBatcher, Overloaded
from fruitlens.serve.config import ServeConfig
from fruitlens.serve.inputs import RAW_TYPES, ApiError, media_type, read_body, sniff, split_multipart
from fruitlens.serve.metrics import Metrics
from fruitlens.serve.models import ModelHandle, ModelNotReady, PredictorSource
from fruitlens.serve.page import page_and_csp

log = logging.getLogger("fruitlens.serve")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}


class Service:
    """What the routes share: config, the model served, pools, batcher, metrics, uploads."""

    def __init__(self, config: ServeConfig, source: PredictorSource | None = None) -> None:
        self.config = config
        self.source = source or PredictorSource(config.output)
        self.metrics = Metrics()
        self.current: ModelHandle | None = None
        self.draining = False
        self.decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="fruitlens-decode")
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="fruitlens-infer")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="fruitlens-load")
        self.batcher: MicroBatcher | None = None
        self.uploads = None  # fruitlens.serve.uploads.UploadStore with --keep-uploads
        self._watcher: asyncio.Task | None = None
        self._last_problem: str | None = None

    # -- model -------------------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Load a newer predictor if there is one; True if the model served changed."""
        loop = asyncio.get_running_loop()
        try:
            handle = await loop.run_in_executor(self.load_pool, lambda: self.source.load(
                batch_size=self.config.max_batch, threads=self.config.engine_threads, known=self.current))
        except ModelNotReady as exc:
            self._problem(str(exc), count=self.current is not None)
            return False
        except Exception as exc:  # noqa: BLE001 - a broken predictor must not stop the one being served
            self._problem(f"cannot load the predictor: {exc}", count=True)
            return False
        self._last_problem = None
        if handle is None:
            return False
        old, self.current = self.current, handle  # the swap: one assignment on the event loop
        self.metrics.set_model(handle.info)
        if old is not None:
            self.metrics.swaps.inc()
        log.info("serving model %s (trained %s, test accuracy %s)%s", handle.info["version"],
                 handle.info["trained_at"], handle.info["test_accuracy"],
                 f", replacing {old.info['version']}" if old else "")
        return True

    def _problem(self, message: str, *, count: bool) -> None:
        if count:
            self.metrics.load_failures.inc()
        if message != self._last_problem:  # one line per new problem, not one per poll
            log.warning("%s", message)
            self._last_problem = message

    async def _watch(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.config.poll_s)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        m = self.metrics
        self.batcher = MicroBatcher(
            self.infer_pool, max_batch=self.config.max_batch, wait_s=self.config.batch_wait_ms / 1000,
            max_queue=self.config.max_queue, timeout_s=self.config.queue_timeout_s,
            on_batch=lambda n, s: (m.batch_size.observe(n), m.inference.observe(s)), on_queue=m.queue.set)
        self.batcher.start()
        if self.uploads is not None:
            await self.uploads.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="fruitlens-model-watcher")

    async def stop(self) -> None:
        self.draining = True
        if self._watcher:
            self._watcher.cancel()
        if self.batcher:
            await self.batcher.stop()
        if self.uploads is not None:
            await self.uploads.stop()
        for pool in (self.decode_pool, self.infer_pool, self.load_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self.batcher is not None and self.batcher.alive and self._watcher is not None and not self._watcher.done()

    # -- predict -----------------------------------------------------------------------------------
    def decode(self, handle: ModelHandle, content: bytes, photo: int | None):
        """In the decode pool: (id, format, pixels) or the ApiError saying why not."""
        try:
            fmt = sniff(content, self.config.max_pixels, photo)
            try:
                pixels = handle.predictor.decode(content)
            except DecodeError as exc:
                code = "too_many_pixels" if "too large" in str(exc) else "corrupt_image"
                raise ApiError(422, code, f"{exc}; send a complete JPEG or PNG photo", photo=photo) from None
            return hashlib.sha256(content).hexdigest(), fmt, pixels
        except ApiError as exc:
            return exc

    async def predict(self, photos: list[bytes], top_k: int, many: bool) -> tuple[int, dict]:
        handle = self.current
        if self.draining:
            raise ApiError(503, "draining", "this instance is shutting down; retry", retry_after=1)
        if handle is None:
            raise ApiError(503, "not_ready", "no model loaded yet (has `fruitlens train` run on OUTPUT?)",
                           retry_after=max(1, int(self.config.poll_s)))
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(
            self.decode_pool, self.decode, handle, p, i if many else None) for i, p in enumerate(photos)))
        good = [d for d in decoded if not isinstance(d, ApiError)]
        try:
            futures = self.batcher.submit(handle, [d[2] for d in good])
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), retry_after=exc.retry_after) from None
        try:
            probs = await asyncio.gather(*futures)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), retry_after=exc.retry_after) from None
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        answers, it = [], iter(zip(good, probs, strict=True))
        for i, d in enumerate(decoded):
            if isinstance(d, ApiError):
                self.metrics.photos.labels(d.code).inc()
                answers.append(d)
                continue
            (sha, fmt, _), p = next(it)
            result = handle.predictor.result("", p, top_k)
            answer = {"id": sha, "label": result["label"], "probability": result["probability"],
                      "top": result["top"], "model": handle.public}
            self.metrics.photos.labels("labelled").inc()
            if self.uploads is not None:
                self.uploads.keep(sha, fmt, photos[i], result["label"])
            answers.append(answer)
        if not many:
            if isinstance(answers[0], ApiError):
                raise answers[0]
            return 200, answers[0]
        ok = any(not isinstance(a, ApiError) for a in answers)
        return (200 if ok else 422), {"results": [a.body() if isinstance(a, ApiError) else a for a in answers]}


def _error_response(exc: ApiError, metrics: Metrics) -> JSONResponse:
    metrics.errors.labels(exc.code).inc()
    headers = dict(SECURITY_HEADERS)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 413:  # read_body may have left part of it unread (a pause, 64 MiB, Expect): never reuse the connection
        headers["Connection"] = "close"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def create_app(config: ServeConfig, *, source: PredictorSource | None = None, uploads=None) -> Starlette:
    service = Service(config, source)
    service.uploads = uploads
    if uploads is not None:
        uploads.metrics = service.metrics
    html, csp = page_and_csp()

    async def predict(request: Request) -> Response:
        kind, params = media_type(request.headers.get("content-type"))
        if kind not in RAW_TYPES and kind != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", f"Content-Type {kind} is not a photo: send image/jpeg, "
                           "image/png, application/octet-stream or multipart/form-data")
        try:
            top_k = int(request.query_params.get("top_k", config.top_k))
        except ValueError:
            raise ApiError(400, "bad_top_k", "top_k must be a whole number") from None
        if not 1 <= top_k <= 1000:
            raise ApiError(400, "bad_top_k", "top_k must be between 1 and the number of labels")
        body = await read_body(request, config.max_body_bytes)
        if kind == "multipart/form-data":
            photos = split_multipart(body, params.get("boundary"), config.max_photos)
        else:
            if not body:
                raise ApiError(400, "empty_body", "no photo: the body is empty; send the photo's bytes")
            photos = [body]
        status, answer = await service.predict(photos, top_k, many=len(photos) > 1)
        return JSONResponse(answer, status_code=status, headers=SECURITY_HEADERS)

    async def feedback(request: Request) -> Response:
        if service.uploads is None:
            raise ApiError(404, "uploads_off", "this service keeps no photos (start it with --keep-uploads)")
        return await service.uploads.feedback(request, service)

    async def model(request: Request) -> Response:
        h = service.current
        if h is None:
            raise ApiError(503, "not_ready", "no model loaded yet", retry_after=max(1, int(config.poll_s)))
        return JSONResponse({**h.public, "labels": h.info["labels"], "classes": h.info["classes"],
                             "image_size": h.info["image_size"], "precision": h.info["precision"]},
                            headers=SECURITY_HEADERS)

    async def healthz(request: Request) -> Response:
        ok = service.alive
        return JSONResponse({"alive": ok}, status_code=200 if ok else 503, headers=SECURITY_HEADERS)

    async def readyz(request: Request) -> Response:
        h = service.current
        ready = h is not None and not service.draining and service.alive
        body = {"ready": ready, "model": h.public if h else None, "draining": service.draining}
        return JSONResponse(body, status_code=200 if ready else 503, headers=SECURITY_HEADERS)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return HTMLResponse(html, headers={**SECURITY_HEADERS, "Content-Security-Policy": csp,
                                           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"})

    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc, service.metrics)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail)), service.metrics)

    async def internal(request: Request, exc: Exception) -> Response:
        rid = uuid.uuid4().hex[:12]
        log.error("request %s %s failed (id %s)", request.method, request.url.path, rid, exc_info=exc)
        return _error_response(ApiError(500, "internal", f"internal error (id {rid}); it is logged"), service.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [Route("/", page, methods=["GET"]), Route("/v1/predict", predict, methods=["POST"]),
              Route("/v1/feedback", feedback, methods=["POST"]), Route("/v1/model", model, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal})
    app.state.service = service
    app.add_middleware(_Measure, metrics=service.metrics)
    return app


class _Measure:
    """Pure ASGI middleware: counts and times every HTTP request by route and status."""

    ROUTES = ("/", "/v1/predict", "/v1/feedback", "/v1/model", "/healthz", "/readyz", "/metrics")

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.ROUTES else "other"
        status = {"code": 500}
        t = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t)
