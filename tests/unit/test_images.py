"""Pure image functions: which files count, label/split, decode of every mode, preprocessing = Keras'."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ORIGINAL, SAMPLE, image_bytes, real_images, truncated_jpeg
from PIL import Image

from fruitlens import images as images_module
from fruitlens.images import (
    DecodeError,
    decode_rgb,
    is_image_path,
    label_and_split,
    preprocess,
    to_rgb,
)


@pytest.mark.parametrize("path, expected", [
    ("file:/d/fruits/Training/Apple Red 1/r_1.jpg", ("Apple Red 1", "Training")),
    ("s3://bucket/fruits-360/Test/Banana/0_100.jpg", ("Banana", "Test")),
    ("file:/d/Test/Kiwi/x.JPG", ("Kiwi", "Test")),
    ("file:/d/photos/Kiwi/x.jpg", ("Kiwi", "")),  # no split folder above the class
    ("file:/d/fruits 360/Test/Orange ü 2/x.jpg", ("Orange ü 2", "Test")),
    # Names are literal: a "%" or "#" is a character of the folder's name, never URL syntax.
    ("file:/d/Training/100%25 juice/x.jpg", ("100%25 juice", "Training")),
    ("file:/d/Test/pct%41b/x.jpg", ("pct%41b", "Test")),
    ("file:/d/in%20x/Test/a#b?c [1] 'q' \"d\"/x.jpg", ("a#b?c [1] 'q' \"d\"", "Test")),
    ("s3a://bucket/Test/100% juice#2/x.jpg", ("100% juice#2", "Test")),
    ("x.jpg", ("", "")),
])
def test_label_is_the_parent_folder_and_split_the_one_above(path, expected):
    assert label_and_split(path) == expected


@pytest.mark.parametrize("name, ok", [
    ("a.jpg", True), ("a.JPG", True), ("a.Jpeg", True), ("a.png", True), ("a.PNG", True),
    ("a.gif", False), ("a.txt", False), ("jpg", False), ("a.jpg.bak", False),
])
def test_only_jpeg_and_png_in_any_case_are_images(name, ok):
    assert is_image_path(name) is ok


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                       ("LA", "PNG"), ("RGB", "JPEG")])
def test_every_mode_decodes_to_224x224_rgb(mode, fmt):
    out = decode_rgb(image_bytes(mode, fmt))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.std() > 0  # a real picture, not a blank


def test_greyscale_becomes_three_equal_channels():
    out = decode_rgb(image_bytes("L", "PNG"))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"GIF89a this is not really an image", "not an image"),
    (b"plain text, named .jpg\n", "not an image"),
    (None, "cannot decode"),  # truncated JPEG, filled in below
])
def test_undecodable_bytes_raise_a_decode_error_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_rgb(truncated_jpeg() if data is None else data)


def test_resize_is_pil_bicubic_as_the_seed_project_did():
    path = real_images(per_class=1, classes=1)[0]
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB").resize((224, 224), Image.BICUBIC))
    assert np.array_equal(decode_rgb(path.read_bytes()), expected)


def test_preprocess_maps_0_255_to_minus1_plus1():
    x = preprocess(np.array([[[[0, 127, 255]]]], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [-1.0, 127 / 127.5 - 1, 1.0], rtol=0, atol=1e-7)


# -- every mode gives the right picture ------------------------------------------------------------------

def _photo(size=(60, 40)) -> Image.Image:
    """A real photo (RGB), small and not square, so that a turn or a flip shows."""
    with Image.open(real_images(per_class=1, classes=1)[0]) as src:
        return src.convert("RGB").resize(size)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png(width: int, height: int, rows, *, colour_type: int, bit_depth: int) -> bytes:
    """A PNG written by hand, row by row (16-bit RGB, or a huge one, without holding its pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\0" + row) for row in rows) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The reference for transparency: each pixel composited onto white, then the same bicubic resize."""
    a = alpha.astype(np.float64)[..., None] / 255
    out = np.rint(rgb.astype(np.float64) * a + 255 * (1 - a)).astype(np.uint8)
    return np.asarray(Image.fromarray(out, "RGB").resize((224, 224), Image.BICUBIC))


def _rgb_of(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((224, 224), Image.BICUBIC))


GREY = np.asarray(_photo().convert("L")) if SAMPLE.is_dir() else None


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_greyscale_decodes_as_its_8_bit_original_not_white(mode, fmt):
    """Samples v*257 (v's 16-bit value) must decode as v: PIL's own conversion turned them all white."""
    wide = GREY.astype(np.uint16) * 257
    if mode == "I":
        img = Image.fromarray(wide.astype(np.int32))
    else:
        raw = wide.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        img = Image.frombytes(mode, (wide.shape[1], wide.shape[0]), raw)
    data = _encode(img, fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == mode  # the file really holds that mode
    np.testing.assert_array_equal(decode_rgb(data), _rgb_of(Image.fromarray(GREY, "L")))


def test_16_bit_rgb_png_decodes_as_its_8_bit_original():
    rgb = np.asarray(_photo())
    wide = rgb.astype(">u2") * 257
    data = _png(rgb.shape[1], rgb.shape[0], (row.tobytes() for row in wide), colour_type=2, bit_depth=16)
    np.testing.assert_array_equal(decode_rgb(data), _rgb_of(Image.fromarray(rgb)))


def test_floating_point_keeps_pils_0_to_255_scale():
    data = _encode(Image.fromarray(GREY, "L").convert("F"), "TIFF")
    np.testing.assert_array_equal(decode_rgb(data), _rgb_of(Image.fromarray(GREY, "L")))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P+tRNS"])
def test_transparency_is_composited_onto_white(mode):
    photo = _photo()
    alpha = np.asarray(Image.linear_gradient("L").resize(photo.size))
    alpha = np.where(alpha < 60, 0, alpha).astype(np.uint8)  # a fully transparent part too
    if mode == "P+tRNS":  # a palette PNG whose index 0 is transparent
        img = photo.quantize(64)
        index = np.asarray(img).copy()
        index[alpha == 0] = 0
        img = Image.fromarray(index, "P")
        palette = photo.quantize(64).getpalette()
        palette[:3] = [255, 0, 255]  # the colour under the transparent pixels: magenta, never shown
        img.putpalette(palette)
        img.info["transparency"] = 0
        data = _encode(img, "PNG", transparency=0)
        rgb, a = np.asarray(img.convert("RGB")), np.where(index == 0, 0, 255).astype(np.uint8)
        expected = _over_white(rgb, a)
        np.testing.assert_allclose(decode_rgb(data), expected, atol=1)
        return
    grey = mode in ("LA",)
    base = photo.convert("L") if grey else photo
    rgb = np.asarray(base.convert("RGB"))
    if mode == "PA":  # no format PIL writes holds PA: check the conversion on the decoded image
        img = photo.quantize(64).convert("PA")
        img.putalpha(Image.fromarray(alpha))
        rgb = np.asarray(img.convert("RGB"))
        out = to_rgb(img)
    else:
        img = base.convert(mode)
        img.putalpha(Image.fromarray(alpha))
        out = decode_rgb(_encode(img, "PNG"))
    diff = np.abs(out.astype(int) - _over_white(rgb, alpha).astype(int))
    assert diff.max() <= 1, (diff.mean(), diff.max())  # rounding
    assert out[0, 0].tolist() == [255, 255, 255]  # the transparent corner is white, not the hidden colour


@pytest.mark.parametrize("mode, fmt, reference, mean, worst", [
    ("CMYK", "TIFF", "photo", 0, 0),  # PIL's RGB -> CMYK -> RGB is exact
    ("CMYK", "JPEG", "photo", 3, 40),  # + JPEG's loss
    ("YCbCr", "TIFF", "photo", 1.5, 4),  # PIL's YCbCr round trip
    ("LAB", "TIFF", "photo", 1.5, 8),
    ("L", "PNG", "itself", 0, 0), ("P", "PNG", "itself", 0, 0), ("1", "PNG", "itself", 0, 0),
    ("RGB", "PNG", "photo", 0, 0),
])
def test_other_modes_decode_to_the_picture_they_hold(mode, fmt, reference, mean, worst):
    photo = _photo()
    img = photo.convert(mode)
    data = _encode(img, fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == mode
    expected = _rgb_of(photo if reference == "photo" else img)
    diff = np.abs(decode_rgb(data).astype(int) - expected.astype(int))
    assert diff.mean() <= mean and diff.max() <= worst, (diff.mean(), diff.max())


# -- EXIF orientation ------------------------------------------------------------------------------------

#: How a photo is stored for each EXIF orientation (the inverse of the turn a viewer applies).
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_the_exif_orientation_is_applied_as_phones_and_viewers_do(orientation):
    upright = _photo((90, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = _encode(upright.transpose(STORED[orientation]), "PNG", exif=exif)
    np.testing.assert_array_equal(decode_rgb(stored), decode_rgb(_encode(upright, "PNG")))


def test_a_turned_phone_jpeg_is_upright():
    upright = _photo((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # the usual portrait photo: stored on its side
    stored = _encode(upright.transpose(STORED[6]), "JPEG", quality=95, exif=exif)
    diff = np.abs(decode_rgb(stored).astype(int) - decode_rgb(_encode(upright, "JPEG", quality=95)).astype(int))
    assert diff.mean() < 2, diff.mean()  # JPEG noise only; unturned, it would be another picture


def test_photos_without_orientation_decode_exactly_as_before():
    """Fruits-360 photos carry no EXIF orientation and are smaller than 2x224 (no draft): their pixels,
    hence their features, are those of the plain PIL decode + bicubic resize."""
    paths = real_images(per_class=3) + sorted(ORIGINAL.rglob("*.jpg"))
    assert len(paths) > 150
    for path in paths:
        with Image.open(path) as img:
            assert _orientation_of(img) is None
            expected = np.asarray(img.convert("RGB").resize((224, 224), Image.BICUBIC))
        np.testing.assert_array_equal(decode_rgb(path.read_bytes()), expected, err_msg=str(path))


def _orientation_of(img: Image.Image):
    return img.getexif().get(0x0112)


# -- memory per image is bounded -------------------------------------------------------------------------

def test_a_huge_png_is_refused_from_its_header_without_decoding_its_pixels(tmp_path):
    """13,300² pixels (177 Mpx: under PIL's bomb limit) of one colour: 0.2 MB on disk, 0.7 GB decoded.
    Refused as an error before any pixel is decoded: the process never grows by the image."""
    side = 13_300
    path = tmp_path / "huge.png"
    row = bytes(side)
    path.write_bytes(_png(side, side, (row for _ in range(side)), colour_type=0, bit_depth=8))
    assert path.stat().st_size < 1_000_000
    script = (  # VmHWM: this process's peak (ru_maxrss would carry the forking test process's over exec)
        "import re, sys\n"
        "from fruitlens.images import DecodeError, decode_rgb\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "try:\n    decode_rgb(data)\nexcept DecodeError as exc:\n    print(exc)\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(images_module.__file__).parents[1])}).stdout
    *message, peak_mb = out.strip().splitlines()
    message = " ".join(message)  # empty if it was decoded
    assert "image too large: 13300x13300 pixels (177 Mpx)" in message and "--max-image-mpx" in message
    assert int(peak_mb) < 150, f"peak RSS {peak_mb} MB: the pixels were decoded"


def test_the_pixel_budget_is_configurable():
    data = _encode(_photo((100, 100)), "PNG")
    assert decode_rgb(data, max_megapixels=0.01).shape == (224, 224, 3)  # 10,000 px: exactly the limit
    with pytest.raises(DecodeError, match=r"image too large: 100x100 pixels .* over the 0.005 Mpx"):
        decode_rgb(data, max_megapixels=0.005)


def _mosaic(width: int, height: int, seed: int = 0) -> Image.Image:
    """A large photo-like JPEG source: the original-size photos (up to ~870 px) side by side, at their own
    resolution, so it has a real photo's detail (not an upscaled, smooth one)."""
    rng = np.random.default_rng(seed)
    photos = sorted(ORIGINAL.rglob("*.jpg"))
    canvas = Image.new("RGB", (width, height), "white")
    for y in range(0, height, 400):
        for x in range(0, width, 400):
            with Image.open(photos[rng.integers(len(photos))]) as img:
                canvas.paste(img.convert("RGB").resize((400, 400)), (x, y))
    return canvas


def test_a_large_jpeg_is_decoded_reduced_and_matches_a_full_decode():
    """A 12 Mpx phone-size JPEG decodes at 1/4 scale (0.75 Mpx): within a 2 Mpx budget, where a full
    decode would be refused, and within a few grey levels of the full decode's 224x224 picture."""
    data = _encode(_mosaic(4000, 3000), "JPEG", quality=92)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        full = np.asarray(img.convert("RGB").resize((224, 224), Image.BICUBIC)).astype(int)
    drafted = decode_rgb(data, max_megapixels=2).astype(int)
    diff = np.abs(drafted - full)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2 and diff.max() <= 8, (diff.mean(), diff.max())
