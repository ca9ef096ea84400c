"""Intensity and geometry normalisation (docs/datasets.md §6.2, §6.4).

Output images are 8-bit (grey HxW or RGB HxWx3) with the longest side at most `max_side`. Boxes move with
the exact per-axis scale and padding that were applied, so `to_original(to_normalised(b)) == b` up to float
rounding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from medlvr.corpus.records import RecordError, SourceImage

# CT windows in HU as (low, high). BiomedParse presets [V] and standard W/L presets converted (W/L -> L±W/2).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),
    "lung": (-1000.0, 1000.0),
    "lung_wide": (-1350.0, 150.0),  # 1500/-600
    "pelvis": (-55.0, 200.0),
    "liver": (-25.0, 230.0),
    "colon": (-68.0, 187.0),
    "pancreas": (-100.0, 200.0),
    "mediastinum": (-125.0, 225.0),  # 350/50
    "soft_tissue": (-150.0, 250.0),  # 400/50
    "bone": (-500.0, 1300.0),  # 1800/400
    "brain": (0.0, 80.0),  # 80/40
    "spleen": (-57.0, 164.0),
    "generic": (-500.0, 1000.0),  # SAT's fallback
}
HU_CLIP = (-1024.0, 3071.0)


@dataclass(frozen=True)
class NormaliseConfig:
    max_side: int = 512
    upscale: bool = False  # enlarge images smaller than max_side
    pad_to_square: bool = False  # pad the short side (records the padding) instead of keeping the aspect
    percentiles: tuple[float, float] = (0.5, 99.5)
    png_encoder: str = "fast"  # "fast" (Up filter + zlib RLE, ~4x faster) or "pil" (Pillow's adaptive filters)
    png_compress_level: int = 1  # zlib effort

    def __post_init__(self):
        if self.png_encoder not in ("fast", "pil"):
            raise ValueError(f"png_encoder must be 'fast' or 'pil', got {self.png_encoder!r}")
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be 0..9, got {self.png_compress_level}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "NormaliseConfig":
        d = dict(d or {})
        if "percentiles" in d:
            d["percentiles"] = tuple(d["percentiles"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Geometry:
    orig_w: int
    orig_h: int
    out_w: int
    out_h: int
    scale_x: float
    scale_y: float
    pad: tuple[int, int, int, int]  # left, top, right, bottom

    def to_normalised(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        l, t = self.pad[0], self.pad[1]
        return (x0 * self.scale_x + l, y0 * self.scale_y + t, x1 * self.scale_x + l, y1 * self.scale_y + t)

    def to_original(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        l, t = self.pad[0], self.pad[1]
        return ((x0 - l) / self.scale_x, (y0 - t) / self.scale_y, (x1 - l) / self.scale_x, (y1 - t) / self.scale_y)


def plan_geometry(w: int, h: int, cfg: NormaliseConfig) -> Geometry:
    longest = max(w, h)
    s = cfg.max_side / longest if (longest > cfg.max_side or cfg.upscale) else 1.0
    out_w = max(1, int(round(w * s)))
    out_h = max(1, int(round(h * s)))
    pad = (0, 0, 0, 0)
    if cfg.pad_to_square:
        side = max(out_w, out_h)
        dx, dy = side - out_w, side - out_h
        pad = (dx // 2, dy // 2, dx - dx // 2, dy - dy // 2)
    return Geometry(w, h, out_w + pad[0] + pad[2], out_h + pad[1] + pad[3], out_w / w, out_h / h, pad)


def window_for(src: SourceImage, spec_norm: Mapping) -> tuple[tuple[float, float], str]:
    """The CT window: the record's own (e.g. DeepLesion DICOM_windows), else by target label, else dataset's."""
    if src.window is not None:
        return src.window, src.window_name or "record"
    by_label = spec_norm.get("window_by_label") or {}
    if src.rois:
        largest = max(src.rois, key=lambda r: (r.box[2] - r.box[0]) * (r.box[3] - r.box[1]))
        if largest.label in by_label:
            name = by_label[largest.label]
            return CT_WINDOWS[name], name
    name = spec_norm.get("window", "generic")
    if isinstance(name, (list, tuple)):
        return (float(name[0]), float(name[1])), "custom"
    return CT_WINDOWS[name], name


def _apply_window(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        raise RecordError(f"invalid intensity window ({lo}, {hi})", stage="normalise")
    out = (a.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(out, 0.0, 255.0, out=out)
    return (out + 0.5).astype(np.uint8)


def percentile_window(a: np.ndarray, p: tuple[float, float], max_samples: int = 1 << 16) -> tuple[float, float]:
    """Percentiles of the non-zero values (all values if none is non-zero), estimated on a regular grid of at most
    `max_samples` pixels (65k: the 0.5/99.5 percentiles move by a fraction of a grey level),
    for a fraction of the cost of a full sort."""
    step = max(1, int(np.sqrt(a.size / max_samples)))
    s = a[::step, ::step] if a.ndim >= 2 else a[::step]
    nz = s[s != 0]
    lo, hi = (float(v) for v in np.percentile(nz if nz.size else s, p))
    return lo, hi


def _grey_as_rgb(a: np.ndarray) -> bool:
    return bool(np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]))


def to_uint8(src: SourceImage, spec_norm: Mapping, cfg: NormaliseConfig) -> tuple[np.ndarray, dict]:
    """8-bit pixels and a record of what was done (window, intensity kind). An image that is one grey level
    after windowing carries nothing to ground a question on and is rejected (any modality, any format)."""
    img8, info = _to_uint8(src, spec_norm, cfg)
    if img8.size and img8.min() == img8.max():
        raise RecordError(f"image is constant after windowing (every pixel {int(img8.flat[0])}, "
                          f"intensity {info['intensity']})", stage="normalise")
    return img8, info


def _to_uint8(src: SourceImage, spec_norm: Mapping, cfg: NormaliseConfig) -> tuple[np.ndarray, dict]:
    a = np.asarray(src.pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]  # drop alpha (DSB RGBA)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise RecordError(f"image must be HxW or HxWx3, got shape {a.shape}", stage="normalise")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise RecordError(f"image too small: {a.shape}", stage="normalise")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise RecordError("image contains NaN or infinite values", stage="normalise")
    kind = src.intensity
    info: dict = {"intensity": kind}
    if kind == "uint8":
        if a.ndim == 3 and a.dtype == np.uint8 and _grey_as_rgb(a):
            a = a[:, :, 0]  # greyscale stored as RGB (ultrasound, X-ray PNG/JPEG): a third of the bytes to encode
            info["grey_from_rgb"] = True
        if a.dtype == np.uint8:
            return np.ascontiguousarray(a), info
        if a.dtype.kind in "ui" and a.max(initial=0) <= 255 and a.min(initial=0) >= 0:
            return a.astype(np.uint8), info
        kind = "percentile"  # 16-bit "8-bit" modalities (Spectralis OCT) are percentile-scaled
        info["intensity"] = "percentile"
    if kind == "ct_hu":
        (lo, hi), name = window_for(src, spec_norm)
        a = np.clip(a.astype(np.float32), *HU_CLIP)
        info.update(window=(lo, hi), window_name=name)
        return _apply_window(a, lo, hi), info
    if kind == "window":
        if src.window is None:
            raise RecordError("intensity 'window' without a window", stage="normalise")
        info.update(window=src.window, window_name=src.window_name or "record")
        return _apply_window(a, *src.window), info
    if kind == "percentile":
        p = tuple(spec_norm.get("percentiles", cfg.percentiles))
        lo, hi = percentile_window(a, p)
        if not hi > lo:
            # the non-zero values are one level (a binary mask, a 1-bit SEG): the window spans the full range,
            # so 0 stays black and the level white; a truly constant image is rejected by the caller
            lo, hi = float(a.min()), float(a.max())
            if not hi > lo:
                hi = lo + 1.0
        info.update(window=(lo, hi), window_name=f"p{p[0]:g}-{p[1]:g}")
        return _apply_window(a, lo, hi), info
    raise RecordError(f"unknown intensity kind {kind!r}", stage="normalise")


def normalise_image(src: SourceImage, spec_norm: Mapping, cfg: NormaliseConfig) -> tuple[np.ndarray, Geometry, dict]:
    """The corpus image of `src`: geometry planned on the source size, scalar images shrunk before windowing,
    8-bit conversion, resize. Returns (8-bit pixels, geometry, what `to_uint8` did)."""
    h, w = np.asarray(src.pixels).shape[:2]
    geo = plan_geometry(w, h, cfg)
    img8, info = to_uint8(shrink_scalar(src, geo), spec_norm, cfg)
    return resize(img8, geo), geo, info


def shrink_scalar(src: SourceImage, geo: Geometry) -> SourceImage:
    """Downscale a scalar (HU, 16-bit, float) image in float32 *before* windowing, so the window, percentiles
    and 8-bit conversion run on the output size (a 2048-px radiograph: 16x fewer pixels). 8-bit and colour
    images are left alone; they are resized after conversion."""
    a = np.asarray(src.pixels)
    w, h = geo.out_w - geo.pad[0] - geo.pad[2], geo.out_h - geo.pad[1] - geo.pad[3]
    if a.ndim != 2 or a.dtype == np.uint8 or (w, h) == (geo.orig_w, geo.orig_h) or w * h >= a.size:
        return src
    small = np.asarray(Image.fromarray(a.astype(np.float32, copy=False)).resize(
        (w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return dataclasses.replace(src, pixels=small)


def resize(img: np.ndarray, geo: Geometry) -> np.ndarray:
    w, h = geo.out_w - geo.pad[0] - geo.pad[2], geo.out_h - geo.pad[1] - geo.pad[3]
    if (img.shape[1], img.shape[0]) != (w, h):
        pil = Image.fromarray(img)
        img = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    if any(geo.pad):
        l, t, r, b = geo.pad
        widths = ((t, b), (l, r)) + (((0, 0),) if img.ndim == 3 else ())
        img = np.pad(img, widths)
    return img


def check_box(box: Sequence[float], w: int, h: int) -> tuple[tuple[float, float, float, float] | None, str | None, bool]:
    """Validate a box in original pixels: (clipped box, reject reason, was_clipped)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, f"box is not four numbers: {box!r}", False
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, f"box has NaN or infinite coordinates: {box!r}", False
    if x1 <= x0 or y1 <= y0:
        return None, f"degenerate box (non-positive width or height): {box!r}", False
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        return None, f"box lies outside the {w}x{h} image: {box!r}", False
    c = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
    clipped = c != (x0, y0, x1, y1)
    if (c[2] - c[0]) < 1.0 or (c[3] - c[1]) < 1.0:
        return None, f"box smaller than one pixel after clipping to the image: {box!r}", clipped
    return c, None, clipped
