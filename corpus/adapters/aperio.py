"""A13 `aperio_xml`: Aperio ImageScope XML polygons (MoNuSeg).

`Annotations/Annotation/Regions/Region/Vertices/Vertex[@X, @Y]` with float attributes. Each Region is one
nucleus: it is rasterised on its own (corpus.masks.polygon_mask, boundary pixels included) and becomes one
ROI, so counting questions see every instance. No speck filter: every Region is a deliberate annotation.
A Region with fewer than 3 vertices, non-numeric or non-finite vertices, or lying outside the image is
reported in roi_rejects; an unparseable XML rejects the record.

Options:
  image_glob:      glob or list of globs of the images ("MoNuSeg 2018 Training Data/Tissue Images/*.tif")
  annotation_dirs: folders, relative to each image's folder, searched for `<stem>.xml` in order
                   (training data: "../Annotations"; test data: "." next to the image)
  label:           raw label of every Region (default "nucleus")
"""

from __future__ import annotations

from dataclasses import dataclass

import math
import posixpath
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import image_size, source_image
from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.paths import open_confined, rel_path, require_file, walk
from medlvr.corpus.masks import box_of, polygon_mask
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id


def parse_regions(path: Path, data_root: Path | None = None) -> list[tuple[str, np.ndarray | str]]:
    """[(region id, (N, 2) x,y vertices) or (region id, reason it is unusable)] in file order."""
    try:
        with open_confined(data_root or path.parent, path) as f:
            root = ET.parse(f).getroot()
    except (ET.ParseError, OSError) as e:
        raise RecordError(f"cannot parse Aperio XML {path.name}: {e}")
    out: list[tuple[str, np.ndarray | str]] = []
    for n, region in enumerate(root.iter("Region")):
        rid = region.get("Id") or str(n)
        try:
            pts = np.array([[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")], dtype=float)
        except (TypeError, ValueError):
            out.append((rid, "vertex without numeric X/Y"))
            continue
        if len(pts) < 3:
            out.append((rid, f"{len(pts)} vertices, a polygon needs 3"))
        elif not np.isfinite(pts).all():
            out.append((rid, "NaN or infinite vertex"))
        else:
            out.append((rid, pts))
    return out


def region_mask(shape: tuple[int, int], pts: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """Rasterise in a crop around the polygon (a 1000x1000 full-image mask per nucleus would be wasteful):
    returns (crop mask, x offset, y offset), or None when the polygon misses the image. Integer offsets keep
    the result identical to rasterising on the full grid."""
    h, w = shape
    x0 = max(int(math.floor(pts[:, 0].min())), 0)
    y0 = max(int(math.floor(pts[:, 1].min())), 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 1, w)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return polygon_mask((y1 - y0, x1 - x0), pts - [x0, y0]), x0, y0


def _escapes_root(reason: str) -> bool:
    """A reason that says the path leaves the dataset root (worse news than a missing file)."""
    return "outside the dataset root" in reason or "escapes" in reason or "absolute" in reason


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    globs = o["image_glob"] if isinstance(o["image_glob"], list) else [o["image_glob"]]
    dirs = o.get("annotation_dirs", [".", "../Annotations"])
    seen: set[str] = set()
    for g in globs:
        for img in walk(root, g):
            rel = rel_path(root, img)
            if img.stem in seen:
                yield Reject(spec.id, rel, "discover", f"duplicate image id {img.stem!r}", img.stem)
                continue
            seen.add(img.stem)
            xml_rel, reason = None, "no annotation XML found"
            for d in dirs:
                cand = posixpath.normpath(posixpath.join(posixpath.dirname(rel), d, img.stem + ".xml"))
                try:
                    require_file(root, cand)
                    xml_rel = cand
                    break
                except RecordError as e:
                    if "missing" not in e.reason:  # a path out of the root is worse news than a missing file
                        reason = e.reason
                    elif not _escapes_root(reason):
                        reason = f"annotation XML missing: {cand}"
            if xml_rel is None:
                yield Reject(spec.id, rel, "discover", reason, img.stem)
                continue
            yield RecordRef(key=img.stem, paths={"image": rel, "annotation": xml_rel})


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    label = spec.options.get("label", "nucleus")
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=spec.options.get("image_mode"), root=root)
    shape = image_size(px)
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str]] = []
    objects = []
    xml = ref.paths["annotation"]
    for k, (rid, pts) in enumerate(parse_regions(require_file(root, xml), root), start=1):
        oid = object_id(xml, region=k)  # the k-th Region of the XML, in file order
        objects.append(oid)
        if isinstance(pts, str):
            rejects.append((label, f"Region {rid}: {pts}", oid))
            continue
        got = region_mask(shape, pts)
        b = box_of(got[0]) if got else None
        if b is None:
            rejects.append((label, f"Region {rid}: polygon lies outside the {shape[1]}x{shape[0]} image", oid))
            continue
        m, ox, oy = got
        rois.append(SourceROI(label, (b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy), "polygon", k,
                              float(m.sum()), attributes={"region_id": rid}, source_object=oid))
    if not rois and not rejects:
        raise RecordError(f"{Path(ref.paths['annotation']).name} has no Region")
    src = source_image(rel, px, rois, rejects)
    src.objects = objects
    return [src]


@dataclass(frozen=True)
class AperioOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    image_glob: Any = None
    annotation_dirs: Any = None
    image_mode: Any = None
    label: Any = None


register("aperio_xml", discover, load, "Aperio ImageScope XML: one polygon instance per Region",
         options=AperioOptions)
