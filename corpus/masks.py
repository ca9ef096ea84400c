"""Masks, polygons and label maps -> per-instance boxes (docs/datasets.md §6.1).

Boxes are pixel-edge xyxy: a component covering columns x0..x1 (inclusive) has box x0 .. x1+1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from medlvr.corpus.records import RecordError, SourceROI, object_id

_EIGHT = np.ones((3, 3), dtype=bool)
_TWENTY_SIX = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LabelRule:
    """How one output label is made from a label map.

    values: label-map values whose union forms this structure (hierarchy: kidney = {1,2,3}).
    instances: split into connected components (lesions, nuclei) or emit one union box (organs, diffuse).
    parent: the raw label of the enclosing structure, kept for relational questions.
    source_object: the annotation object the structure comes from when it is not the label map itself (an LIDC
      nodule read): its object ids become `<source_object>/component=k` instead of `<map>#label=L/component=k`.
    """

    label: str
    values: tuple[int, ...]
    instances: bool = True
    parent: str | None = None
    source_object: str | None = None


def rules_from_options(opt: Mapping) -> list[LabelRule]:
    """Build rules from catalog options: {"label_rules": [{"label":..,"values":[..],"instances":..,"parent":..}]}."""
    return [LabelRule(r["label"], tuple(int(v) for v in r["values"]), bool(r.get("instances", True)),
                      r.get("parent")) for r in opt["label_rules"]]


def min_speck_px(shape: Sequence[int], min_px: int = 16, min_frac: float = 0.0002) -> float:
    """Components smaller than this are specks: max(min_px, min_frac of the image area), kept as a float and
    compared as one (0.02 % of 512² is 52.43 px: a 52-px component is a speck, as docs/datasets.md §6.1 says)."""
    return float(max(min_px, min_frac * float(shape[0]) * float(shape[1])))


def speck_reason(size: int, threshold: float, unit: str = "px", what: str = "component") -> str:
    """The reject reason of an object dropped for its size: the size and the threshold, both in `unit`."""
    return f"{what} of {size} {unit} below the minimum size {threshold:g} {unit}"


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def all_components(mask: np.ndarray) -> list[tuple[tuple[float, float, float, float], int]]:
    """Every 8-connected component of a 2-D binary mask as (box, pixel count), in scan order (specks included)."""
    lab, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    return [((float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)), int(sizes[i]))
            for i, sl in enumerate(ndimage.find_objects(lab), start=1) if sl is not None]


def components(mask: np.ndarray, min_area: float) -> list[tuple[tuple[float, float, float, float], int]]:
    """8-connected components of a 2-D binary mask as (box, pixel count), specks removed, in scan order."""
    return [c for c in all_components(mask) if c[1] >= min_area]


def union_box(comps: Sequence[tuple[tuple[float, float, float, float], int]]
              ) -> tuple[tuple[float, float, float, float], int]:
    """One box around several components and their total pixel count (a structure that is not split)."""
    boxes = np.array([c[0] for c in comps], dtype=float)
    return ((float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())),
            int(sum(c[1] for c in comps)))


def mask_objects(mask: np.ndarray, label: str, *, source: str, instances: bool = True, min_area: float | None = None,
                 parent: str | None = None, origin: str = "mask"
                 ) -> tuple[list[SourceROI], list[tuple[str, str, str]], list[str]]:
    """The source objects of one binary mask and what became of them: (ROIs, rejects (label, reason, object),
    objects). instances=True: every component is an object `<source>#label=L/component=k` (k counts all
    components in scan order, specks included; specks are rejects with their size). instances=False: the
    structure is one object `<source>#label=L` with ONE union box over its non-speck components."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    min_area = min_speck_px(mask.shape) if min_area is None else min_area
    comps = all_components(mask)
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str, str]] = []
    if not comps:
        return rois, rejects, []
    if not instances:
        oid = object_id(source, label=label)
        big = [c for c in comps if c[1] >= min_area]
        if not big:
            rejects.append((label, speck_reason(max(c[1] for c in comps), min_area, what="largest component"), oid))
        else:
            box, area = union_box(big)
            rois.append(SourceROI(label, box, origin, 0, float(area), parent, source_object=oid))
        return rois, rejects, [oid]
    objects = []
    for k, (box, area) in enumerate(comps, start=1):
        oid = object_id(source, label=label, component=k)
        objects.append(oid)
        if area < min_area:
            rejects.append((label, speck_reason(area, min_area), oid))
        else:
            rois.append(SourceROI(label, box, origin, k, float(area), parent, source_object=oid))
    return rois, rejects, objects


def mask_rois(mask: np.ndarray, label: str, *, instances: bool = True, min_area: float | None = None,
              parent: str | None = None, source: str = "") -> list[SourceROI]:
    """ROIs of one binary mask: one per component, or one union box (instances=False); specks left out (use
    mask_objects to have them as rejects)."""
    return mask_objects(mask, label, source=source, instances=instances, min_area=min_area, parent=parent)[0]


