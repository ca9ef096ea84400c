"""A9 `coco`: COCO instance JSON (LIVECell and any COCO export).

Accepts `annotations` as a LIST (standard) or a DICT keyed by annotation id (the released LIVECell files;
pycocotools fails on them with "string indices must be integers"). Segmentation may be polygons
([[x1, y1, x2, y2, ...], ...], parts OR'ed), uncompressed RLE ({"size": [h, w], "counts": [ints]}) or
compressed RLE (counts as a string); COCO RLE runs alternate background/foreground starting with background,
column-major. `bbox` is xywh; it is the ROI only when an annotation has no segmentation.

One ROI per annotation (cell/nucleus instance): counting questions need every instance, so none is merged or
dropped for size; QA generation decides what to ask about them.

Options:
  files:      {split: COCO JSON or a list of the places it may be, first existing wins}; the split becomes the
              record's official split (LIVECell: the dataset root, or annotations/LIVECell/ as the release's
              bucket lays it out)
  image_dirs: {split: folder the file_name values are relative to, or a list of folders, first holding it wins}
  label:      fixed raw label (default: the category name)
  attribute_regex: {attribute: regex with one group applied to the file name} (LIVECell cell line)
"""

from __future__ import annotations

from dataclasses import dataclass

import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import image_size, pixel_box, resolve_image, source_image, to_float
from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.paths import require_file
from medlvr.corpus.adapters.sidecar import read_json
from medlvr.corpus.masks import box_of, polygon_mask
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id


