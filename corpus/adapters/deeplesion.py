"""A5 `png16_csv`: DeepLesion key slices (uint16 PNG, HU = value - 32768) with `DL_info.csv` (docs/datasets.md §2.1).

One record per key slice: all DL_info rows naming the same `File_name` are lesions of one image.
  * `File_name` `000001_01_01_109.png` splits on the LAST `_`: folder `Images_png/000001_01_01/`, file `109.png`.
  * Multi-value fields are one quoted string with values separated by ", " (csv handles the quoting).
  * `Bounding_boxes` is float xyxy in pixels; reported as given (the runner validates and clips).
  * `Coarse_lesion_type` 1..8 names the lesion's region, -1 = unlabelled (options.lesion_types maps code -> raw
    label).
  * Pixels: HU = uint16 - 32768, clipped to [-1024, 3071] (some slices carry a wrong offset).
  * The record's window is the lesions' own `DICOM_windows` (of the largest lesion when they differ).
  * `Train_Val_Test` 1/2/3 is the official patient-disjoint split; `Patient_index` is the patient.
Options: csv (DL_info.csv), image_dir (Images_png), lesion_types {code: raw label}, splits {code: name}.
"""

from __future__ import annotations

from dataclasses import dataclass

import csv
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.csv_boxes import pixel_box
from medlvr.corpus.adapters.images import read_pil
from medlvr.corpus.paths import open_confined, require_file
from medlvr.corpus.normalize import HU_CLIP
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI, object_id

REQUIRED = ("File_name", "Patient_index", "Bounding_boxes", "Coarse_lesion_type", "DICOM_windows", "Train_Val_Test")
DEFAULT_TYPES = {1: "bone lesion", 2: "abdomen lesion", 3: "mediastinum lesion", 4: "liver lesion",
                 5: "lung lesion", 6: "kidney lesion", 7: "soft tissue lesion", 8: "pelvis lesion",
                 -1: "unlabelled lesion"}
DEFAULT_SPLITS = {"1": "train", "2": "val", "3": "test"}


def floats(field: str | None) -> list[float]:
    """A DeepLesion multi-value field ("226.169, 90.0204, ...") as floats; ValueError when not numeric."""
    if field is None or not str(field).strip():
        return []
    return [float(t) for t in str(field).split(",")]


