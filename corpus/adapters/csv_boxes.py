"""A7 `csv_boxes`: box tables (VinDr-CXR, RSNA Pneumonia, NIH ChestX-ray14 bbox, OCT5k boxes).

One record per image. Options (catalog `options`):
  annotations:  glob of the annotation file(s) relative to the root ("train.csv", "labels/*.txt"), or a list of
                globs (OCT5k: its one box table, or YOLO files)
  format:       csv | yolo | auto (default: sniff the first annotation file; OCT5k's format is unverified)
  columns:      replaces the header row (NIH's header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`)
  image_col, label_col, box_cols [4 names], convention xyxy | xywh
  label:        fixed label when the table has no label column (RSNA: every box is a lung opacity)
  negative_labels: labels whose rows mark a negative image ("No finding", VinDr class 14). Only these are
                negatives when the table has a label column: a row naming a finding with all four box fields
                empty is an ROI reject ("finding without a box"), never a negative image. A table without a
                label column (RSNA: every row is the fixed `label`) marks a negative by empty box fields
                (RSNA Target=0).
  reader_col, min_readers (2), fusion mean | union, fusion_iou (0.4): multi-reader fusion (VinDr)
  image_path:   template or list of templates, `{id}` = image column value (YOLO: `{stem}`), first existing wins
  image_mode:   PIL conversion ("L" for NIH, whose few RGBA/2-channel PNGs must become grey)
  split_lists:  {split: list file of image names} (NIH train_val_list.txt / test_list.txt)
  yolo_classes: class names by index (YOLO mode); YOLO rows are `cls cx cy w h`, normalised to [0, 1]

Multi-reader fusion (chosen: keep a finding marked by >= min_readers distinct readers, fused box = the MEAN
of the readers' boxes). Boxes of one label are clustered greedily: a box joins the cluster whose current mean
box it overlaps most (IoU >= fusion_iou) unless that cluster already has a box from the same reader. The mean
is the least biased estimate of where the readers agree; `fusion: union` (the enclosing box) is available for
a more inclusive target. Findings dropped for too few readers are reported in SourceImage.roi_rejects.

Coordinates are reported as the file gives them (converted to pixel-edge xyxy); the ingest runner validates
and clips them. Unparseable coordinates are reported as NaN so the runner rejects them with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import csv
from pathlib import Path
from typing import Any, Iterator

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.images import Pixels, read_2d
from medlvr.corpus.paths import open_confined, rel_path, require_file, walk
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id

NAN = float("nan")


# ---------------------------------------------------------------- helpers shared by the box/polygon adapters
def source_image(rel: str, px: Pixels, rois: list[SourceROI], roi_rejects=None, attributes=None) -> SourceImage:
    """A SourceImage carrying everything read_2d learned about the pixels."""
    attrs = dict(px.attributes)
    attrs.update(attributes or {})
    return SourceImage(source_path=rel, pixels=px.array, intensity=px.intensity, rois=rois,
                       window=px.window, window_name=px.window_name, spacing_mm=px.spacing_mm,
                       attributes=attrs, patient=px.patient, roi_rejects=list(roi_rejects or []))


def image_size(px: Pixels) -> tuple[int, int]:
    """(height, width) of a 2-D grey or HxWx3 image."""
    return int(px.array.shape[0]), int(px.array.shape[1])


def split_lists(root: Path, lists: dict[str, str] | None) -> dict[str, str]:
    """{image name or stem: split} from official list files (one name per line). A missing list file makes the
    whole split unknown, which is a dataset-level error: raise."""
    out: dict[str, str] = {}
    for split, rel in (lists or {}).items():
        with open_confined(root, rel, "r", "discover", errors="replace") as f:
            text = f.read()
        for line in text.splitlines():
            name = line.strip()
            if name:
                out[name] = split
                out.setdefault(Path(name).stem, split)
    return out


def resolve_image(root: Path, templates: str | list[str], **fields: str) -> str:
    """The first template that names an existing file inside the root; RecordError(discover) otherwise."""
    errors: list[RecordError] = []
    for t in [templates] if isinstance(templates, str) else list(templates):
        try:
            rel = t.format(**fields)
            require_file(root, rel)
            return rel
        except RecordError as e:
            errors.append(e)
    # an escaping path is worse news than a missing file: report that reason when any template gave it
    worst = [e for e in errors if "missing" not in e.reason]
    raise (worst or errors)[0]


def to_float(v: Any) -> float:
    try:
        return float(str(v).strip())
    except (TypeError, ValueError):
        return NAN


BOX_CONVENTIONS = ("xyxy", "xywh", "inclusive", "voc", "yolo")


def pixel_box(vals, convention: str, image_wh: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    """A box as the annotation file gives it -> pixel-edge xyxy. Every box-reading adapter converts through here.

      xyxy       pixel edges x0 y0 x1 y1 (DeepLesion, VinDr, 0-based VOC exports)
      xywh       corner + size (COCO bbox, fastMRI+, NIH)
      inclusive  0-based first and last covered pixel (ChestX-Det): maxima + 1
      voc        1-based first and last covered pixel (Pascal VOC, BCCD): minima - 1
      yolo       normalised centre + size, scaled by image_wh (w, h)

    A box with no extent IN THE FILE'S OWN NUMBERS (xmin == xmax, a zero width) is an annotation slip, not a
    one-pixel finding, and is rejected here, before a convention could turn it into a 1x1 box (BCCD has two).
    NaN passes: the runner rejects it with its own reason."""
    a, b, c, d = (float(v) for v in vals)
    extent = (c, d) if convention in ("xywh", "yolo") else (c - a, d - b)
    if extent[0] <= 0 or extent[1] <= 0:  # False for NaN
        raise RecordError(f"degenerate source box {[a, b, c, d]} ({convention}): zero or negative width or height",
                          stage="roi")
    if convention == "xyxy":
        return a, b, c, d
    if convention == "xywh":
        return a, b, a + c, b + d
    if convention == "inclusive":
        return a, b, c + 1.0, d + 1.0
    if convention == "voc":
        return a - 1.0, b - 1.0, c, d
    if convention == "yolo" and image_wh is not None:
        w, h = image_wh
        return (a - c / 2) * w, (b - d / 2) * h, (a + c / 2) * w, (b + d / 2) * h
    raise RecordError(f"unknown box convention {convention!r}; known: {list(BOX_CONVENTIONS)}", stage="discover")


def box_rois(items, convention: str, image_wh: tuple[int, int] | None = None, start: int = 0,
             ) -> tuple[list[SourceROI], list[tuple[str, ...]]]:
    """[(label, source box, attributes[, source object])] -> (ROIs with pixel-edge boxes, (label, reason[,
    source object]) rejects). An item's instance is its position in `items` (the source order), plus `start`."""
    rois, rejects = [], []
    for k, (label, vals, attrs, *oid) in enumerate(items):
        try:
            box = pixel_box(vals, convention, image_wh)
        except RecordError as e:
            rejects.append((label, e.reason, *oid))
            continue
        rois.append(SourceROI(label, box, "box", start + k, attributes=dict(attrs or {}),
                              source_object=oid[0] if oid else ""))
    return rois, rejects


def iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if not (iw > 0 and ih > 0):  # also false for NaN
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reader_clusters(marks: list[tuple[str, list[float]]], iou_thr: float = 0.4) -> list[list[int]]:
    """Cluster one label's (reader, box) marks: lists of mark indices, each cluster one reader's mark at most."""
    clusters: list[list[int]] = []
    for k, (reader, box) in enumerate(marks):
        best, best_iou = None, iou_thr
        for c in clusters:
            if any(marks[i][0] == reader for i in c):
                continue
            v = iou(_combine([marks[i][1] for i in c], "mean"), box)
            if v >= best_iou:
                best, best_iou = c, v
        if best is None:
            clusters.append([k])
        else:
            best.append(k)
    return clusters


def fuse_readers(marks: list[tuple[str, list[float]]], min_readers: int, how: str = "mean",
                 iou_thr: float = 0.4) -> tuple[list[tuple[list[float], int]], list[int]]:
    """Cluster one label's (reader, box) marks; returns ([(fused box, n readers)] kept, [n readers] dropped)."""
    kept, dropped = [], []
    for c in reader_clusters(marks, iou_thr):
        n = len({marks[i][0] for i in c})
        if n >= min_readers:
            kept.append((_combine([marks[i][1] for i in c], how), n))
        else:
            dropped.append(n)
    return kept, dropped


def _combine(boxes: list[list[float]], how: str) -> list[float]:
    if how == "union":
        return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)]
    return [sum(b[i] for b in boxes) / len(boxes) for i in range(4)]


