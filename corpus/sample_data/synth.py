"""Synthetic anatomy-like pixels and exactly known lesion shapes for the sample datasets.

Shapes are drawn as pixel masks; their true box is always `medlvr.corpus.masks.box_of(mask)` (pixel-edge xyxy),
which the writers record before the mask is encoded in a dataset's native format.
"""

from __future__ import annotations

import numpy as np


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def box(mask: np.ndarray) -> list[float]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def body_ct(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An axial-CT-like slice in HU: air outside, a soft-tissue body ellipse, a fat rim, a bright spine."""
    img = np.full((h, w), -1000.0, dtype=np.float32)
    img[ellipse(h, w, h / 2, w / 2, h * 0.42, w * 0.46)] = -90.0
    img[ellipse(h, w, h / 2, w / 2, h * 0.38, w * 0.42)] = 40.0
    img[ellipse(h, w, h * 0.78, w / 2, h * 0.06, w * 0.06)] = 700.0
    img += rng.normal(0, 12, (h, w)).astype(np.float32)
    return img


def body_mri(h: int, w: int, rng: np.random.Generator, scale: float = 800.0) -> np.ndarray:
    """An MR-like slice: zero background (skull-stripped style), a bright tissue ellipse with texture."""
    img = np.zeros((h, w), dtype=np.float32)
    m = ellipse(h, w, h / 2, w / 2, h * 0.42, w * 0.40)
    img[m] = scale * (0.5 + 0.1 * rng.standard_normal(int(m.sum())).astype(np.float32))
    return np.clip(img, 0, None)


def gray8(h: int, w: int, rng: np.random.Generator, base: int = 60, speckle: float = 20.0) -> np.ndarray:
    """Ultrasound/X-ray/OCT-like 8-bit grey texture."""
    img = base + speckle * rng.standard_normal((h, w))
    yy = np.linspace(0, 1, h)[:, None]
    img = img + 40 * yy
    return np.clip(img, 0, 255).astype(np.uint8)


def rgb8(h: int, w: int, rng: np.random.Generator, tint=(200, 150, 130), noise: float = 10.0) -> np.ndarray:
    """Dermoscopy/fundus/microscopy-like RGB background."""
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        img[:, :, c] = tint[c] + noise * rng.standard_normal((h, w))
    return np.clip(img, 0, 255).astype(np.uint8)
