"""What an image is: which files count, label/split from the path, decode + preprocess.

Pure functions (no Spark, no TensorFlow) so they run the same on the driver, in a worker and in tests.
"""
from __future__ import annotations

import io
from urllib.parse import unquote

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: Folder names that mark a split (Fruits-360 uses Training/Test).
SPLITS = ("training", "test", "validation")
SIZE = (224, 224)


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def label_and_split(path: str) -> tuple[str, str]:
    """``.../Training/Apple Red 1/r_1.jpg`` → ``("Apple Red 1", "Training")``.

    The label is the parent folder; the split is the folder above it when that is a known split name
    (``Training``, ``Test``, ``Validation``), else ``""``.
    """
    parts = [p for p in unquote(path).split("/") if p]
    label = parts[-2] if len(parts) >= 2 else ""
    split = parts[-3] if len(parts) >= 3 and parts[-3].lower() in SPLITS else ""
    return label, split


class DecodeError(ValueError):  # per image: recorded in OUTPUT/errors, never raised to the user
    """The bytes are not an image PIL can fully decode."""


def decode_rgb(content: bytes, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Decode any PIL-readable image, convert to RGB and resize with bicubic → uint8 (H, W, 3)."""
    if not content:
        raise DecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(content)) as img:
            img.load()  # decode fully now: a truncated file fails here, not later
            if img.mode != "RGB":
                # CMYK, L, LA, P, RGBA, I;16 ... → RGB; alpha is dropped, as Keras' loader does.
                img = img.convert("RGB")
            img = img.resize(size, Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DecodeError("not an image PIL can identify") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"cannot decode image: {exc}") from None


def preprocess(batch: np.ndarray) -> np.ndarray:
    """MobileNetV2 ``preprocess_input`` (mode "tf"), vectorised: uint8 [0, 255] → float32 [-1, 1]."""
    x = batch.astype(np.float32)
    x /= 127.5
    x -= 1.0
    return x