def rle_counts(counts) -> list[int]:
    """COCO RLE counts: a list of ints, or pycocotools' compressed string (6-bit chunks, delta-coded)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    out: list[int] = []
    p = 0
    s = str(counts)
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise RecordError("compressed COCO RLE string ends inside a value")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_coco_rle(seg: dict, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    size = seg.get("size")
    if not size or [int(v) for v in size] != [h, w]:
        raise ValueError(f"RLE size {size} differs from the image size {[h, w]}")
    counts = rle_counts(seg.get("counts", []))
    if any(c < 0 for c in counts) or sum(counts) > h * w:
        raise ValueError(f"RLE runs cover {sum(counts)} pixels, more than the image's {h * w} (or negative)")
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for i, c in enumerate(counts):
        if i % 2:
            flat[pos:pos + c] = True
        pos += c
    return flat.reshape(w, h).T


def instance_mask(seg, shape: tuple[int, int]) -> np.ndarray:
    """Mask of one annotation's segmentation; ValueError on malformed input."""
    if isinstance(seg, dict):
        return decode_coco_rle(seg, shape)
    if isinstance(seg, list):
        m = np.zeros(shape, dtype=bool)
        for part in seg:
            pts = np.asarray(part, dtype=float)
            if pts.size < 6 or pts.size % 2 or not np.isfinite(pts).all():
                raise ValueError("polygon needs >= 3 finite (x, y) vertices")
            m |= polygon_mask(shape, pts.reshape(-1, 2))
        return m
    raise ValueError(f"unknown segmentation type {type(seg).__name__}")


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    attr_res = {k: re.compile(v) for k, v in (o.get("attribute_regex") or {}).items()}
    seen: set[str] = set()
    for split, json_candidates in o["files"].items():
        rel_json = resolve_image(root, json_candidates)  # the first of the documented places that holds it
        d = read_json(require_file(root, rel_json), root)
        image_dirs = o["image_dirs"][split]
        image_dirs = [image_dirs] if isinstance(image_dirs, str) else list(image_dirs)
        if not isinstance(d, dict) or "images" not in d or "annotations" not in d:
            raise RecordError(f"{rel_json}: not a COCO file (needs images and annotations)", stage="discover")
        anns = d["annotations"]
        anns = list(anns.values()) if isinstance(anns, dict) else list(anns)  # the LIVECell dict pitfall
        cats = {c.get("id"): str(c.get("name", c.get("id"))) for c in d.get("categories", [])}
        by_image: dict = {}
        for pos, a in enumerate(anns, start=1):
            if isinstance(a, dict):
                by_image.setdefault(a.get("image_id"), []).append((pos, a))
        image_ids: set = set()
        for im in d["images"]:
            name = im.get("file_name") if isinstance(im, dict) else None
            if not isinstance(name, str):
                yield Reject(spec.id, rel_json, "discover", f"image entry without file_name: {im!r}"[:200])
                continue
            rel = f"{image_dirs[0]}/{name}"
            key = f"{split}/{name}"
            if key in seen or im.get("id") in image_ids:
                yield Reject(spec.id, rel, "discover", f"duplicate image id/file_name {im.get('id')!r}/{name!r}",
                             key)
                continue
            seen.add(key)
            image_ids.add(im.get("id"))
            try:
                rel = resolve_image(root, [f"{d}/{{name}}" for d in image_dirs], name=name)
            except RecordError as e:
                yield Reject(spec.id, rel, "discover", e.reason, key)
                continue
            rows = [{"label": o.get("label") or cats.get(a.get("category_id"), str(a.get("category_id"))),
                     "segmentation": a.get("segmentation"), "bbox": a.get("bbox"), "id": a.get("id"),
                     # the annotation's identity: the JSON and the annotation's id (its position when it has none)
                     "object": object_id(rel_json, annotation=a.get("id") if isinstance(a.get("id"), int)
                                         else f"#{pos}")}
                    for pos, a in by_image.get(im.get("id"), [])]
            attrs = {}
            for k, rx in attr_res.items():
                m = rx.search(Path(name).name)
                if m:
                    attrs[k] = m.group(1)
            yield RecordRef(key=key, paths={"image": rel}, annotations=rows, split=split, attributes=attrs)
        orphans = [a.get("id") for img_id, lst in by_image.items() if img_id not in image_ids for _, a in lst]
        if orphans:
            yield Reject(spec.id, rel_json, "discover",
                         f"{len(orphans)} annotation(s) reference unknown image ids (first: {orphans[0]})",
                         f"{rel_json}#orphans")


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=spec.options.get("image_mode"), root=root)
    shape = image_size(px)
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str]] = []
    for k, a in enumerate(ref.annotations):
        seg, label, oid = a["segmentation"], a["label"], a.get("object") or object_id(rel, annotation=k)
        if seg:
            try:
                m = instance_mask(seg, shape)
            except (ValueError, TypeError, RecordError) as e:
                rejects.append((label, f"annotation {a['id']}: {getattr(e, 'reason', e)}", oid))
                continue
            b = box_of(m)
            if b is None:
                rejects.append((label, f"annotation {a['id']}: empty mask (segmentation outside the image?)", oid))
                continue
            origin = "mask" if isinstance(seg, dict) else "polygon"
            rois.append(SourceROI(label, b, origin, k, float(m.sum()), source_object=oid))
        elif isinstance(a["bbox"], list) and len(a["bbox"]) == 4:
            try:  # unparseable -> NaN, rejected by the runner; zero width/height rejected here
                box = pixel_box([to_float(v) for v in a["bbox"]], "xywh")
            except RecordError as e:
                rejects.append((label, f"annotation {a['id']}: {e.reason}", oid))
                continue
            rois.append(SourceROI(label, box, "box", k, source_object=oid))
        else:
            rejects.append((label, f"annotation {a['id']}: neither segmentation nor a 4-value bbox", oid))
    src = source_image(rel, px, rois, rejects, dict(ref.attributes))
    src.objects = [a.get("object") or object_id(rel, annotation=k) for k, a in enumerate(ref.annotations)]
    return [src]


@dataclass(frozen=True)
class CocoOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    files: Any = None
    image_dirs: Any = None
    attribute_regex: Any = None
    image_mode: Any = None
    label: Any = None


register("coco", discover, load, "COCO instance JSON; annotations as list or dict; polygons, RLE or xywh boxes",
         options=CocoOptions)
