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

Values a rule does not name reject the record, in every decoder (a stray 77 in a REFUGE mask used to pass the
<=150 disc threshold and stretch the disc box to the image corner). The named values (`values`, the codes of
the mask format) are:
  value_coded  the entry's `values` (required): REFUGE [0, 128, 255].
  label_map    the entry's `values`, else 0 and the values of its label rules; no value in between is a code.
  binary, inverted, outline_fill, rgb_any
               the entry's `values`, else the mask's darkest and brightest grey (a two-level mask: 0/255, 0/1);
               `values: any` for a lossy format (TN3K's JPEG masks, whose noise takes every grey value).
Between codes, a pixel that lies strictly between the darkest and brightest value of its 3x3 neighbourhood
is an interpolated edge (a resized mask) and is accepted; any other value is counted, and the reject names the
counts (pixels, distinct values), never the pixel data.
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


def unnamed_values(g: np.ndarray, codes, edges: bool = True) -> tuple[int, int]:
    """(pixels, distinct values) of `g` that are not in `codes`; with `edges`, a pixel strictly between the
    lowest and highest value of its 3x3 neighbourhood (an interpolated edge between two regions) counts as
    named. (0, 0) when every value is named."""
    odd = ~np.isin(g, np.asarray(list(codes), dtype=g.dtype if g.dtype.kind != "b" else np.int64))
    if not odd.any():
        return 0, 0
    if edges:
        lo = ndimage.grey_erosion(g, size=(3, 3), mode="nearest")
        hi = ndimage.grey_dilation(g, size=(3, 3), mode="nearest")
        odd &= ~((lo < g) & (g < hi))
    return int(odd.sum()), int(np.unique(g[odd]).size)


def check_named(entry: Mapping[str, Any], g: np.ndarray, default_codes=None, edges: bool = True) -> None:
    """Reject (RecordError) a mask with values its entry does not name; see the module docstring."""
    codes = entry.get("values", default_codes)
    if codes is None or codes == "any":
        return
    pixels, values = unnamed_values(g, codes, edges)
    if pixels:
        raise RecordError(f"mask has {pixels} pixels of {values} values the rule does not name "
                          f"(codes {sorted(codes)}; only edges between them may differ)")


def _two_levels(g: np.ndarray) -> tuple:
    """The codes of a thresholded mask that names none: its darkest and brightest value."""
    return (g.min(), g.max()) if g.size else ()


def _single(entry: Mapping[str, Any], mask: np.ndarray) -> list[Decoded]:
    return [Decoded(entry["label"], mask, bool(entry.get("instances", True)), entry.get("parent"))]


def binary(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    g = grey(arr)
    check_named(entry, g, _two_levels(g))
    return _single(entry, g > float(entry.get("threshold", 127)))


def inverted(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    g = grey(arr)
    check_named(entry, g, _two_levels(g))
    return _single(entry, g <= float(entry.get("threshold", 127)))


def rgb_any(entry: Mapping[str, Any], arr: np.ndarray) -> list[Decoded]:
    t = float(entry.get("threshold", 0))
    g = arr.max(axis=2) if arr.ndim == 3 else arr  # the strongest channel: pure red (255, 0, 0) is 255
    check_named(entry, g, _two_levels(g))
    return _single(entry, g > t)


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
    g = grey(arr)
    check_named(entry, g, _two_levels(g))
    outline = g > float(entry.get("threshold", 127))
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
    if "values" not in entry:  # ranges alone accept any value inside them: the codes must be named
        raise RecordError("value_coded mask entry names no `values` (the codes of the mask format)")
    g = grey(arr)
    check_named(entry, g)
    g = g.astype(np.float64)
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
    rules = rules_from_options(entry)
    allowed = entry.get("values")
    if allowed is not None:
        bad = np.setdiff1d(np.unique(vals), np.asarray(allowed, dtype=np.int64))
        if bad.size:
            raise RecordError(f"label map has values {bad[:8].tolist()} outside the documented {list(allowed)}")
    else:  # labels are discrete: no value between two labels is an edge
        check_named(entry, vals, {0, *(v for r in rules for v in r.values)}, edges=False)
    return [Decoded(r.label, np.isin(vals, r.values), r.instances, r.parent) for r in rules]


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
