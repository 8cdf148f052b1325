"""Hostile request bodies for `fruitlens serve` (its tests and `make bench-serve`): each what it claims."""
from __future__ import annotations

import functools
import os
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=4)
def png_bomb(side: int = 12000) -> bytes:
    """A real decompression bomb: a side×side RGB PNG of zero rows (~0.4 MB for 12000², 432 MB decoded)."""
    row = b"\0" * (1 + 3 * side)
    z = zlib.compressobj(1)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def jpeg_huge_header(jpeg: bytes, side: int = 30000) -> bytes:
    """A real JPEG whose frame header (SOF0/SOF2) claims side×side pixels."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = jpeg.find(marker)
        if i >= 0:
            return jpeg[:i + 5] + struct.pack(">HH", side, side) + jpeg[i + 9:]
    raise ValueError("no SOF0/SOF2 marker in this JPEG")


def garbage(n: int = 4096, seed: int = 0) -> bytes:
    return bytes((i * 7919 + seed) % 251 for i in range(n)) if seed else os.urandom(n)


def truncated(jpeg: bytes) -> bytes:
    return jpeg[: len(jpeg) // 2]


def gif() -> bytes:
    """A 1×1 GIF: an image, but not a format the pipeline reads."""
    return (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
            b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
