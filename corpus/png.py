"""PNG encoding of normalised 8-bit images.

Pillow's encoder picks a filter per row by trying all five (libpng's heuristic) and then deflates at the given
level; on a 512x512 grey image the filter search alone costs ~5 ms and the whole encode 11-14 ms, the largest
single cost of ingestion. The "fast" encoder writes a standard PNG with the Up filter on every row (one numpy
subtraction) and deflates with zlib's run-length strategy: ~3 ms for the same image, within 1% of Pillow's
level-6 size on noisy images (every real scan) and up to ~1.3x larger on noise-free synthetic gradients.
Both are lossless; `decode(encode(x)) == x` is tested for grey and RGB.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

ENCODERS = ("fast", "pil")
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def up_filtered(img: np.ndarray) -> bytes:
    """Scanlines with PNG filter type 2 (Up): each byte minus the byte above, modulo 256; a leading filter byte
    per row. img: (H, W) or (H, W, C) uint8 -> H * (1 + W*C) bytes."""
    rows = np.ascontiguousarray(img).reshape(img.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    return out.tobytes()


def encode_fast(img: np.ndarray, compress_level: int = 1) -> bytes:
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype != np.uint8 or channels not in _COLOUR_TYPE:
        raise ValueError(f"fast PNG encoder takes uint8 HxW, HxWx3 or HxWx4 images, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = deflate.compress(up_filtered(img)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def encode_png(img: np.ndarray, encoder: str = "fast", compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of a uint8 image. encoder: "fast" (Up filter + zlib RLE) or "pil" (Pillow's adaptive
    filters, smaller files on clean synthetic images, ~4x slower)."""
    if encoder == "fast":
        return encode_fast(img, compress_level)
    if encoder == "pil":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
    raise ValueError(f"unknown PNG encoder {encoder!r}; choose one of {ENCODERS}")
