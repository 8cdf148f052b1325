"""Preprocessing equals Keras' own on real photos (needs TensorFlow; the slow half of tests/unit/test_images.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ORIGINAL, real_images

from fruitlens.images import (
    decode_rgb,
    preprocess,
)


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
