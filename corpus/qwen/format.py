"""Qwen2.5-VL's image geometry: the released pixel budget, the resize rule and boxes in the pixels of the image the
model sees. Pure Python (no transformers), so the corpus, the OpenAI-compatible back end and training share it."""

from __future__ import annotations

import io
import math


# Qwen2.5-VL's released preprocessor_config.json; a vLLM server resizes with these unless told otherwise.
QWEN25_MIN_PIXELS = 56 * 56


QWEN25_MAX_PIXELS = 28 * 28 * 16384


QWEN25_FACTOR = 28  # patch_size 14 x spatial merge 2: resized sides are multiples of this


def smart_resize(height: int, width: int, factor: int = QWEN25_FACTOR, min_pixels: int = QWEN25_MIN_PIXELS,
                 max_pixels: int = QWEN25_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's resize rule (same arithmetic as transformers' `smart_resize`), kept here so the openai
    backend can render boxes without importing transformers."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be < 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def png_size(image_png: bytes) -> tuple[int, int]:
    """(height, width) from the PNG header (PIL reads only the header here)."""
    from PIL import Image

    with Image.open(io.BytesIO(image_png)) as im:
        return im.height, im.width


def model_box(box, image_hw: tuple[int, int], min_pixels: int = QWEN25_MIN_PIXELS,
              max_pixels: int = QWEN25_MAX_PIXELS, factor: int = QWEN25_FACTOR) -> tuple[int, int, int, int]:
    """`box` (xyxy in the normalised image of size `image_hw`) in absolute pixels of the image the model sees
    after its own resize; rounded and clamped to the resized image."""
    h, w = image_hw
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    sx, sy = rw / w, rh / h
    x1, y1, x2, y2 = box
    out = (round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy))
    return (min(max(out[0], 0), rw), min(max(out[1], 0), rh), min(max(out[2], 0), rw), min(max(out[3], 0), rh))
