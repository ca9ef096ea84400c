"""A6 `hdf5_csv_boxes`: fastMRI HDF5 volumes with the fastMRI+ box tables (docs/datasets.md §2.2 no. 9).

One record per reviewed volume (a file named in a `*_file_list.csv` or in an annotation table).
  * Pixels: `reconstruction_rss` (multi-coil) or `reconstruction_esc` (single-coil knee), (slices, H, W),
    flipped up-down (`[:, ::-1, :]`) because the boxes were drawn on the flipped view (official notebook).
    Otherwise as stored: the files carry no patient axes (the `ismrmrd_header` XML describes the encoding, not the
    image directions, and the per-readout acquisition headers that hold them are not released), so the display
    convention of the other volumes (corpus.orientation) cannot be derived (docs/datasets.md, "Orientation").
  * Table header `file,slice,study_level,x,y,width,height,label`; boxes are xywh pixels on that flipped view;
    `slice` is 0-based. Labels are stripped of whitespace (`Joint Effusion ` has a trailing space).
  * `study_level=Yes` rows carry no box: their labels become the study attribute `study_labels`.
  * A reviewed file without box rows is a negative volume: `negatives_per_volume` spaced middle slices.
  * Intensity: every slice of a volume shares one window, (0, the volume's 99.5th percentile).
Options: tables [{csv, file_list}], h5_glob ("**/*.h5"), datasets ([reconstruction_rss, reconstruction_esc]),
  percentile (99.5), negatives_per_volume (2).
"""

from __future__ import annotations

from dataclasses import dataclass

import csv
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import pixel_box
from medlvr.corpus.adapters.images import one_line_cause
from medlvr.corpus.limits import charge
from medlvr.corpus.paths import open_confined, rel_path, require_file, walk
from medlvr.corpus.records import (RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id)

HEADER = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
DATASETS = ("reconstruction_rss", "reconstruction_esc")


def _stem(name: str) -> str:
    name = name.strip()
    return name[:-3] if name.endswith(".h5") else name