# ---------------------------------------------------------------- table reading
def sniff_format(path: Path, root: Path | None = None) -> str:
    """'yolo' when the first non-empty line is `int float float float float` (whitespace separated), else 'csv'."""
    with open_confined(root or path.parent, path, "r", "discover", encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            toks = line.split()
            if not toks:
                continue
            if len(toks) == 5 and "," not in line:
                try:
                    int(toks[0])
                    [float(t) for t in toks[1:]]
                    return "yolo"
                except ValueError:
                    pass
            return "csv"
    return "csv"


def read_csv_rows(path: Path, columns: list[str] | None, root: Path | None = None) -> list[dict[str, str]]:
    """Rows as dicts keyed by stripped header names (or by `columns`, which then replaces the header)."""
    try:
        with open_confined(root or path.parent, path, "r", "discover", newline="", encoding="utf-8-sig",
                           errors="replace") as f:
            rows = list(csv.reader(f))
    except (OSError, csv.Error) as e:
        raise RecordError(f"cannot read annotation table {path.name}: {e}", stage="discover")
    if not rows:
        raise RecordError(f"annotation table {path.name} is empty", stage="discover")
    header = [h.strip() for h in rows[0]]
    if columns:
        header = list(columns)
    elif any(h == "" for h in header):
        raise RecordError(f"{path.name}: header {rows[0]!r} has unnamed columns; set options.columns",
                          stage="discover")
    return [{h: v.strip() for h, v in zip(header, r)} for r in rows[1:] if any(v.strip() for v in r)]


def missing_columns_reason(file_name: str, missing: list[str], header) -> str:
    """A table lacks columns the catalog names. The header is not echoed (in a file without a header row it is the
    first data row, patient ids and all): the reason names the missing columns, counts the others, and says when
    the header is one column holding another separator (a CSV re-saved with ';' or tabs)."""
    header = list(header)
    reason = f"{file_name}: missing columns {missing}; the header has {len(header)} other column(s)"
    seps = [name for sep, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")) if len(header) == 1 and sep in header[0]]
    return reason + (f" (separated by {seps[0]} instead of ',')" if seps else "")


def _csv_groups(spec, root: Path, files: list[Path]) -> dict[str, list]:
    """{image id: [[label, reader, source box or None], ...]} in file order; None = a negative row, [] = a
    finding whose box fields are all empty (an ROI reject in `load`)."""
    o = spec.options
    image_col, label_col = o.get("image_col", "image"), o.get("label_col")
    box_cols = o.get("box_cols")
    reader_col = o.get("reader_col")
    negatives = set(o.get("negative_labels", []))
    groups: dict[str, list] = {}
    for path in files:
        rows = read_csv_rows(path, o.get("columns"), root)
        rel = rel_path(root, path)
        need = [image_col] + ([label_col] if label_col else []) + list(box_cols or []) + (
            [reader_col] if reader_col else [])
        if rows and (missing := [c for c in need if c not in rows[0]]):
            raise RecordError(missing_columns_reason(path.name, missing, rows[0]), stage="discover")
        for row_no, r in enumerate(rows, start=1):
            label = r.get(label_col, "") if label_col else o.get("label", "finding")
            raw = [r.get(c, "") for c in box_cols]
            if label in negatives or (not label_col and all(v == "" for v in raw)):
                box = None
            elif all(v == "" for v in raw):
                box = []  # a named finding with no box: not evidence that the image is negative
            else:
                box = [to_float(v) for v in raw]  # as the file gives it: converted (and checked) in load
            # the row's identity: table + its number among the data rows (never a value of the row: ids are PHI)
            groups.setdefault(r[image_col], []).append([label, r.get(reader_col) if reader_col else None, box,
                                                        object_id(rel, row=row_no)])
    return groups


def _yolo_groups(root: Path, files: list[Path]) -> Iterator[tuple[str, list] | Reject]:
    """{stem: [[class index, cx, cy, w, h], ...]} per label file; an unparseable line rejects its file."""
    for path in files:
        rows, bad = [], None
        try:
            with open_confined(root, path, "r", "discover", errors="replace") as f:
                text = f.read()
        except RecordError as e:
            yield Reject("", rel_path(root, path), "discover", e.reason, path.stem)
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            toks = line.split()
            if not toks:
                continue
            try:
                if len(toks) != 5:
                    raise ValueError(f"{len(toks)} fields")
                rows.append([int(toks[0])] + [float(t) for t in toks[1:]] + [object_id(rel_path(root, path), line=n)])
            except ValueError as e:
                bad = f"YOLO line {n} is not `class cx cy w h`: {e}"
                break
        yield (path.stem, rows) if bad is None else Reject("", rel_path(root, path), "discover", bad, path.stem)


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    globs = [o["annotations"]] if isinstance(o["annotations"], str) else list(o["annotations"])
    files = sorted({p for g in globs for p in walk(root, g)})  # a list: the places a release may keep them
    if not files:
        raise RecordError(f"no annotation file matches {o['annotations']!r}", stage="discover")
    fmt = o.get("format", "auto")
    if fmt == "auto":
        fmt = sniff_format(files[0], root)
    splits = split_lists(root, o.get("split_lists"))
    templates = o.get("image_path", "{id}")
    if fmt == "yolo":
        items: Iterator = _yolo_groups(root, files)
    elif fmt == "csv":
        items = iter(_csv_groups(spec, root, files).items())
    else:
        raise RecordError(f"unknown annotation format {fmt!r}", stage="discover")
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Reject):
            item.dataset = spec.id
            yield item
            continue
        image_id, rows = item
        if image_id in seen:  # two YOLO files with one stem, or two tables naming the same image
            yield Reject(spec.id, image_id, "discover", f"duplicate image id {image_id!r}", image_id)
            continue
        seen.add(image_id)
        try:
            rel = resolve_image(root, templates, id=image_id, stem=image_id)
        except RecordError as e:
            yield Reject(spec.id, image_id, "discover", e.reason, image_id)
            continue
        name = Path(rel).name
        yield RecordRef(key=image_id, paths={"image": rel}, annotations={"format": fmt, "rows": rows},
                        split=splits.get(name, splits.get(Path(rel).stem)))


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=o.get("image_mode"), multi_frame=spec.multi_frame, root=root)
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str]] = []
    if ref.annotations["format"] == "yolo":
        h, w = image_size(px)
        classes = list(o.get("yolo_classes", []))
        items = []
        for cls, *vals, oid in ref.annotations["rows"]:
            if not 0 <= cls < len(classes):
                rejects.append((f"class {cls}", f"YOLO class index {cls} not in options.yolo_classes", oid))
                continue
            items.append((classes[cls], vals, None, oid))
        rois, bad = box_rois(items, "yolo", (w, h))
        return [source_image(rel, px, rois, rejects + bad)]
    conv = o.get("convention", "xyxy")
    rows = ref.annotations["rows"]
    findings = [r for r in rows if r[2] is not None]
    objects = [r[3] for r in findings]
    attrs = {"negative": True} if not findings else {}
    rejects += [(label, "finding without a box (its box columns are empty)", oid) for label, _, vals, oid in findings
                if not vals]
    findings = [r for r in findings if r[2]]
    if o.get("reader_col"):
        attrs["readers"] = len({r[1] for r in rows})
        by_label: dict[str, list] = {}
        for label, reader, vals, oid in findings:
            try:
                by_label.setdefault(label, []).append((reader, list(pixel_box(vals, conv)), oid))
            except RecordError as e:  # a reader's degenerate box is not one of that reader's marks
                rejects.append((label, e.reason, oid))
        min_readers = int(o.get("min_readers", 2))
        for label, marks in by_label.items():
            for c in reader_clusters([(r, b) for r, b, _ in marks], float(o.get("fusion_iou", 0.4))):
                n, first = len({marks[i][0] for i in c}), marks[c[0]][2]
                if n < min_readers:
                    rejects += [(label, f"marked by {n} reader(s), fewer than {min_readers}", marks[i][2]) for i in c]
                    continue
                box = _combine([marks[i][1] for i in c], o.get("fusion", "mean"))
                rois.append(SourceROI(label, tuple(box), "box", int(first.rsplit("=", 1)[1]),
                                      attributes={"readers": n}, source_object=first))
                rejects += [(label, f"fused with {first.rsplit('#', 1)[1]} of the same table by the reader-agreement "
                                    f"rule ({n} readers)", marks[i][2]) for i in c[1:]]
    else:
        rois, bad = box_rois([(label, vals, None, oid) for label, _, vals, oid in findings], conv)
        rejects += bad
    src = source_image(rel, px, rois, rejects, attrs)
    src.objects = objects
    return [src]


@dataclass(frozen=True)
class CsvBoxesOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    annotations: Any = None
    box_cols: Any = None
    columns: Any = None
    convention: Any = None
    format: Any = None
    fusion: Any = None
    fusion_iou: Any = None
    image_col: Any = None
    image_mode: Any = None
    image_path: Any = None
    label: Any = None
    label_col: Any = None
    min_readers: Any = None
    negative_labels: Any = None
    reader_col: Any = None
    split_lists: Any = None
    yolo_classes: Any = None


register("csv_boxes", discover, load,
         "box tables (CSV with column map, xyxy/xywh, reader fusion, negative rows) or YOLO txt, sniffed",
         options=CsvBoxesOptions)
