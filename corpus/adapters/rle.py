"""A10 `rle_csv`: run-length-encoded masks in a CSV (SIIM-ACR pneumothorax, 2018 Data Science Bowl).

Two encodings, both column-major (pixels numbered top-to-bottom, then left-to-right):
  relative (SIIM stage 1): pairs (offset, length); each offset counts from the END of the previous run
           (the first from pixel 0). Decoded into a flat buffer, reshaped to (width, height), TRANSPOSED
           (as torchxrayvision's rle2mask does).
  standard (Kaggle/DSB):   pairs (start, length); start is absolute and 1-indexed.
Both decoders check every run: a negative offset, a non-positive length or a run past the image end raises
RecordError, so the record is rejected with that reason instead of producing a wrapped or truncated mask.

Options:
  table:        the CSV (SIIM `train-rle.csv`, header `ImageId, EncodedPixels` with a leading space, so header
                names are stripped; DSB `stage1_train_labels.csv`)
  encoding:     relative | standard
  image_col / rle_col: column names (default ImageId / EncodedPixels)
  image_path:   template(s) with `{id}` (DSB `stage1_train/{id}/images/{id}.png`), or
  image_glob:   glob indexed by file stem (SIIM `dicom-images-train/*/*/*.dcm`: study/series are not in the CSV)
  label:        raw label of the masks
  per_row_instances: true = each row is one instance (DSB: one row per nucleus, one ROI per row);
                false = rows of an image are OR'ed into one mask, split into connected components (SIIM)
  negative:     the RLE value meaning "no finding" (default "-1")
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import (image_size, missing_columns_reason, read_csv_rows, resolve_image,
                                              source_image)
from medlvr.corpus.adapters.images import read_2d
from medlvr.corpus.limits import charge
from medlvr.corpus.paths import rel_path, require_file, walk
from medlvr.corpus.masks import box_of, mask_objects
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id


def _pairs(rle: str) -> np.ndarray:
    toks = rle.split()
    if len(toks) % 2:
        raise RecordError(f"RLE has an odd number of values ({len(toks)})")
    try:
        vals = np.array([int(t) for t in toks], dtype=np.int64)
    except ValueError:
        raise RecordError("RLE contains a non-integer value")
    return vals.reshape(-1, 2)


def decode_relative(rle: str, height: int, width: int) -> np.ndarray:
    """SIIM stage-1 RLE -> (height, width) bool mask."""
    n = height * width
    flat = np.zeros(n, dtype=bool)
    pos = 0
    for i, (offset, length) in enumerate(_pairs(rle)):
        if offset < 0 or length <= 0:
            raise RecordError(f"RLE run {i}: offset {offset}, length {length} (need offset >= 0, length > 0)")
        pos += offset
        if pos + length > n:
            raise RecordError(f"RLE run {i} ends at pixel {pos + length}, past the image end ({n} = "
                              f"{width}x{height})")
        flat[pos:pos + length] = True
        pos += length
    return flat.reshape(width, height).T


def decode_standard(rle: str, height: int, width: int) -> np.ndarray:
    """Kaggle RLE (absolute, 1-indexed starts, column-major) -> (height, width) bool mask."""
    n = height * width
    flat = np.zeros(n, dtype=bool)
    for i, (start, length) in enumerate(_pairs(rle)):
        if start < 1 or length <= 0:
            raise RecordError(f"RLE run {i}: start {start}, length {length} (need start >= 1, length > 0)")
        if start - 1 + length > n:
            raise RecordError(f"RLE run {i} ends at pixel {start - 1 + length}, past the image end ({n} = "
                              f"{width}x{height})")
        flat[start - 1:start - 1 + length] = True
    return flat.reshape(width, height).T


def encode_standard(mask: np.ndarray) -> str:
    """Inverse of decode_standard (used by the sample writers and tests)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=np.uint8).T.ravel(), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def encode_relative(mask: np.ndarray) -> str:
    """Inverse of decode_relative."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=np.uint8).T.ravel(), [0]])
    edges = np.flatnonzero(np.diff(flat))
    out, prev_end = [], 0
    for s, e in zip(edges[0::2], edges[1::2]):
        out += [str(s - prev_end), str(e - s)]
        prev_end = e
    return " ".join(out)


DECODERS = {"relative": decode_relative, "standard": decode_standard}


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    if o.get("encoding") not in DECODERS:
        raise RecordError(f"options.encoding must be one of {sorted(DECODERS)}", stage="discover")
    table = require_file(root, o["table"])
    image_col, rle_col = o.get("image_col", "ImageId"), o.get("rle_col", "EncodedPixels")
    rows = read_csv_rows(table, o.get("columns"), root)
    if rows and (missing := [c for c in (image_col, rle_col) if c not in rows[0]]):
        raise RecordError(missing_columns_reason(table.name, missing, rows[0]), stage="discover")
    groups: dict[str, list[str]] = {}
    for row_no, r in enumerate(rows, start=1):  # a row's identity: the table and its data row number
        groups.setdefault(r[image_col], []).append((r[rle_col], object_id(o["table"], row=row_no)))
    index: dict[str, str] | None = None
    dup_stems: set[str] = set()
    if o.get("image_glob"):
        index = {}
        for p in walk(root, o["image_glob"]):
            if p.stem in index:
                dup_stems.add(p.stem)
            index[p.stem] = rel_path(root, p)
    for image_id, rles in groups.items():
        if index is not None:
            if image_id in dup_stems:
                yield Reject(spec.id, index[image_id], "discover", f"duplicate image id {image_id!r}", image_id)
                continue
            if image_id not in index:
                yield Reject(spec.id, image_id, "discover", f"file referenced but missing: {image_id}", image_id)
                continue
            rel = index[image_id]
        else:
            try:
                rel = resolve_image(root, o["image_path"], id=image_id)
            except RecordError as e:
                yield Reject(spec.id, image_id, "discover", e.reason, image_id)
                continue
        yield RecordRef(key=image_id, paths={"image": rel}, annotations=rles)


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    rel = ref.paths["image"]
    px = read_2d(require_file(root, rel), mode=o.get("image_mode"), multi_frame=spec.multi_frame, root=root)
    h, w = image_size(px)
    decode = DECODERS[o["encoding"]]
    label, negative = o.get("label", "finding"), str(o.get("negative", "-1"))
    rows = [(r, oid) for r, oid in ref.annotations if r.strip() not in (negative, "")]
    charge(h * w * len(rows), f"{rel}: {len(rows)} run-length masks of {w}x{h}")  # each decodes to a full mask
    masks = [decode(r, h, w) for r, _ in rows]  # raises on any out-of-bounds run: the record is rejected
    rois: list[SourceROI] = []
    rejects: list[tuple[str, ...]] = []
    objects: list[str] = []
    if o.get("per_row_instances"):
        # one instance per row, kept even when small: nuclei below the speck size are real annotations
        for k, (m, (_, oid)) in enumerate(zip(masks, rows)):
            objects.append(oid)
            b = box_of(m)
            if b is None:
                rejects.append((label, "run-length mask covers no pixel", oid))
                continue
            rois.append(SourceROI(label, b, "mask", k, float(m.sum()), source_object=oid))
    elif masks:
        # the rows of one image are OR-ed and split into components: each component is an object of those rows
        source = object_id(rows[0][1].split("#")[0], rows="+".join(oid.rsplit("=", 1)[1] for _, oid in rows))
        rois, rejects, objects = mask_objects(np.logical_or.reduce(masks), label, source=source, instances=True)
    attrs = {"negative": True} if not rows else {}
    src = source_image(rel, px, rois, rejects, attrs)
    src.objects = objects
    return [src]


@dataclass(frozen=True)
class RleOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    columns: Any = None
    encoding: Any = None
    image_col: Any = None
    image_glob: Any = None
    image_mode: Any = None
    image_path: Any = None
    label: Any = None
    negative: Any = None
    per_row_instances: Any = None
    rle_col: Any = None
    table: Any = None


register("rle_csv", discover, load, "RLE masks in a CSV: SIIM relative (transposed) or Kaggle standard RLE",
         options=RleOptions)
