"""A8 `json_list_boxes_polys`: a JSON list of {file_name, syms, boxes, polygons} records (ChestX-Det).

`syms`, `boxes` and `polygons` are parallel lists; boxes are integer xyxy naming the first and last covered
pixel (inclusive), polygons are [[x, y], ...] vertex pixel indices. Normal images have all three lists empty.

Each finding's polygon is rasterised (corpus.masks.polygon_mask, boundary pixels included) and its mask box is
the ROI (origin "polygon"). The given box is compared with it: both name the same pixels when
given == [x0, y0, x1 - 1, y1 - 1] of the pixel-edge mask box. When they disagree by more than
`box_tolerance_px` (default 2) the annotation contradicts itself, so the finding is dropped into roi_rejects
with both boxes in the reason rather than guessing which one is right. A finding with no polygon falls back to
the given box (origin "box", converted to pixel-edge by adding 1 to the maxima).

Options:
  files:      {split: JSON file} (ChestX_Det_train.json / ChestX_Det_test.json); the split becomes official
  image_dirs: {split: folder of that split's images}
  box_tolerance_px: see above
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import image_size, pixel_box, source_image
from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.paths import require_file
from medlvr.corpus.adapters.sidecar import read_json
from medlvr.corpus.masks import box_of, polygon_mask
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id


def _check_record(rec) -> str | None:
    """Why a record is unusable, or None."""
    if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
        return "record is not an object with a file_name"
    lists = [rec.get(k, []) for k in ("syms", "boxes", "polygons")]
    if not all(isinstance(v, list) for v in lists):
        return "syms/boxes/polygons must be lists"
    if len({len(v) for v in lists}) != 1:
        return f"parallel lists differ in length: syms {len(lists[0])}, boxes {len(lists[1])}, " \
               f"polygons {len(lists[2])}"
    for b in lists[1]:
        if not (isinstance(b, list) and len(b) == 4):
            return f"box {b!r} is not [x0, y0, x1, y1]"
    return None


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    seen: set[str] = set()
    for split, rel_json in o["files"].items():
        data = read_json(require_file(root, rel_json), root)
        if not isinstance(data, list):
            raise RecordError(f"{rel_json}: expected a JSON list of records, got {type(data).__name__}",
                              stage="discover")
        for n, rec in enumerate(data):
            why = _check_record(rec)
            name = rec.get("file_name") if isinstance(rec, dict) else None
            key = f"{split}/{name}" if isinstance(name, str) else f"{rel_json}#{n}"
            if why:
                yield Reject(spec.id, rel_json, "discover", f"{why} (record {n})", key)
                continue
            rel = f"{o['image_dirs'][split]}/{name}"
            if key in seen:
                yield Reject(spec.id, rel, "discover", f"duplicate file_name {name!r} in {rel_json}", key)
                continue
            seen.add(key)
            try:
                require_file(root, rel)
            except RecordError as e:
                yield Reject(spec.id, rel, "discover", e.reason, key)
                continue
            yield RecordRef(key=key, paths={"image": rel}, split=split,
                            annotations={**{k: rec.get(k, []) for k in ("syms", "boxes", "polygons")},
                                         "object": object_id(rel_json, record=n)})


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    tol = float(o.get("box_tolerance_px", 2))
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=o.get("image_mode"), root=root)
    shape = image_size(px)
    a = ref.annotations
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str]] = []
    objects = []
    for k, (label, given, poly) in enumerate(zip(a["syms"], a["boxes"], a["polygons"]), start=1):
        # a finding: the JSON record and the finding's 1-based position in its lists
        oid = f"{a['object']}/finding={k}" if a.get("object") else object_id(rel, finding=k)
        objects.append(oid)
        given = [float(v) for v in given]
        try:
            given_edges = pixel_box(given, "inclusive")  # a zero-extent given box is rejected, polygon or not
        except RecordError as e:
            rejects.append((label, e.reason, oid))
            continue
        try:
            pts = np.asarray(poly, dtype=float).reshape(-1, 2) if poly else np.zeros((0, 2))
        except (TypeError, ValueError):
            rejects.append((label, "polygon is not a list of [x, y] points", oid))
            continue
        if len(pts) == 0:
            rois.append(SourceROI(label, given_edges, "box", k, source_object=oid))
            continue
        if not np.isfinite(pts).all():
            rejects.append((label, "polygon has NaN or infinite vertices", oid))
            continue
        m = polygon_mask(shape, pts)
        pbox = box_of(m)
        if pbox is None:
            rejects.append((label, f"polygon lies outside the {shape[1]}x{shape[0]} image", oid))
            continue
        diff = max(abs(g - p) for g, p in zip(given, (pbox[0], pbox[1], pbox[2] - 1, pbox[3] - 1)))
        if not diff <= tol:
            rejects.append((label, f"given box {given} disagrees with the polygon's box "
                                   f"{[pbox[0], pbox[1], pbox[2] - 1, pbox[3] - 1]} by {diff:g} px", oid))
            continue
        rois.append(SourceROI(label, pbox, "polygon", k, float(m.sum()),
                              attributes={"given_box": given}, source_object=oid))
    attrs = {"negative": True} if not a["syms"] else {}
    src = source_image(rel, px, rois, rejects, attrs)
    src.objects = objects
    return [src]


@dataclass(frozen=True)
class JsonBoxesOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    files: Any = None
    image_dirs: Any = None
    box_tolerance_px: Any = None
    image_mode: Any = None


register("json_list_boxes_polys", discover, load,
         "JSON list of {file_name, syms, boxes, polygons}; polygons rasterised and checked against the boxes",
         options=JsonBoxesOptions)
