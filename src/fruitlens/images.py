"""What an image is: which files count, label/split from the path, decode + preprocess.

Pure functions (no Spark, no TensorFlow) so they run the same on the driver, in a worker and in tests.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fruitlens.config import MAX_IMAGE_MPX

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Folder names that mark a split (Fruits-360 uses Training/Test).
SPLITS = ("training", "test", "validation")
SIZE = (224, 224)


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def label_and_split(path: str) -> tuple[str, str]:
    """``.../Training/Apple Red 1/r_1.jpg`` → ``("Apple Red 1", "Training")``.

    The label is the parent folder, literally (``100%25 juice`` is that name, not ``100% juice``); the
    split is the folder above it when that is a known split name (``Training``, ``Test``,
    ``Validation``), else ``""``.
    """
    parts = [p for p in path.split("/") if p]
    label = parts[-2] if len(parts) >= 2 else ""
    split = parts[-3] if len(parts) >= 3 and parts[-3].lower() in SPLITS else ""
    return label, split


class DecodeError(ValueError):  # per image: recorded in OUTPUT/errors, never raised to the user
    """The bytes are not an image PIL can fully decode (or one over the pixel budget)."""


#: The pixel budget per image (``--max-image-mpx``, why this default: fruitlens.config), counted as
#: decoded (a JPEG after ``draft``).
MAX_MEGAPIXELS = MAX_IMAGE_MPX
#: A JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, ``Image.draft``) while that still
#: leaves at least this many times the output size: the bicubic resize then still averages over 2+
#: source pixels per output pixel, and the result is within a few grey levels of a full decode
#: (tests/unit/test_images.py), for a fraction of the memory and time (a 12 Mpx photo decodes as 0.75 Mpx).
DRAFT_MARGIN = 2
#: The EXIF tag of the orientation (1: as stored; 2-8: flipped and/or turned).
_ORIENTATION = 0x0112
#: Modes holding 16 bits (or more) per sample: PNG's and TIFF's 16-bit greyscale. PIL's own conversion
#: to 8 bits clips them (every value over 255 becomes white); they are scaled by keeping the high byte,
#: as PIL does itself for 16-bit RGB(A) PNGs.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Modes whose transparency is composited (``transparency`` in ``img.info``: P, L or RGB with a tRNS chunk).
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# The pixel budget below replaces PIL's warning (89-179 Mpx), which a JPEG decoded reduced never reaches.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_rgb(content: bytes, size: tuple[int, int] = SIZE, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """Decode any PIL-readable image to the picture a viewer shows, as RGB resized with bicubic → uint8 (H, W, 3).

    - The EXIF orientation is applied (``ImageOps.exif_transpose``): phones store photos as the sensor
      read them and record the turn in EXIF; every viewer (and every phone's gallery) shows them turned,
      so the fruit the user photographed upright is upright here too. Photos without the tag (Fruits-360,
      and the photos of most cameras held level) are unchanged.
    - 16-bit samples are scaled to 8 (high byte), not clipped; floating point (``F``) keeps PIL's 0-255 scale.
    - Transparency (RGBA, LA, PA, palette or colour-keyed PNGs) is composited onto white, as a viewer on a
      white page shows it and as Fruits-360's photos are lit (on white); the colour under a transparent
      pixel is arbitrary (often black) and never part of the picture.
    - CMYK, YCbCr, LAB, HSV, 1-bit, greyscale, palette: PIL's conversion to RGB.
    - Memory is bounded: a JPEG is decoded reduced when much larger than ``size`` (:data:`DRAFT_MARGIN`),
      and an image over ``max_megapixels`` as decoded is refused from its header, before its pixels are
      decoded (:class:`DecodeError`).
    """
    if not content:
        raise DecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(content)) as img:
            declared = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (size[0] * DRAFT_MARGIN, size[1] * DRAFT_MARGIN))
            width, height = img.size
            if width * height > max_megapixels * 1e6:
                raise DecodeError(
                    f"image too large: {declared[0]}x{declared[1]} pixels ({declared[0] * declared[1] / 1e6:.0f} Mpx) "
                    f"is over the {max_megapixels:g} Mpx a photo may have when decoded (--max-image-mpx); "
                    "downscale it, or raise the limit if the workers have the memory")
            img.load()  # decode fully now: a truncated file fails here, not later
            if _orientation(img) != 1:
                ImageOps.exif_transpose(img, in_place=True)
            return to_rgb(img, size)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image PIL can identify") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"cannot decode image: {exc}") from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF: viewers ignore it, so the picture is as stored
        return 1


def to_rgb(img: Image.Image, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A decoded image of any mode as RGB uint8 (H, W, 3) at ``size`` (the rules: :func:`decode_rgb`)."""
    if img.mode in _WIDE_MODES:
        samples = np.asarray(img)
        if img.mode == "I":  # 32-bit integers: 16-bit data (PNG, TIFF); anything outside clips
            samples = np.clip(samples, 0, 65535)
        img = Image.fromarray((samples >> 8).astype(np.uint8), "L")
    elif img.mode == "F":
        img = img.convert("L")  # PIL's scale: 0-255, rounded and clipped
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        img = Image.new("RGB", rgba.size, "white")
        img.paste(rgba, (0, 0), rgba)  # the alpha channel as the mask: one RGB copy, blended in place
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img.resize(size, Image.BICUBIC), dtype=np.uint8)


def preprocess(batch: np.ndarray) -> np.ndarray:
    """MobileNetV2 ``preprocess_input`` (mode "tf"), vectorised: uint8 [0, 255] → float32 [-1, 1]."""
    x = batch.astype(np.float32)
    x /= 127.5
    x -= 1.0
    return x