def image_path(file_name: str, image_dir: str = "Images_png") -> str:
    """`000001_01_01_109.png` -> `Images_png/000001_01_01/109.png` (split on the last `_`)."""
    name = file_name.strip()
    if "/" in name or "\\" in name or name.startswith(".."):
        # a DeepLesion File_name is a bare file name; anything else would point outside Images_png
        raise RecordError(f"File_name {name!r} is not a plain file name (path separator or '..')",
                          stage="discover")
    if "_" not in name:
        raise RecordError(f"File_name {name!r} has no '_' separating the series folder from the slice",
                          stage="discover")
    folder, slice_file = name.rsplit("_", 1)
    return f"{image_dir}/{folder}/{slice_file}"


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    o = spec.options
    table = require_file(root, o.get("csv", "DL_info.csv"))
    try:
        with open_confined(root, table, "r", "discover", newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RecordError(f"cannot read {table.name}: {e}", stage="discover")
    if not rows or (missing := [c for c in REQUIRED if c not in rows[0]]):
        raise RecordError(f"{table.name}: missing columns {missing if rows else list(REQUIRED)}", stage="discover")
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["File_name"] or "").strip(), []).append(dict(r, _row=i + 2))
    splits = {str(k): v for k, v in (o.get("splits") or DEFAULT_SPLITS).items()}
    for name, lesions in groups.items():
        try:
            rel = image_path(name, o.get("image_dir", "Images_png"))
            require_file(root, rel)
        except RecordError as e:
            yield Reject(spec.id, name or f"row {lesions[0]['_row']}", "discover", e.reason, name)
            continue
        patients = {(les.get("Patient_index") or "").strip() for les in lesions}
        if len(patients) != 1 or "" in patients:
            # the values themselves identify patients: the reason names the rows, never the values
            rows_of = ", ".join(str(les["_row"]) for les in lesions)
            what = "an empty Patient_index" if "" in patients else f"{len(patients)} different Patient_index values"
            yield Reject(spec.id, rel, "discover", f"rows of one key slice have {what} (CSV rows {rows_of})", name)
            continue
        split_codes = {(les.get("Train_Val_Test") or "").strip() for les in lesions}
        split = splits.get(split_codes.pop()) if len(split_codes) == 1 else None
        yield RecordRef(key=name, paths={"image": rel}, annotations=lesions, patient=patients.pop(), split=split)


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    types = {int(k): v for k, v in (o.get("lesion_types") or DEFAULT_TYPES).items()}
    rel = ref.paths["image"]
    arr = read_pil(require_file(root, rel), root=root)
    if arr.dtype != np.uint16 or arr.ndim != 2:
        raise RecordError(f"{Path(rel).name}: expected a single-channel 16-bit PNG, got {arr.dtype} {arr.shape}")
    hu = np.clip(arr.astype(np.float32) - 32768.0, *HU_CLIP)
    rois: list[SourceROI] = []
    rejects: list[tuple[str, str]] = []
    seen: set[tuple] = set()
    windows: list[tuple[float, tuple[float, float]]] = []
    size = None
    spacing = None
    table_rel = o.get("csv", "DL_info.csv")
    objects: list[str] = []
    for les in ref.annotations:
        row = les["_row"]  # the file's line number; the object is the table's data row (line - 1)
        oid = object_id(table_rel, row=row - 1)
        objects.append(oid)
        try:
            code = int(float(les["Coarse_lesion_type"]))
        except (TypeError, ValueError):
            code = None
        label = types.get(code) if code is not None else None
        if label is None:
            rejects.append((str(les.get("Coarse_lesion_type")), f"row {row}: unknown Coarse_lesion_type", oid))
            continue
        try:
            box = floats(les["Bounding_boxes"])
            if len(box) != 4:
                raise ValueError(f"{len(box)} values")
        except ValueError as e:
            rejects.append((label, f"row {row}: Bounding_boxes is not four numbers ({e})", oid))
            continue
        try:
            pixel_box(box, "xyxy")  # DL_info boxes are pixel-edge xyxy already: only the degenerate check
        except RecordError as e:
            rejects.append((label, f"row {row}: {e.reason}", oid))
            continue
        if tuple(box) + (label,) in seen:
            rejects.append((label, f"row {row}: duplicate lesion row", oid))
            continue
        seen.add(tuple(box) + (label,))
        attrs: dict[str, Any] = {"lesion_type_code": code}
        for col, key in (("Lesion_diameters_Pixel_", "recist_diameters_px"),
                         ("Measurement_coordinates", "recist_coordinates"), ("Normalized_lesion_location",
                                                                             "normalized_location")):
            try:
                if les.get(col):
                    attrs[key] = floats(les[col])
            except ValueError:
                pass  # descriptive extras only; a malformed one is simply not kept
        if (les.get("Possibly_noisy") or "").strip() in ("0", "1"):
            attrs["possibly_noisy"] = les["Possibly_noisy"].strip() == "1"
        rois.append(SourceROI(label, tuple(box), "box", row - 1, None, None, attrs, source_object=oid))
        try:
            win = floats(les.get("DICOM_windows"))
            if len(win) == 2 and win[1] > win[0]:
                windows.append(((box[2] - box[0]) * (box[3] - box[1]), (win[0], win[1])))
            size = size or floats(les.get("Image_size"))
            sp = floats(les.get("Spacing_mm_px_"))
            spacing = spacing or ((sp[1], sp[0]) if len(sp) >= 2 else None)  # (row, col) from "sx, sy, sz"
        except ValueError:
            pass
    if size and len(size) == 2 and sorted(int(v) for v in size) != sorted(hu.shape):
        raise RecordError(f"{Path(rel).name}: image is {hu.shape[1]}x{hu.shape[0]} but DL_info says "
                          f"Image_size {size[0]:g}x{size[1]:g}")
    window = max(windows)[1] if windows else None
    return [SourceImage(source_path=rel, pixels=hu, intensity="ct_hu", rois=rois, window=window,
                        window_name="dicom_windows" if window else None, spacing_mm=spacing,
                        attributes={"key_slice_file": ref.key}, roi_rejects=rejects, objects=objects)]


@dataclass(frozen=True)
class DeepLesionOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    csv: Any = None
    image_dir: Any = None
    lesion_types: Any = None
    splits: Any = None


register("png16_csv", discover, load, "DeepLesion: uint16 PNG key slices (HU+32768) + DL_info.csv RECIST boxes",
         options=DeepLesionOptions)
