"""The fast PNG encoder writes standard, lossless PNGs that Pillow (libpng's format) decodes exactly."""

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medlvr.corpus.normalize import NormaliseConfig
from medlvr.corpus.png import encode_png, up_filtered


def decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), channels=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**16),
       encoder=st.sampled_from(["fast", "pil"]), level=st.integers(0, 9))
def test_round_trip_is_lossless(h, w, channels, seed, encoder, level):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    out = decode(encode_png(img, encoder, level))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, img)


def test_mode_and_size_match_pillow_on_a_real_sized_image():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:457, 0:512]
    img = (128 + 60 * np.sin(x / 40) * np.cos(y / 55) + 8 * rng.standard_normal((457, 512))).clip(0, 255)
    img = img.astype(np.uint8)
    fast, pil = encode_png(img, "fast"), encode_png(img, "pil", 6)
    assert Image.open(io.BytesIO(fast)).mode == "L"
    assert np.array_equal(decode(fast), img)
    assert len(fast) < 1.05 * len(pil)  # noisy images: the cheap filter loses almost nothing


def test_up_filter_bytes_by_hand():
    img = np.array([[10, 250], [5, 4]], np.uint8)
    # row 0 is unchanged; row 1 is (5-10) mod 256, (4-250) mod 256
    assert up_filtered(img) == bytes([2, 10, 250, 2, 251, 10])
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert up_filtered(rgb)[7:] == bytes([2] + [6] * 6)  # second row minus first, per byte


def test_chunks_carry_valid_crcs():
    data = encode_png(np.zeros((3, 5), np.uint8))
    pos = 8
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big") == zlib.crc32(kind + body)
        pos += 12 + n
    assert pos == len(data) and kind == b"IEND"


def test_bad_input_and_config_are_rejected_clearly():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="unknown PNG encoder"):
        encode_png(np.zeros((4, 4), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="png_encoder"):
        NormaliseConfig(png_encoder="jpeg")
    with pytest.raises(ValueError, match="png_compress_level"):
        NormaliseConfig(png_compress_level=11)
