"""Pure image functions: which files count, label/split, decode of every mode, preprocessing = Keras'."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ORIGINAL, image_bytes, real_images, truncated_jpeg
from PIL import Image

from fruitlens.images import (
    DecodeError,
    decode_rgb,
    is_image_path,
    label_and_split,
    preprocess,
)


@pytest.mark.parametrize("path, expected", [
    ("file:/d/fruits/Training/Apple Red 1/r_1.jpg", ("Apple Red 1", "Training")),
    ("s3://bucket/fruits-360/Test/Banana/0_100.jpg", ("Banana", "Test")),
    ("file:/d/Test/Kiwi/x.JPG", ("Kiwi", "Test")),
    ("file:/d/photos/Kiwi/x.jpg", ("Kiwi", "")),  # no split folder above the class
    ("file:/d/fruits%20360/Test/Orange%20%C3%BC%202/x.jpg", ("Orange ü 2", "Test")),
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
                                       ("LA", "PNG"), ("I;16", "PNG"), ("RGB", "JPEG")])
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


@pytest.mark.slow
def test_preprocessing_equals_keras_on_real_photos():
    """decode + resize + preprocess == keras load_img(bicubic) + img_to_array + preprocess_input."""
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    paths = real_images(per_class=2) + sorted(ORIGINAL.rglob("*.jpg"))[:10]  # 100x100 and original sizes
    assert len(paths) >= 20
    for path in paths:
        ours = preprocess(decode_rgb(path.read_bytes())[None])[0]
        img = keras.utils.load_img(path, target_size=(224, 224), interpolation="bicubic")
        theirs = preprocess_input(keras.utils.img_to_array(img, dtype="float32"))
        np.testing.assert_array_equal(ours, theirs, err_msg=str(path))