def read_box_table(path: Path, root: Path | None = None) -> list[dict[str, str]]:
    try:
        with open_confined(root or path.parent, path, "r", "discover", newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RecordError(f"cannot read {path.name}: {e}", stage="discover")
    # an empty file has no header either: not a table without boxes (that would make every volume a negative)
    if missing := [c for c in HEADER if c not in header]:
        raise RecordError(f"{path.name}: missing columns {missing}", stage="discover")
    return rows


def read_file_list(path: Path, root: Path | None = None) -> list[str]:
    """File stems of a `*_file_list.csv` (first column; a `file` header line is skipped)."""
    try:
        with open_confined(root or path.parent, path, "r", "discover", newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RecordError(f"cannot read {path.name}: {e}", stage="discover")
    return [_stem(r[0]) for r in rows if r[0].strip().lower() != "file"]


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    index: dict[str, str] = {}
    dups: set[str] = set()
    for p in walk(root, o.get("h5_glob", "**/*.h5")):
        if p.stem in index:
            dups.add(p.stem)
        index[p.stem] = rel_path(root, p)
    reviewed: dict[str, dict[str, Any]] = {}  # stem -> {"rows": [...], "study": [...]}
    for t in o.get("tables") or []:
        for row_no, r in enumerate(read_box_table(require_file(root, t["csv"]), root), start=1):
            entry = reviewed.setdefault(_stem(r["file"] or ""), {"rows": [], "study": []})
            label = (r["label"] or "").strip()
            if (r["study_level"] or "").strip().lower() == "yes":
                if label and label not in entry["study"]:
                    entry["study"].append(label)
            else:
                # the row's identity: the table and its data row number (1 = the first row under the header)
                entry["rows"].append({**{k: (r[k] or "").strip() for k in HEADER},
                                      "object": object_id(t["csv"], row=row_no), "row": row_no})
        if t.get("file_list"):
            for stem in read_file_list(require_file(root, t["file_list"]), root):
                reviewed.setdefault(stem, {"rows": [], "study": []})
    for stem, entry in reviewed.items():
        if not stem:
            yield Reject(spec.id, "", "discover", "annotation row without a file name", "")
            continue
        if stem in dups:
            yield Reject(spec.id, index[stem], "discover", f"duplicate volume id {stem!r} (several .h5 files)", stem)
            continue
        if stem not in index:
            yield Reject(spec.id, f"{stem}.h5", "discover", f"file referenced but missing: {stem}.h5", stem)
            continue
        yield RecordRef(key=stem, paths={"image": index[stem]}, annotations=entry)


def read_volume(path: Path, names=DATASETS, root: Path | None = None) -> tuple[np.ndarray, str]:
    """The reconstruction as (slices, H, W) float32, flipped up-down to the annotated orientation. The dataset's
    declared shape (as float32) is charged against the record limit before anything is read; it is then read
    slice by slice into that one array (the whole volume is needed: its window is a volume percentile). h5py
    is given the confined Python file object, so no file is opened past corpus.paths."""
    import h5py

    try:
        with open_confined(root or path.parent, path) as fobj, h5py.File(fobj, "r") as f:
            name = next((n for n in names if n in f), None)
            if name is None:
                raise RecordError(f"{path.name}: no reconstruction dataset (looked for {list(names)}; "
                                  f"found {sorted(f.keys())})")
            ds = f[name]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or min(ds.shape) < 1:
                raise RecordError(f"{path.name}: {name} must be (slices, H, W), got shape "
                                  f"{getattr(ds, 'shape', None)}")
            if ds.dtype.kind not in "fiu":
                raise RecordError(f"{path.name}: {name} holds {ds.dtype} values, not real numbers")
            charge(int(np.prod(ds.shape, dtype=np.int64)) * 4,
                   f"{path.name}: {name} of shape {'x'.join(map(str, ds.shape))} (as float32)")
            arr = np.empty(ds.shape, dtype=np.float32)
            for z in range(ds.shape[0]):
                arr[z] = ds[z][::-1, :]
    except RecordError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise RecordError(f"cannot read HDF5 {path.name}: {one_line_cause(e)}")
    if not np.isfinite(arr).all():
        raise RecordError(f"{path.name}: {name} contains NaN or infinite values")
    return arr, name


def _num(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan  # reported as NaN: the runner rejects the box with its reason


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    vol, dsname = read_volume(require_file(root, ref.paths["image"]), tuple(o.get("datasets") or DATASETS), root)
    hi = float(np.percentile(vol, float(o.get("percentile", 99.5))))
    if not hi > 0:
        raise RecordError(f"volume {ref.key} has no positive intensities (99.5th percentile {hi:g})")
    nz = vol.shape[0]
    by_slice: dict[int, list[SourceROI]] = {}
    rejects: list[tuple[str, str]] = []
    seen: set[tuple] = set()
    for r in ref.annotations["rows"]:
        label, oid = r["label"], r["object"]
        try:
            z = int(r["slice"])
        except ValueError:
            rejects.append((label, f"slice {r['slice']!r} is not an integer", oid))
            continue
        if not 0 <= z < nz:
            rejects.append((label, f"slice {z} outside the volume's {nz} slices", oid))
            continue
        if spec.concept(label) is None:  # decided before any image is made: a slice of unmapped boxes is no image
            rejects.append((label, spec.label_reject_reason(label), oid))
            continue
        x, y, w, h = (_num(r[k]) for k in ("x", "y", "width", "height"))
        key = (z, label, x, y, w, h)
        if key in seen:
            rejects.append((label, f"duplicate box row on slice {z}", oid))
            continue
        seen.add(key)
        try:
            box = pixel_box((x, y, w, h), "xywh")
        except RecordError as e:
            rejects.append((label, e.reason, oid))
            continue
        by_slice.setdefault(z, []).append(SourceROI(label, box, "box", r["row"], source_object=oid))
    attrs = {"reconstruction": dsname}
    if ref.annotations["study"]:
        attrs["study_labels"] = list(ref.annotations["study"])
    chosen = {z: "annotated" for z in by_slice}
    if not ref.annotations["rows"]:  # reviewed, nothing boxed: a negative volume
        k = int(o.get("negatives_per_volume", 2))
        mid = np.linspace(0, nz - 1, k + 2)[1:-1].round().astype(int) if nz > 2 else np.arange(nz)[:k]
        chosen = {int(z): "negative" for z in mid}
    elif not by_slice:
        raise RecordError(f"no usable box row for {ref.key}: {rejects[0][1] if rejects else 'none'}",
                          roi_rejects=rejects)
    out = []
    for z, why in sorted(chosen.items()):
        out.append(SourceImage(source_path=ref.paths["image"], pixels=vol[z], intensity="window",
                               rois=by_slice.get(z, []), suffix=f"z{z:04d}", window=(0.0, hi),
                               window_name="p99.5_volume", slice_index=z, slice_axis=0,
                               attributes=dict(attrs, slice_role=why)))
    if out:
        out[0].roi_rejects.extend(rejects)
        out[0].objects = [r["object"] for r in ref.annotations["rows"]]
    return out


@dataclass(frozen=True)
class FastMriOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    datasets: Any = None
    h5_glob: Any = None
    negatives_per_volume: Any = None
    percentile: Any = None
    tables: Any = None


register("hdf5_csv_boxes", discover, load, "fastMRI+: HDF5 reconstructions (flipped up-down) + xywh box CSV",
         options=FastMriOptions)