def labelmap_rois(labelmap: np.ndarray, rules: Iterable[LabelRule], min_area: int | None = None,
                  origin: str = "mask") -> list[SourceROI]:
    """Apply the hierarchy rules to a 2-D label map; each rule sees the union of its values. A value that no
    rule names (and is not the background 0) rejects the map: it would otherwise vanish without a trace (a
    wrong release, a damaged file); the reason gives counts, not the values."""
    rules = list(rules)
    unnamed = ~np.isin(labelmap, [0, *(v for r in rules for v in r.values)])
    if unnamed.any():
        raise RecordError(f"label map has {int(unnamed.sum())} pixels of {np.unique(labelmap[unnamed]).size} "
                          "values no label rule names")
    out: list[SourceROI] = []
    for rule in rules:
        m = np.isin(labelmap, rule.values)
        for roi in mask_rois(m, rule.label, instances=rule.instances, min_area=min_area, parent=rule.parent):
            roi.origin = origin
            out.append(roi)
    return out


def bounding_slices(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero element of an n-D array (None when all zero).
    One projection per axis, each over the box found so far (~10x faster than ndimage.find_objects on a
    CT-sized volume, and sparse masks shrink the later passes)."""
    # unsigned ints and bools: a max is a projection (SIMD, no temporary); anything else is compared with 0 once
    nz = mask if mask.dtype == bool or mask.dtype.kind == "u" else mask != 0
    out: list[slice] = []
    for axis in range(nz.ndim):
        view = nz[tuple(out)]  # restricted to the ranges of the axes already found
        other = tuple(a for a in range(nz.ndim) if a != axis)
        if axis == 0 and view.size:
            proj = view.reshape(view.shape[0], -1).max(axis=1)
        else:
            proj = view.max(axis=other, initial=0)
        hit = np.flatnonzero(proj)
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def instances_3d_in_box(mask3d: np.ndarray, min_voxels: int = 1) -> tuple[np.ndarray, int, tuple[slice, ...] | None]:
    """26-connected 3-D components labelled on the mask's bounding box only (lesions occupy a small part of a
    volume): (labels 0..n over the box, n, the box's slices; None when the mask is empty). Ids are stable: raster
    order of first voxel, specks below min_voxels removed before numbering."""
    box = bounding_slices(np.asarray(mask3d))
    if box is None:
        return np.zeros((0,) * np.ndim(mask3d), np.int32), 0, None
    lab, n = ndimage.label(mask3d[box], structure=_TWENTY_SIX)
    if n and min_voxels > 1:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        small = np.flatnonzero(sizes < min_voxels)
        small = small[small > 0]
        if small.size:
            lab[np.isin(lab, small)] = 0
            lab, n = ndimage.label(lab > 0, structure=_TWENTY_SIX)
    return lab, int(n), box


def components_3d_in_box(mask3d: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...] | None]:
    """Every 26-connected 3-D component, labelled on the mask's bounding box only: (labels 0..n over the box, voxel
    count per label (index 0 = background), the box's slices; None when the mask is empty). Ids are raster order
    of the first voxel, specks included, so that an object keeps its id whatever is dropped later."""
    box = bounding_slices(np.asarray(mask3d))
    if box is None:
        return np.zeros((0,) * np.ndim(mask3d), np.int32), np.zeros(1, np.int64), None
    lab, n = ndimage.label(mask3d[box], structure=_TWENTY_SIX)
    return lab, np.bincount(lab.ravel(), minlength=n + 1), box


def instances_3d(mask3d: np.ndarray, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    """26-connected 3-D components as a full-size label volume with stable instance ids 1..n (specks below
    min_voxels = 0)."""
    lab, n, box = instances_3d_in_box(mask3d, min_voxels)
    full = np.zeros(np.shape(mask3d), np.int32)
    if box is not None:
        full[box] = lab
    return full, n


def polygon_mask(shape: tuple[int, int], polygon_xy: np.ndarray) -> np.ndarray:
    """Rasterise a polygon given as (N,2) x,y pixel coordinates, boundary pixels included.

    A pixel (r, c) is inside when its centre (c+0.5, r+0.5) is inside the polygon, or when the polygon's
    outline passes through it; the outline is drawn so that thin and degenerate polygons still cover the
    pixels their vertices name (as LIDC and ChestX-Det expect).
    """
    from matplotlib.path import Path as MplPath

    h, w = shape
    poly = np.asarray(polygon_xy, dtype=float).reshape(-1, 2)
    mask = np.zeros((h, w), dtype=bool)
    if len(poly) == 0:
        return mask
    x0, y0 = np.floor(poly.min(axis=0)).astype(int)
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    if x1 >= x0 and y1 >= y0 and len(poly) >= 3:
        yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        pts = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
        inside = MplPath(poly).contains_points(pts).reshape(yy.shape)
        mask[y0:y1 + 1, x0:x1 + 1] |= inside
    # the outline: every pixel the polygon's edges pass through
    closed = np.vstack([poly, poly[:1]])
    for (ax, ay), (bx, by) in zip(closed[:-1], closed[1:]):
        n = int(max(abs(bx - ax), abs(by - ay)) * 2) + 1
        t = np.linspace(0.0, 1.0, n)
        xs = np.floor(ax + (bx - ax) * t).astype(int)
        ys = np.floor(ay + (by - ay) * t).astype(int)
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        mask[ys[ok], xs[ok]] = True
    return mask
