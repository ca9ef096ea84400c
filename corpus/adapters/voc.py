"""A12 `voc_xml`: Pascal VOC XML, one file per image (BCCD; any VOC export).

`annotation/{filename, size/{width,height}, object*/{name, bndbox/{xmin,ymin,xmax,ymax}}}`. VOC coordinates
are 1-based pixel indices with inclusive maxima, so the pixel-edge box is [xmin-1, ymin-1, xmax, ymax]
(`one_based: false` for exports that use 0-based edges). A box with xmin == xmax or ymin == ymax (BCCD has
two) is rejected as degenerate before the 1-based shift could make it a 1x1 box (csv_boxes.pixel_box); the
ingest runner clips boxes reaching outside the image.

Options:
  annotations: glob of the XML files ("BCCD/Annotations/*.xml")
  image_dir:   folder the <filename> values live in ("BCCD/JPEGImages")
  image_ext:   extension added when <filename> has none (some VOC exports omit it)
  split_lists: {split: list file of image stems} (BCCD/ImageSets/Main/{train,val,test}.txt)
"""

from __future__ import annotations

from dataclasses import dataclass

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import box_rois, image_size, source_image, split_lists, to_float
from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.paths import open_confined, rel_path, require_file, walk
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, object_id


def parse_voc(path: Path, data_root: Path | None = None) -> dict:
    """{filename, size: (w, h) or None, objects: [[name, [xmin, ymin, xmax, ymax] as written]]}; RecordError if
    unreadable. Boxes are converted in load (pixel_box), where a bad one is an ROI reject."""
    try:
        with open_confined(data_root or path.parent, path, "rb", "discover") as f:
            root = ET.parse(f).getroot()
    except (ET.ParseError, OSError) as e:
        raise RecordError(f"cannot parse VOC XML {path.name}: {e}", stage="discover")
    if root.tag != "annotation":
        raise RecordError(f"{path.name}: root element is <{root.tag}>, expected <annotation>", stage="discover")
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        vals = [to_float(bb.findtext(k) if bb is not None else None) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append([name, vals])
    size = None
    w, h = to_float(root.findtext("size/width")), to_float(root.findtext("size/height"))
    if w > 0 and h > 0:
        size = (int(w), int(h))
    return {"filename": (root.findtext("filename") or "").strip(), "size": size, "objects": objects}


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    files = list(walk(root, o["annotations"]))
    if not files:
        raise RecordError(f"no VOC XML matches {o['annotations']!r}", stage="discover")
    splits = split_lists(root, o.get("split_lists"))
    seen: dict[str, str] = {}
    for xml in files:
        xrel = rel_path(root, xml)
        try:
            ann = parse_voc(xml, root)
        except RecordError as e:
            yield Reject(spec.id, xrel, "discover", e.reason, xml.stem)
            continue
        name = ann["filename"] or xml.stem
        if not Path(name).suffix:
            name += o.get("image_ext", ".jpg")
        rel = f"{o['image_dir']}/{name}"
        if rel in seen:
            yield Reject(spec.id, xrel, "discover", f"image {name} already annotated by {seen[rel]}", xml.stem)
            continue
        try:
            require_file(root, rel)
        except RecordError as e:
            yield Reject(spec.id, xrel, "discover", f"{e.reason} (named in {xml.name})", xml.stem)
            continue
        seen[rel] = xrel
        yield RecordRef(key=xml.stem, paths={"image": rel, "annotation": xrel}, annotations=ann,
                        split=splits.get(Path(name).stem))


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=spec.options.get("image_mode"), root=root)
    h, w = image_size(px)
    ann = ref.annotations
    attrs = {}
    if ann["size"] and tuple(ann["size"]) != (w, h):
        # the boxes refer to the XML's size; a different image means they may not fit it
        raise RecordError(f"XML size {ann['size'][0]}x{ann['size'][1]} differs from the image's {w}x{h}")
    conv = "voc" if spec.options.get("one_based", True) else "xyxy"
    xml = ref.paths["annotation"]  # each <object> is a source object: the XML and its 1-based position
    items = [(name, vals, None, object_id(xml, object=k)) for k, (name, vals) in enumerate(ann["objects"], start=1)]
    rois, rejects = box_rois(items, conv, start=1)
    if not ann["objects"]:
        attrs["negative"] = True
    src = source_image(rel, px, rois, rejects, attrs)
    src.objects = [it[3] for it in items]
    return [src]


@dataclass(frozen=True)
class VocOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    annotations: Any = None
    image_dir: Any = None
    image_ext: Any = None
    image_mode: Any = None
    one_based: Any = None
    split_lists: Any = None


register("voc_xml", discover, load, "Pascal VOC XML boxes (1-based inclusive coordinates)",
         options=VocOptions)
