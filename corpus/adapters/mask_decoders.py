"""Mask decoders for the paired-masks adapter (docs/datasets.md §3 A11, §6.1).

A decoder turns the pixels of ONE mask file into binary masks per raw label:
    decode(entry, arr) -> list[Decoded(label, mask, instances, parent)]
`entry` is the catalog's mask entry (options.masks.<id>): it names the decoder and its parameters.
The adapter ORs the masks of several files of one entry (BUSI `_mask_1`) label by label.

Decoders:
  binary       foreground = grey > threshold (default 127). Tolerates JPEG noise (TN3K) and 0/1 or 0/255 PNGs.
  inverted     foreground = grey <= threshold (default 127): ADAM draws the structure black on white.
  rgb_any      foreground = any channel > threshold (default 0): IDRiD paints lesions pure red (255,0,0),
               which a grey conversion would turn into 76 and a >127 threshold would lose.
  outline_fill a thin closed outline (HC18 ellipse) filled with binary_fill_holes; the box is the filled extent.
               An outline cut by the image edge is closed against the border (the regions inside the fitted
               ellipse are filled), so a head partly outside the image gets its clipped box.
  value_coded  one class per grey-value range, e.g. REFUGE 0 cup / 128 rim / 255 background:
               classes [{label: optic disc, max: 150}, {label: optic cup, max: 100, parent: optic disc}].
  label_map    integer label map + label_rules (corpus.masks.LabelRule): AROI layers and fluids.
               A colour-coded map is turned into values first with colour_map: [[r, g, b, value], ...].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from scipy import ndimage

from medlvr.corpus.masks import rules_from_options
from medlvr.corpus.records import RecordError


@dataclass
class Decoded:
    label: str
    mask: np.ndarray  # bool HxW
    instances: bool
    parent: str | None = None


def grey(arr: np.ndarray) -> np.ndarray:
    """One channel: an RGB mask whose channels agree gives its first channel; otherwise the strongest
    channel per pixel, so that a coloured annotation on black still counts as foreground."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise RecordError(f"mask has unsupported shape {arr.shape}")
    if arr.shape[2] >= 3 and np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 0], arr[:, :, 2]):
        return arr[:, :, 0]
    return arr.max(axis=2)


def _single(entry: Mapping[str, Any], mask: np.ndarray) -> list[Decoded]:
    return [Decoded(entry["label"], mask, bool(entry.get("instances", True)), entry.get("parent"))]


def binary(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    return _single(entry, grey(arr) > float(entry.get("threshold", 127)))


def inverted(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    return _single(entry, grey(arr) <= float(entry.get("threshold", 127)))


def rgb_any(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    t = float(entry.get("threshold", 0))
    m = (arr > t).any(axis=2) if arr.ndim == 3 else arr > t
    return _single(entry, m)


def _ellipse_side(outline: np.ndarray) -> np.ndarray | None:
    """True for pixels inside the conic fitted (least squares, algebraic) to the outline's pixel centres; None
    when the fit is not an ellipse. Used only to tell the inside of a border-cut outline from the outside."""
    ys, xs = np.nonzero(outline)
    if xs.size < 6:
        return None
    cx, cy, s = xs.mean(), ys.mean(), max(float(xs.std()), float(ys.std()), 1.0)
    u, v = (xs - cx) / s, (ys - cy) / s  # centred and scaled: a well-conditioned fit
    _, _, vt = np.linalg.svd(np.column_stack([u * u, u * v, v * v, u, v, np.ones_like(u)]), full_matrices=False)
    a, b, c, d, e, f = vt[-1]
    if b * b - 4 * a * c >= 0:
        return None
    u0, v0 = np.linalg.solve([[2 * a, b], [b, 2 * c]], [-d, -e])  # the ellipse's centre
    centre_sign = np.sign(a * u0 * u0 + b * u0 * v0 + c * v0 * v0 + d * u0 + e * v0 + f)
    gy, gx = np.mgrid[0:outline.shape[0], 0:outline.shape[1]]
    gu, gv = (gx - cx) / s, (gy - cy) / s
    return (a * gu * gu + b * gu * gv + c * gv * gv + d * gu + e * gv + f) * centre_sign > 0


def outline_fill(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    outline = grey(arr) > float(entry.get("threshold", 127))
    # 4-connected background cannot cross an 8-connected outline, so a closed ellipse drawn with diagonal
    # steps still encloses its interior
    filled = ndimage.binary_fill_holes(outline)
    edge = np.zeros_like(outline)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    if (outline & edge).any():
        # an outline cut by the image edge (HC18: 4 of 999 heads leave the image at the top or bottom) is closed
        # against the border: the background regions the outline and the border enclose touch the edge, so
        # fill_holes leaves them open. Each such region is filled when most of it lies inside the ellipse fitted
        # to the outline; the box then is the drawn head's clipped to the image, pixel for pixel.
        inside = _ellipse_side(outline)
        if inside is not None:
            regions, n = ndimage.label(~filled)
            size = np.bincount(regions.ravel(), minlength=n + 1)
            within = np.bincount(regions.ravel(), weights=inside.ravel(), minlength=n + 1)
            enclosed = np.flatnonzero(within > 0.5 * size)
            filled |= np.isin(regions, enclosed[enclosed > 0])
    if outline.any() and int(filled.sum()) == int(outline.sum()):
        raise RecordError("outline annotation encloses no area (outline not closed?)")
    return _single(entry, filled)


def value_coded(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    g = grey(arr).astype(np.float64)
    out = []
    for c in entry["classes"]:
        m = np.ones(g.shape, dtype=bool)
        if "max" in c:
            m &= g <= float(c["max"])
        if "min" in c:
            m &= g >= float(c["min"])
        out.append(Decoded(c["label"], m, bool(c.get("instances", False)), c.get("parent")))
    return out


def label_map(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    if arr.ndim == 3:
        if "colour_map" in entry:
            lab = np.zeros(arr.shape[:2], dtype=np.int32)
            known = np.zeros(arr.shape[:2], dtype=bool)
            for r, g, b, v in entry["colour_map"]:
                hit = (arr[:, :, 0] == r) & (arr[:, :, 1] == g) & (arr[:, :, 2] == b)
                lab[hit] = int(v)
                known |= hit
            if not known.all():
                raise RecordError(f"colour-coded label map has {int((~known).sum())} pixels of unknown colour")
            arr = lab
        else:
            arr = grey(arr)
            if arr.ndim != 2:
                raise RecordError("label map is colour-coded but the catalog gives no colour_map")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise RecordError("label map contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise RecordError("label map has non-integer values")
    vals = arr.astype(np.int64)
    allowed = entry.get("values")
    if allowed is not None:
        bad = np.setdiff1d(np.unique(vals), np.asarray(allowed, dtype=np.int64))
        if bad.size:
            raise RecordError(f"label map has values {bad[:8].tolist()} outside the documented {list(allowed)}")
    return [Decoded(r.label, np.isin(vals, r.values), r.instances, r.parent) for r in rules_from_options(entry)]


DECODERS: dict[str, Callable[[Mapping[str, Any], np.ndarray], list[Decoded]]] = {
    "binary": binary,
    "inverted": inverted,
    "rgb_any": rgb_any,
    "outline_fill": outline_fill,
    "value_coded": value_coded,
    "label_map": label_map,
}


def decode(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    name = entry.get("decoder", "binary")
    fn = DECODERS.get(name)
    if fn is None:
        raise RecordError(f"unknown mask decoder {name!r}; known: {sorted(DECODERS)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RecordError("mask contains NaN or infinite values")
    return fn(entry, arr)
