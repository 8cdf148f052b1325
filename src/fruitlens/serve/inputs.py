"""What a request carries: its body (bounded), its photos (raw or multipart) and what each photo is.

Every refusal is an :class:`ApiError` (status, a stable ``code``, a message saying what to do), answered
as ``{"error": {...}}`` by the app; nothing here decodes pixels (that is the predictor's ``decode``).
"""
from __future__ import annotations

import asyncio
import io

from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import MultipartParser, parse_options_header

RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
FORMATS = {"JPEG": "jpg", "PNG": "png"}  # what the pipeline reads, and what uploads are stored as
BODY_TIMEOUT_S = 30.0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, photo: int | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.photo, self.retry_after = status, code, message, photo, retry_after

    def body(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.photo is not None:
            err["photo"] = self.photo
        return {"error": err}


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    if not header:
        return "application/octet-stream", {}  # curl --data-binary without -H: the bytes decide
    kind, params = parse_options_header(header)
    return kind.decode("latin-1").lower(), {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()}


#: An over-limit body is still read (and dropped) up to this many bytes before the 413 goes out. A server that
#: answers and closes with the body unread makes the kernel reset the connection, and the client may then lose
#: the 413 to "connection reset by peer" (nginx's lingering close exists for the same reason). A body declared
#: larger than this is answered at once: reading it would cost more than the client's error is worth.
DRAIN_MAX_BYTES = 64 << 20
#: How long a pause in an over-limit body ends the reading (a client that stops sending and waits for the answer).
LINGER_S = 1.0


def too_large(limit: int, declared: int | None = None) -> ApiError:
    size = f"{declared} bytes" if declared is not None else f"over the {limit} bytes"
    return ApiError(413, "body_too_large", f"the body is {size}, over the {limit} this service takes; send a "
                    "smaller photo (the model sees it at 224x224)")


async def read_body(request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The whole body, at most ``limit`` bytes, within ``timeout_s`` (else 408). More (declared, or sent chunked)
    is a 413, answered once the rest has been read and dropped: to the body's end, or until the client pauses
    for :data:`LINGER_S`, at most :data:`DRAIN_MAX_BYTES`; at once, unread, to a client that waits for
    ``100 Continue`` before sending the body."""
    header = request.headers.get("content-length")
    declared = int(header) if header is not None and header.isdigit() else None
    over = declared is not None and declared > limit
    waiting = request.headers.get("expect", "").lower() == "100-continue"  # nothing sent yet: nothing to drain
    if over and (waiting or declared > DRAIN_MAX_BYTES):
        raise too_large(limit, declared)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream().__aiter__()
    chunks, size = [], 0
    while True:
        left = deadline - loop.time()
        try:
            chunk = await asyncio.wait_for(anext(stream), max(0.0, min(left, LINGER_S) if over else left))
        except StopAsyncIteration:
            break
        except TimeoutError:
            if over:
                break
            raise ApiError(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s") from None
        size += len(chunk)
        over = over or size > limit
        if size > DRAIN_MAX_BYTES:
            break
        if not over:
            chunks.append(chunk)
    if over:
        raise too_large(limit, declared)
    return b"".join(chunks)


def split_multipart(body: bytes, boundary: str | None, max_photos: int) -> list[bytes]:
    """Every part with a file name or a content type is a photo (any field name), in order."""
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary parameter")
    parts: list[dict] = []
    header: dict = {}

    def on_part_begin():
        parts.append({"headers": {}, "data": []})

    def on_header_field(data, start, end):
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data, start, end):
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end():
        parts[-1]["headers"][header.get("field", b"").decode("latin-1").lower()] = header.get("value", b"")
        header.clear()

    def on_part_data(data, start, end):
        parts[-1]["data"].append(bytes(data[start:end]))

    done = []
    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_end": lambda: done.append(True)})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors: the body is not valid multipart
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed: {exc}") from None
    if not done:
        raise ApiError(400, "bad_multipart", "the multipart body ends before its closing boundary")
    photos = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        if b"filename" in disposition or "content-type" in part["headers"]:
            photos.append(b"".join(part["data"]))
    if not photos:
        raise ApiError(400, "no_photo", "the multipart body has no file part: send the photo as a file")
    if len(photos) > max_photos:
        raise ApiError(400, "too_many_photos", f"{len(photos)} photos in one request; at most {max_photos}")
    return photos


def sniff(content: bytes, max_pixels: int, photo: int | None = None) -> str:
    """The photo's format ("jpg" | "png") from its header, refusing what must not be decoded."""
    if not content:
        raise ApiError(400, "empty_body", "no photo: the body is empty", photo=photo)
    try:
        with Image.open(io.BytesIO(content)) as img:  # reads the header only
            fmt, (w, h) = img.format, img.size
    except UnidentifiedImageError:
        raise ApiError(422, "not_an_image", "these bytes are not an image; send a JPEG or PNG photo",
                       photo=photo) from None
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "too_many_pixels", f"refused before decoding: {exc}", photo=photo) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(422, "corrupt_image", f"the image header cannot be read: {exc}", photo=photo) from None
    if fmt not in FORMATS:
        raise ApiError(415, "unsupported_format", f"a {fmt} image; send a JPEG or PNG photo", photo=photo)
    if w * h > max_pixels:
        raise ApiError(422, "too_many_pixels", f"{w}x{h} is {w * h / 1e6:.0f} Mpx, over the "
                       f"{max_pixels / 1e6:g} Mpx this service decodes; downscale the photo", photo=photo)
    return FORMATS[fmt]
