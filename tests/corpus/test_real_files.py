"""Real public annotation files of the catalog's datasets through the project's adapters and ingest runner.

Excerpts whose licence allows copying are vendored under tests/fixtures/real/<dataset>/, laid out as the dataset
ships (tests/fixtures/real/SOURCES.md names repository, commit, path and licence of each file). Where a release
may not be copied, the test reads a local copy named by an environment variable MEDLVR_REAL_<DATASET> and is
skipped without it (README, "Tests").

Truths come from an independent parse in this file (csv / xml / json / numpy), never from the project's helpers.
For every dataset:
  * every label of the real files is mapped by the catalog or listed in its `ignored_labels` (the vocabulary is
    complete, so an unknown label is always a finding);
  * every box equals the independent parse (as the stored original box);
  * no object is lost silently: ROIs written + ROI rejects == the objects counted here, file by file. Each
    independently parsed object (`Obj`) carries its file and its identity there (`ident`: row, object index,
    finding, mask, component), so a per-ROI `source_object` column can be asserted against the same list.
Where a release's images may not be copied (or are too large), the annotation files are real and the test writes
placeholder pixels of the documented size at the documented paths; that is said per dataset.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
CATALOG_YAML = Path(__file__).resolve().parents[2] / "corpus" / "catalog"


@dataclass(frozen=True)
class Obj:
    """One source annotation object, parsed independently: its file, its identity there, label and box."""

    file: str  # the record's source path relative to the dataset root, as the images table names it
    ident: str  # row / object index / label value in that file
    label: str
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in original pixels (None: no box to compare)
    suffix: str | None = None  # the image within the record (a slice), when the record has several


def catalog_vocabulary(dataset: str) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, ignored_labels) read straight from the catalog YAML (not through the project's loader)."""
    raw = yaml.safe_load((CATALOG_YAML / f"{dataset}.yaml").read_text())
    return ({str(k): v for k, v in raw["labels"].items()},
            {str(k): v for k, v in (raw.get("ignored_labels") or {}).items()})


def assert_vocabulary_complete(dataset: str, labels: Counter) -> None:
    mapped, ignored = catalog_vocabulary(dataset)
    unknown = {lab: n for lab, n in labels.items() if lab not in mapped and lab not in ignored}
    assert not unknown, f"{dataset}: labels of the real files neither mapped nor ignored: {unknown}"


def ingest(dataset: str, root: Path, out: Path):
    spec = load_catalog()[dataset]
    summary = ingest_dataset(spec, root, out, IngestConfig(patient_salt="real-files"))
    tables = {n: pq.read_table(out / dataset / f"{n}.parquet").to_pylist() for n in ("images", "rois", "rejects")}
    return summary, tables


def _clipped(box, image) -> tuple[float, ...]:
    """A box reaching past the image is stored clipped to it (and flagged `clipped`)."""
    w, h = image["orig_width"], image["orig_height"]
    return (min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h))


def assert_objects_accounted(dataset: str, objs: list[Obj], summary, tables, exact: float = 1e-6) -> None:
    """Every independently parsed object is an ROI with its exact box, or an ROI reject; the totals reconcile
    per file; no label is 'not in the catalog label map'."""
    images = {im["image_id"]: im for im in tables["images"]}
    rois_by_place: dict[tuple[str, str | None], list[dict]] = {}
    for r in tables["rois"]:
        im = images[r["image_id"]]
        rois_by_place.setdefault((im["source_path"], im["suffix"]), []).append(r)
    roi_rejects = Counter(r["source_path"] for r in tables["rejects"] if r["level"] == "roi")
    assert not [r for r in tables["rejects"] if "not in the catalog label map" in r["reason"]]
    per_file = Counter(o.file for o in objs)
    written = Counter(im["source_path"] for r in tables["rois"] for im in [images[r["image_id"]]])
    for f, n in per_file.items():
        assert written[f] + roi_rejects[f] == n, (f"{dataset} {f}: {n} objects in the file, {written[f]} ROIs "
                                                   f"written + {roi_rejects[f]} ROI rejects")
    assert summary.rois_out + summary.rois_rejected == len(objs) == sum(per_file.values())
    # one-to-one: each written ROI is the exact box of one object of its file (and slice); objects without an
    # ROI are as many as the file's ROI rejects
    used: set[int] = set()
    matched = Counter()
    for o in objs:
        if o.box is None:
            continue
        cands = rois_by_place.get((o.file, o.suffix), []) if o.suffix is not None else \
            [r for (f, _), rs in rois_by_place.items() if f == o.file for r in rs]
        hit = next((r for r in cands if id(r) not in used and r["label"] == o.label and
                    all(abs(a - b) <= exact for a, b in zip(r["box_orig"], _clipped(o.box, images[r["image_id"]])))),
                   None)
        if hit is not None:
            used.add(id(hit))
            matched[o.file] += 1
    for f, n in per_file.items():
        assert matched[f] == written[f], f"{dataset} {f}: {written[f] - matched[f]} ROIs match no object's box"


# --------------------------------------------------------------------------------------------- fastMRI+
# Real: Annotations/{knee,brain}.csv and *_file_list.csv (excerpt: every row of 10 knee and 16 brain volumes chosen
# so that every label of the release occurs, plus 2 reviewed volumes without boxes each). The fastMRI volumes are
# under NYU's data-sharing agreement: placeholder HDF5 volumes of the real matrix (320 x 320) are written here.

FASTMRI_ROWS = ("file", "slice", "study_level", "x", "y", "width", "height", "label")


def fastmri_rows(ann: Path) -> list[dict[str, str]]:
    rows = []
    for table in ("knee.csv", "brain.csv"):
        with open(ann / table, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def _fastmri_folder(stem: str) -> str:
    """Where the placeholder volume of `stem` is written (the folders of fastMRI's own archives)."""
    return "brain_multicoil_val" if stem.startswith("file_brain") else "knee_multicoil_val"


def fastmri_objects(rows: list[dict[str, str]]) -> list[Obj]:
    """One object per box row (study_level=No); study-level rows carry no box."""
    out = []
    for i, r in enumerate(rows):
        if r["study_level"].strip() == "Yes":
            continue
        x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
        out.append(Obj(f"{_fastmri_folder(r['file'].strip())}/{r['file'].strip()}.h5", f"row {i}", r["label"].strip(),
                       (x, y, x + w, y + h),
                       f"z{int(r['slice']):04d}"))
    return out


def _write_fastmri_volumes(root: Path, rows: list[dict[str, str]], file_lists: list[Path]) -> None:
    import h5py

    stems = {r["file"].strip() for r in rows}
    for fl in file_lists:
        stems |= {line.strip() for line in fl.read_text().splitlines() if line.strip()}
    depth = Counter()
    for r in rows:
        if r["slice"].strip():
            depth[r["file"].strip()] = max(depth[r["file"].strip()], int(r["slice"]) + 1)
    rng = np.random.default_rng(0)
    for stem in sorted(stems):
        folder = _fastmri_folder(stem)
        (root / folder).mkdir(parents=True, exist_ok=True)
        nz = max(depth[stem], 4)
        vol = rng.random((nz, 320, 320), dtype=np.float32) * 1e-4
        with h5py.File(root / folder / f"{stem}.h5", "w") as f:
            f.create_dataset("reconstruction_rss", data=vol)


@pytest.fixture(scope="module")
def fastmri_ingested(tmp_path_factory):
    import shutil

    tmp = tmp_path_factory.mktemp("fastmri_real")
    root = tmp / "fastmri_plus"
    shutil.copytree(REAL / "fastmri_plus", root)
    rows = fastmri_rows(root / "Annotations")
    _write_fastmri_volumes(root, rows, sorted((root / "Annotations").glob("*_file_list.csv")))
    summary, tables = ingest("fastmri_plus", root, tmp / "out")
    return rows, summary, tables


def test_fastmri_plus_real_tables_every_label_is_mapped_or_ignored():
    rows = fastmri_rows(REAL / "fastmri_plus" / "Annotations")
    assert_vocabulary_complete("fastmri_plus", Counter(r["label"].strip() for r in rows))
    # the excerpt holds every label of the release (chosen so), so this is the release's vocabulary too
    assert len({r["label"].strip() for r in rows}) == 22 + 30  # knee + brain labels of the 2021 release


def test_fastmri_plus_real_tables_every_box_is_exact_or_rejected_with_a_reason(fastmri_ingested):
    rows, summary, tables = fastmri_ingested
    objs = fastmri_objects(rows)
    assert_objects_accounted("fastmri_plus", objs, summary, tables)
    _, ignored = catalog_vocabulary("fastmri_plus")
    reasons = [r["reason"] for r in tables["rejects"] if r["level"] == "roi"]
    for o in objs:
        if o.label in ignored:
            expected = f"label {o.label!r} is ignored by the catalog: {ignored[o.label]}"  # after "<label>: "
            assert any(expected in r for r in reasons), expected
    # mapped labels: each box row is an ROI with exactly that box on its slice (the table has no duplicates)
    mapped = [o for o in objs if o.label not in ignored]
    assert summary.rois_out == len(mapped)


@pytest.mark.skipif(not os.environ.get("MEDLVR_REAL_FASTMRI_PLUS"),
                    reason="MEDLVR_REAL_FASTMRI_PLUS (a folder with the complete Annotations/ tables) not set")
def test_fastmri_plus_complete_release_tables_vocabulary():
    """The complete published tables (not only the excerpt): every label mapped or ignored."""
    rows = fastmri_rows(Path(os.environ["MEDLVR_REAL_FASTMRI_PLUS"]) / "Annotations")
    assert len(rows) > 20000
    assert_vocabulary_complete("fastmri_plus", Counter(r["label"].strip() for r in rows))


# --------------------------------------------------------------------------------------------- BCCD
# Real (MIT): 4 of the 364 images with their VOC XML, as the repository ships them (BCCD/Annotations, JPEGImages,
# ImageSets/Main), among them the two XMLs whose one RBC box has xmin == xmax (degenerate, a reject).

def voc_objects(root: Path, image_dir: str, xml_glob: str) -> list[Obj]:
    import xml.etree.ElementTree as ET

    out = []
    for xml in sorted(root.glob(xml_glob)):
        ann = ET.parse(xml).getroot()
        name = ann.findtext("filename").strip()
        for i, o in enumerate(ann.findall("object")):
            b = [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            # VOC: 1-based inclusive pixel indices -> pixel edges [xmin - 1, ymin - 1, xmax, ymax]
            out.append(Obj(f"{image_dir}/{name}", f"object {i}", o.findtext("name").strip(),
                           (b[0] - 1, b[1] - 1, b[2], b[3])))
    return out


def _bccd_check(root: Path, out: Path) -> None:
    objs = voc_objects(root, "BCCD/JPEGImages", "BCCD/Annotations/*.xml")
    assert_vocabulary_complete("bccd", Counter(o.label for o in objs))
    summary, tables = ingest("bccd", root, out)
    assert_objects_accounted("bccd", objs, summary, tables)
    degenerate = [o for o in objs if o.box[2] - o.box[0] <= 1 or o.box[3] - o.box[1] <= 1]
    assert summary.rois_rejected == len(degenerate)
    assert summary.rois_out == len(objs) - len(degenerate)


def test_bccd_real_voc_files_every_box_exact():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _bccd_check(REAL / "bccd", Path(tmp))


@pytest.mark.skipif(not os.environ.get("MEDLVR_REAL_BCCD"), reason="MEDLVR_REAL_BCCD (a full BCCD_Dataset checkout) "
                    "not set")
def test_bccd_complete_release(tmp_path):
    _bccd_check(Path(os.environ["MEDLVR_REAL_BCCD"]), tmp_path)


def write_placeholder_png(path: Path, width: int, height: int, seed: int, mode: str = "L") -> None:
    """Distinct pixels per file (identical placeholders would be deduplicated)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    gray = ((xx // 8 + 3 * (yy // 8) + 17 * seed) % 251).astype(np.uint8)  # compresses well, differs per seed
    Image.fromarray(gray if mode == "L" else np.stack([gray] * 3, axis=-1), mode).save(path)


# --------------------------------------------------------------------------------------------- ChestX-Det
# Real (Apache-2.0): ChestX_Det_train.json / ChestX_Det_test.json cropped to 5 records each (every one of the 13
# categories, one normal image per file), records verbatim. Images (NIH ChestX-ray14, 1024 x 1024 PNG, downloaded
# separately) are placeholders of that size.

def chestx_det_objects(root: Path) -> list[Obj]:
    import json

    out = []
    for split in ("train", "test"):
        for rec in json.loads((root / f"ChestX_Det_{split}.json").read_text()):
            for i, (label, poly) in enumerate(zip(rec["syms"], rec["polygons"])):
                pts = np.asarray(poly, dtype=float)
                # the polygon's pixels, boundary included: vertex extremes, maxima as pixel edges
                out.append(Obj(f"{split}_data/{rec['file_name']}", f"record {rec['file_name']} finding {i}", label,
                               (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1)))
    return out


def test_chestx_det_real_json_every_box_exact(tmp_path):
    import json
    import shutil

    root = tmp_path / "chestx_det"
    shutil.copytree(REAL / "chestx_det", root)
    for seed, split in enumerate(("train", "test")):
        for i, rec in enumerate(json.loads((root / f"ChestX_Det_{split}.json").read_text())):
            write_placeholder_png(root / f"{split}_data" / rec["file_name"], 1024, 1024, seed * 100 + i)
    objs = chestx_det_objects(root)
    assert_vocabulary_complete("chestx_det", Counter(o.label for o in objs))
    summary, tables = ingest("chestx_det", root, tmp_path / "out")
    assert_objects_accounted("chestx_det", objs, summary, tables)
    assert summary.records_out == 10 and summary.records_rejected == 0


@pytest.mark.skipif(not os.environ.get("MEDLVR_REAL_CHESTX_DET"),
                    reason="MEDLVR_REAL_CHESTX_DET (a folder with the complete ChestX_Det_*.json) not set")
def test_chestx_det_complete_release_vocabulary():
    objs = chestx_det_objects(Path(os.environ["MEDLVR_REAL_CHESTX_DET"]))
    assert len(objs) > 9000
    assert_vocabulary_complete("chestx_det", Counter(o.label for o in objs))


# --------------------------------------------------------------------------------------------- NIH ChestX-ray14
# Real (NIH Clinical Center, no restrictions on use): BBox_List_2017.csv, the header as released
# (`Image Index,Finding Label,Bbox [x,y,w,h],,,`) and 16 of its 984 rows (two per label, in release order). The
# 1024 x 1024 PNGs are placeholders; train_val_list.txt / test_list.txt are written here (placeholders naming the
# excerpt's images, all as test).

def nih_objects(root: Path) -> list[Obj]:
    with open(root / "BBox_List_2017.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [Obj(f"images/{r[0]}", f"row {i}", r[1], (float(r[2]), float(r[3]), float(r[2]) + float(r[4]),
                                                        float(r[3]) + float(r[5])))
            for i, r in enumerate(rows) if r]


def test_nih_bbox_real_table_every_box_exact(tmp_path):
    import shutil

    root = tmp_path / "nih_bbox"
    shutil.copytree(REAL / "nih_bbox", root)
    objs = nih_objects(root)
    names = sorted({Path(o.file).name for o in objs})
    for i, name in enumerate(names):
        write_placeholder_png(root / "images" / name, 1024, 1024, i)
    (root / "train_val_list.txt").write_text("")
    (root / "test_list.txt").write_text("\n".join(names) + "\n")
    assert_vocabulary_complete("nih_bbox", Counter(o.label for o in objs))
    summary, tables = ingest("nih_bbox", root, tmp_path / "out")
    assert_objects_accounted("nih_bbox", objs, summary, tables)
    assert summary.rois_out == len(objs) == 16 and summary.rois_rejected == 0


# --------------------------------------------------------------------------------------------- HC18
# Real (CC BY 4.0): 3 training images with their ellipse-outline annotations (000_HC, 010_HC, 010_2HC: one subject
# imaged twice) and their 3 rows of training_set_pixel_size_and_HC.csv (CRLF line ends, as released).

def mask_box(path: Path) -> tuple[float, float, float, float]:
    """Pixel-edge box of the nonzero pixels of a mask image (any channel)."""
    from PIL import Image

    a = np.asarray(Image.open(path))
    on = a.any(axis=-1) if a.ndim == 3 else a > 0
    ys, xs = np.nonzero(on)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def test_hc18_real_outlines_every_box_exact(tmp_path):
    root = REAL / "hc18"
    with open(root / "training_set_pixel_size_and_HC.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # one object per annotated image: the head outline (filled, its box is the outline's box)
    objs = [Obj(f"training_set/{r['filename']}", r["filename"], "fetal head",
                mask_box(root / "training_set" / r["filename"].replace(".png", "_Annotation.png"))) for r in rows]
    assert_vocabulary_complete("hc18", Counter(o.label for o in objs))
    summary, tables = ingest("hc18", root, tmp_path / "out")
    assert_objects_accounted("hc18", objs, summary, tables)
    assert summary.rois_out == 3
    spacing = {im["source_path"]: im["spacing_mm"] for im in tables["images"]}
    for r in rows:  # the table's pixel size is the image's spacing
        assert spacing[f"training_set/{r['filename']}"][-1] == pytest.approx(float(r["pixel size(mm)"]))


# --------------------------------------------------------------------------------------------- volumes
# The slice policy decides which slices are images; per written slice the objects are the 8-connected components
# of each label rule's values (parsed here with nibabel + scipy.ndimage, rules read from the catalog YAML). Boxes
# are compared up to the in-plane display convention (flips / transpose), which is the accounting branch's to fix
# (issue 23 §1, "Orientation"), so these tests hold before and after it.

def rule_values(dataset: str) -> dict[str, list[int]]:
    raw = yaml.safe_load((CATALOG_YAML / f"{dataset}.yaml").read_text())
    return {r["label"]: [int(v) for v in r["values"]] for r in raw["options"]["label_rules"]}


def slice_component_boxes(plane: np.ndarray, values: list[int]) -> list[tuple[float, float, float, float]]:
    from scipy import ndimage

    lab, n = ndimage.label(np.isin(plane, values), structure=np.ones((3, 3), dtype=bool))
    return [(float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop))
            for s in ndimage.find_objects(lab) if s is not None]


def _display_variants(box, h: int, w: int) -> list[tuple[float, ...]]:
    """A (Y, X)-plane box under the 8 in-plane flips / transposes (the display convention is not asserted here)."""
    x0, y0, x1, y1 = box
    out = []
    for tx0, ty0, tx1, ty1, hh, ww in ((x0, y0, x1, y1, h, w), (y0, x0, y1, x1, w, h)):
        for fx in (False, True):
            for fy in (False, True):
                a0, a1 = (ww - tx1, ww - tx0) if fx else (tx0, tx1)
                b0, b1 = (hh - ty1, hh - ty0) if fy else (ty0, ty1)
                out.append((a0, b0, a1, b1))
    return out


def volume_slice_accounting(dataset: str, seg_zyx: np.ndarray, tables, source_path: str):
    """(objects on the written slices, ROIs written, ROI rejects, ROIs whose box is no component's box)."""
    rules = rule_values(dataset)
    images = {im["image_id"]: im for im in tables["images"] if im["source_path"] == source_path}
    objects = written = unmatched = 0
    for im in images.values():
        z = im["slice_index"]
        plane = seg_zyx[z]
        rois = [r for r in tables["rois"] if r["image_id"] == im["image_id"]]
        written += len(rois)
        for label, values in rules.items():
            boxes = slice_component_boxes(plane, values)
            objects += len(boxes)
            h, w = plane.shape
            variants = [set(_display_variants(b, h, w)) for b in boxes]
            for r in rois:
                if r["label"] == label and not any(tuple(r["box_orig"]) in v for v in variants):
                    unmatched += 1
    rejects = sum(1 for r in tables["rejects"] if r["level"] == "roi" and r["source_path"] == source_path)
    return objects, written, rejects, unmatched


# KiTS23 (CC BY-NC-SA 4.0): dataset/case_00061/segmentation.nii.gz as kits23 ships it in git (the smallest of its
# 489 segmentations, 29 x 512 x 512, labels 0-2). imaging.nii.gz is downloaded separately by the release's script:
# a placeholder CT of the same grid and affine is written here.

@pytest.fixture(scope="module")
def kits_ingested(tmp_path_factory):
    import shutil

    import nibabel as nib

    tmp = tmp_path_factory.mktemp("kits_real")
    root = tmp / "kits23"
    shutil.copytree(REAL / "kits23", root)
    seg_img = nib.load(root / "dataset/case_00061/segmentation.nii.gz")
    seg = np.asanyarray(seg_img.dataobj)
    ct = np.full(seg.shape, -1000, dtype=np.int16) + (seg > 0).astype(np.int16) * 1040
    nib.save(nib.Nifti1Image(ct, seg_img.affine), root / "dataset/case_00061/imaging.nii.gz")
    summary, tables = ingest("kits23", root, tmp / "out")
    return seg, summary, tables


def test_kits23_real_segmentation_every_value_is_a_rule_and_every_box_a_component(kits_ingested):
    seg, summary, tables = kits_ingested
    named = {v for values in rule_values("kits23").values() for v in values}
    assert set(np.unique(seg).tolist()) - {0} <= named
    assert_vocabulary_complete("kits23", Counter(rule_values("kits23")))
    # KiTS arrays are (Z, Y, X) (catalog axis_order ZYX)
    objects, written, rejects, unmatched = volume_slice_accounting(
        "kits23", seg, tables, "dataset/case_00061/imaging.nii.gz")
    assert written > 0 and unmatched == 0


def test_kits23_real_segmentation_no_component_lost_on_written_slices(kits_ingested):
    seg, summary, tables = kits_ingested
    objects, written, rejects, _ = volume_slice_accounting("kits23", seg, tables, "dataset/case_00061/imaging.nii.gz")
    # (this case has no component under the 2-D speck size on a written slice; issue 23 §1's silent drops of such
    # components are the accounting branch's)
    assert written + rejects == objects and summary.rois_out == written


# --------------------------------------------------------------------------------------------- DSB2018
# Real (CC0): 2 stage1_train folders as released (images/<id>.png RGBA and one masks/*.png per nucleus, 44 nuclei)
# from the commit that added the original stage1_train to a fixes repository. The release's stage1_train_labels.csv
# is "redundant with the mask image files" (its own description); no public copy of it could be fetched, so the
# test writes it from the released masks with Kaggle's encoding (1-based starts, column-major), independently of
# the project's decoder.

def kaggle_rle(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends))


def test_dsb2018_real_masks_every_nucleus_exact(tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "dsb2018"
    shutil.copytree(REAL / "dsb2018", root)
    objs, rows = [], ["ImageId,EncodedPixels"]
    for folder in sorted((root / "stage1_train").iterdir()):
        for i, m in enumerate(sorted((folder / "masks").glob("*.png"))):
            mask = np.asarray(Image.open(m)) > 0
            rows.append(f"{folder.name},{kaggle_rle(mask)}")
            ys, xs = np.nonzero(mask)
            objs.append(Obj(f"stage1_train/{folder.name}/images/{folder.name}.png", f"masks/{m.name}", "nucleus",
                            (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
    (root / "stage1_train_labels.csv").write_text("\n".join(rows) + "\n")
    assert_vocabulary_complete("dsb2018", Counter(o.label for o in objs))
    summary, tables = ingest("dsb2018", root, tmp_path / "out")
    assert_objects_accounted("dsb2018", objs, summary, tables)
    assert summary.rois_out == len(objs) == 44


# --------------------------------------------------------------------------------------------- MSD Task05 Prostate
# Real (CC BY-SA 4.0): Task05_Prostate/dataset.json as released (its `labels` name the label map's values; the
# adapter reads them from there). The volumes (4-D T2 + ADC, ~30 MB each) are not vendored: this checks the
# vocabulary of the release.

def test_msd_prostate_real_dataset_json_vocabulary():
    import json

    d = json.loads((REAL / "msd_prostate" / "Task05_Prostate" / "dataset.json").read_text())
    names = Counter(v for k, v in d["labels"].items() if k != "0")
    assert set(names) == {"PZ", "TZ"}
    assert_vocabulary_complete("msd_prostate", names)
    raw = yaml.safe_load((CATALOG_YAML / "msd_prostate.yaml").read_text())
    assert set(raw["options"]["json_labels"]["organs"]) <= set(names)
    # the release names its files ./imagesTr/*.nii.gz, which the catalog layout takes
    assert all(t["image"].startswith("./imagesTr/prostate_") and t["image"].endswith(".nii.gz") for t in d["training"])


# --------------------------------------------------------------------------------------------- MoNuSeg
# Real (CC BY-NC-SA 4.0): MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.xml, the Aperio ImageScope XML as the test set
# ships it (next to its .tif), cropped to whole Regions: the first 6 (integer vertices) and the last 4 (the
# fractional vertices of a second annotation pass) of its 575. The 1000 x 1000 H&E tile is a placeholder.

def monuseg_objects(xml_path: Path, image_rel: str) -> list[Obj]:
    """One object per Region, in file order; its box is the pixels its outline passes through: floor of the
    vertex extremes, exclusive end (an independent reading of 'boundary pixels included')."""
    import math
    import xml.etree.ElementTree as ET

    out = []
    for k, region in enumerate(ET.parse(xml_path).getroot().iter("Region"), start=1):
        xs = [float(v.get("X")) for v in region.iter("Vertex")]
        ys = [float(v.get("Y")) for v in region.iter("Vertex")]
        out.append(Obj(image_rel, f"region={k}", "nucleus",
                       (math.floor(min(xs)), math.floor(min(ys)), math.floor(max(xs)) + 1,
                        math.floor(max(ys)) + 1)))
    return out


def test_monuseg_real_aperio_xml_every_region_exact(tmp_path):
    import shutil

    root = tmp_path / "monuseg"
    shutil.copytree(REAL / "monuseg", root)
    image_rel = "MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif"
    write_placeholder_png(root / image_rel, 1000, 1000, 0, mode="RGB")
    xml_rel = "MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.xml"
    objs = monuseg_objects(root / xml_rel, image_rel)
    assert len(objs) == 10
    assert_vocabulary_complete("monuseg", Counter(o.label for o in objs))
    summary, tables = ingest("monuseg", root, tmp_path / "out")
    assert_objects_accounted("monuseg", objs, summary, tables)
    assert summary.rois_out == 10 and summary.rois_rejected == 0
    # each ROI names its Region (k-th in file order) of the XML, and all ten are named once
    named = sorted(r["source_object"] for r in tables["rois"])
    assert named == sorted(f"{xml_rel}#{o.ident}" for o in objs)
    by_object = {r["source_object"]: tuple(r["box_orig"]) for r in tables["rois"]}
    assert all(by_object[f"{xml_rel}#{o.ident}"] == tuple(float(v) for v in o.box) for o in objs)
    assert {im["official_split"] for im in tables["images"]} == {"test"}


# --------------------------------------------------------------------------------------------- BUSI
# Real (CC0 on the Kaggle mirror; the article CC BY 4.0): Dataset_BUSI_with_GT as released, three records: benign (195)
# with three lesion masks (`_mask.png`, `_mask_1.png`, `_mask_2.png`), malignant (136) with its image, normal (1)
# with its empty mask. The benign and normal ultrasound images are placeholders of the masks' size (RGB, as the
# release's images are).

def busi_objects(root: Path) -> list[Obj]:
    """Per mask file (the release draws one lesion per `*_mask*.png`): its 8-connected components."""
    from PIL import Image

    out = []
    for folder in ("benign", "malignant", "normal"):
        for m in sorted((root / "Dataset_BUSI_with_GT" / folder).glob("*_mask*.png")):
            a = np.asarray(Image.open(m))
            on = a.any(axis=-1) if a.ndim == 3 else a > 0
            for k, box in enumerate(slice_component_boxes(on.astype(np.uint8), [1])):
                out.append(Obj(f"Dataset_BUSI_with_GT/{folder}/{m.name.split('_mask')[0]}.png", f"{m.name} {k}",
                               f"{folder} lesion", box))
    return out


def test_busi_real_masks_every_lesion_exact(tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "busi"
    shutil.copytree(REAL / "busi", root)
    for i, stem in enumerate(("benign/benign (195)", "normal/normal (1)")):
        w, h = Image.open(root / "Dataset_BUSI_with_GT" / f"{stem}_mask.png").size
        write_placeholder_png(root / "Dataset_BUSI_with_GT" / f"{stem}.png", w, h, i, mode="RGB")
    objs = busi_objects(root)
    # benign (195): three lesion masks (two of them touch: 19 shared pixels); malignant (136): one; normal (1): none
    assert Counter(o.file for o in objs) == {"Dataset_BUSI_with_GT/benign/benign (195).png": 3,
                                             "Dataset_BUSI_with_GT/malignant/malignant (136).png": 1}
    assert_vocabulary_complete("busi", Counter(o.label for o in objs))
    summary, tables = ingest("busi", root, tmp_path / "out")
    assert_objects_accounted("busi", objs, summary, tables)
    assert summary.rois_out == 4 and summary.rois_rejected == 0
    # the normal image is a valid negative (an image without ROIs), not a reject
    assert summary.records_out == 3
    assert "Dataset_BUSI_with_GT/normal/normal (1).png" in {im["source_path"] for im in tables["images"]}
    # each ROI is named after its own mask file: the two touching lesions are two objects, not one fused blob
    assert sorted(r["source_object"].split("#")[0] for r in tables["rois"]) == sorted(
        f"Dataset_BUSI_with_GT/{d}" for d in ("benign/benign (195)_mask.png", "benign/benign (195)_mask_1.png",
                                              "benign/benign (195)_mask_2.png", "malignant/malignant (136)_mask.png"))


# --------------------------------------------------------------------------------------------- HAM10000
# Real (CC BY-NC-SA 4.0 per the catalog entry; attribution Tschandl et al. 2018): HAM10000_metadata.csv, header and
# 23 of its 10,015 rows (every image of 15 lesions: one lesion with several images and one with a single image per
# diagnosis, and one with unknown sex and age). The lesion masks (HAM10000_segmentations_lesion_tschandl) were found
# in no public copy: images (600 x 450, as released) and masks are placeholders, so this checks the real table's
# join (attributes, lesion grouping, the unmapped `dataset` column) and the accounting of one lesion per image.

def test_ham10000_real_metadata_join_and_lesion_groups(tmp_path):
    import json
    import shutil

    from PIL import Image

    root = tmp_path / "ham10000"
    shutil.copytree(REAL / "ham10000", root)
    with open(root / "HAM10000_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    objs = []
    for i, r in enumerate(rows):
        part = 1 if r["image_id"] < "ISIC_0029306" else 2  # the release's split of the images into two folders
        rel = f"HAM10000_images_part_{part}/{r['image_id']}.jpg"
        write_placeholder_png(root / rel, 600, 450, i, mode="RGB")
        mask = np.zeros((450, 600), np.uint8)
        x0, y0 = 40 + 7 * i, 30 + 5 * i
        mask[y0:y0 + 120, x0:x0 + 200] = 255
        (root / "HAM10000_segmentations_lesion_tschandl").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "HAM10000_segmentations_lesion_tschandl" / f"{r['image_id']}_segmentation.png")
        objs.append(Obj(rel, f"{r['image_id']}_segmentation.png", "skin lesion",
                        (float(x0), float(y0), float(x0 + 200), float(y0 + 120))))
    assert_vocabulary_complete("ham10000", Counter(o.label for o in objs))
    summary, tables = ingest("ham10000", root, tmp_path / "out")
    assert_objects_accounted("ham10000", objs, summary, tables)
    assert summary.records_out == len(rows) == 23
    by_image = {Path(im["source_path"]).stem: im for im in tables["images"]}
    for r in rows:  # every image carries its own row's columns, as the table spells them
        attrs = json.loads(by_image[r["image_id"]]["attributes"])
        for col in ("dx", "dx_type", "sex", "localization"):
            assert attrs[col] == r[col], (r["image_id"], col)
        assert "dataset" not in attrs
        # a number where the table has one; the unknown age (empty field) is absent, not 0
        assert attrs.get("age") == (float(r["age"]) if r["age"] else None)
    # lesion_id is the split unit: images of one lesion share a patient key, different lesions do not
    groups: dict[str, set] = {}
    for r in rows:
        groups.setdefault(r["lesion_id"], set()).add(by_image[r["image_id"]]["patient_key"])
    assert all(len(keys) == 1 for keys in groups.values())
    assert len({next(iter(k)) for k in groups.values()}) == len(groups) == 15


# --------------------------------------------------------------------------------------------- not copyable
# Releases whose terms forbid redistribution: the test reads the user's own copy from MEDLVR_REAL_<DATASET> and
# is skipped without it. It crops the table to its first rows (whole images) and writes placeholder pixels where
# the images are absent, so a copy of the annotation table alone is enough.

def real_copy(dataset: str) -> Path:
    var = f"MEDLVR_REAL_{dataset.upper()}"
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} (a local copy of the real release) not set")
    return Path(value)


def first_rows(path: Path, key: str, n_keys: int, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """The header and every row of the first `n_keys` distinct `key` values, in file order."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        keys: list[str] = []
        rows = []
        for r in reader:
            if r[key] not in keys:
                if len(keys) == n_keys:
                    break
                keys.append(r[key])
            rows.append(r)
        return list(reader.fieldnames or []), rows


def write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """The cropped table as the release lays it out (its header, whole rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)


def test_rsna_pneumonia_real_table_every_box_exact(tmp_path):
    """stage_2_train_labels.csv (patientId,x,y,width,height,Target; Target 0 rows have no box): the first 40
    patients; placeholder 1024 x 1024 DICOMs where the user's copy has no image."""
    from medlvr.corpus.sample_data.dicom_sets import write_dicom

    src = real_copy("rsna_pneumonia")
    header, rows = first_rows(src / "stage_2_train_labels.csv", "patientId", 40)
    assert header == ["patientId", "x", "y", "width", "height", "Target"]
    assert {r["Target"] for r in rows} <= {"0", "1"}
    root = tmp_path / "rsna_pneumonia"
    (root / "stage_2_train_images").mkdir(parents=True)
    write_rows(root / "stage_2_train_labels.csv", header, rows)
    for i, pid in enumerate(dict.fromkeys(r["patientId"] for r in rows)):
        real = src / "stage_2_train_images" / f"{pid}.dcm"
        if real.is_file():
            (root / "stage_2_train_images" / f"{pid}.dcm").write_bytes(real.read_bytes())
        else:
            yy, xx = np.mgrid[0:1024, 0:1024]
            write_dicom(root / "stage_2_train_images" / f"{pid}.dcm",
                        ((xx // 8 + 3 * (yy // 8) + 17 * i) % 251).astype(np.uint8), modality="CR")
    objs = [Obj(f"stage_2_train_images/{r['patientId']}.dcm", f"row {i}", "Lung Opacity",
                (float(r["x"]), float(r["y"]), float(r["x"]) + float(r["width"]), float(r["y"]) + float(r["height"])))
            for i, r in enumerate(rows) if r["Target"] == "1"]
    summary, tables = ingest("rsna_pneumonia", root, tmp_path / "out")
    assert_objects_accounted("rsna_pneumonia", objs, summary, tables)
    negatives = {r["patientId"] for r in rows if r["Target"] == "0"}
    flagged = {Path(im["source_path"]).stem for im in tables["images"] if '"negative": true' in im["attributes"]}
    assert flagged == negatives and summary.records_out == 40


# --------------------------------------------------------------------------------------------- ISIC 2018
# Real (CC BY-NC 4.0): ISIC2018_Task1_Training_GroundTruth/ISIC_0000050_segmentation.png (8-bit, 1504 x 1129, values
# 0/255). The dermoscopic JPEG is a placeholder of that size; the Task 2 attribute masks are absent ("missing:
# absent" in the catalog: no attribute).

def test_isic2018_real_lesion_mask_box_exact(tmp_path):
    import shutil

    root = tmp_path / "isic2018"
    shutil.copytree(REAL / "isic2018", root)
    mask_path = root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000050_segmentation.png"
    write_placeholder_png(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000050.png", 1504, 1129, 0, "RGB")
    from PIL import Image

    Image.open(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000050.png").save(
        root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000050.jpg", quality=95)
    (root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000050.png").unlink()
    objs = [Obj("ISIC2018_Task1-2_Training_Input/ISIC_0000050.jpg", "lesion mask", "skin lesion", mask_box(mask_path))]
    assert_vocabulary_complete("isic2018", Counter(o.label for o in objs))
    summary, tables = ingest("isic2018", root, tmp_path / "out")
    assert_objects_accounted("isic2018", objs, summary, tables)
    assert summary.rois_out == 1


# --------------------------------------------------------------------------------------------- DeepLesion
# DL_info.csv (NIH Clinical Center terms; the test reads the user's copy, MEDLVR_REAL_DEEPLESION): the first 12
# key slices, placeholder 16-bit PNGs of each row's Image_size where the copy has no Images_png/.

def test_deeplesion_real_table_every_box_exact(tmp_path):
    src = real_copy("deeplesion")
    header, rows = first_rows(src / "DL_info.csv", "File_name", 12)
    raw = yaml.safe_load((CATALOG_YAML / "deeplesion.yaml").read_text())
    types = {int(k): v for k, v in raw["options"]["lesion_types"].items()}
    assert {int(r["Coarse_lesion_type"]) for r in rows} <= set(types)
    root = tmp_path / "deeplesion"
    root.mkdir()
    with open(root / "DL_info.csv", "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    from PIL import Image

    objs = []
    for i, r in enumerate(rows):
        series, slice_png = r["File_name"].rsplit("_", 1)
        rel = f"Images_png/{series}/{slice_png}"
        target = root / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            real = src / rel
            if real.is_file():
                target.write_bytes(real.read_bytes())
            else:
                w_, h_ = (int(float(v)) for v in r["Image_size"].split(","))
                yy, xx = np.mgrid[0:h_, 0:w_]
                Image.fromarray((32768 - 1000 + (xx + 3 * yy + 7 * i) % 1500).astype(np.uint16)).save(target)
        box = tuple(float(v) for v in r["Bounding_boxes"].split(","))
        objs.append(Obj(rel, f"row {i}", types[int(r["Coarse_lesion_type"])], box))
    assert_vocabulary_complete("deeplesion", Counter(o.label for o in objs))
    summary, tables = ingest("deeplesion", root, tmp_path / "out")
    assert_objects_accounted("deeplesion", objs, summary, tables)
    assert summary.records_out == 12


# --------------------------------------------------------------------------------------------- SIIM-ACR
# train-rle.csv (Kaggle / SIIM terms; the user's copy, MEDLVR_REAL_SIIM_ACR): header `ImageId, EncodedPixels`
# (with the space), stage-1 relative RLE over the column-major 1024 x 1024 mask, `-1` = no pneumothorax, several
# rows of one image OR'ed. The first 20 images; placeholder DICOMs where the copy has no dicom-images-train/.

def siim_mask(rles: list[str], size: int = 1024) -> np.ndarray:
    """SIIM's own rle2mask (the independent decoder of the adapter tests), rows of one image OR'ed."""
    from tests.corpus.test_adapter_dicom import _decode_relative

    return np.logical_or.reduce([_decode_relative(rle, size, size) for rle in rles])


def test_siim_acr_real_rle_every_component_exact(tmp_path):
    from medlvr.corpus.sample_data.dicom_sets import write_dicom

    src = real_copy("siim_acr")
    with open(src / "train-rle.csv", newline="") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = next(reader)
        rows = []
        for r in reader:
            if r[0] not in {x[0] for x in rows} and len({x[0] for x in rows}) == 20:
                break
            rows.append(r)
    assert [h.strip() for h in header] == ["ImageId", "EncodedPixels"]
    root = tmp_path / "siim_acr"
    root.mkdir()
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "".join(f"{a}, {b}\n" for a, b in rows))
    existing = {p.stem: p for p in src.glob("dicom-images-train/*/*/*.dcm")}
    objs = []
    for i, sop in enumerate(dict.fromkeys(r[0] for r in rows)):
        rel = f"dicom-images-train/1.2.826.0.1.{i}/1.2.826.0.2.{i}/{sop}.dcm"
        (root / rel).parent.mkdir(parents=True)
        if sop in existing:
            (root / rel).write_bytes(existing[sop].read_bytes())
        else:
            yy, xx = np.mgrid[0:1024, 0:1024]
            write_dicom(root / rel, ((xx // 8 + 3 * (yy // 8) + 17 * i) % 251).astype(np.uint8), modality="CR")
        rles = [b for a, b in rows if a == sop and b.strip() != "-1"]
        if rles:
            objs += [Obj(rel, f"component {k}", "pneumothorax", b)
                     for k, b in enumerate(slice_component_boxes(siim_mask(rles).astype(np.uint8), [1]))]
    summary, tables = ingest("siim_acr", root, tmp_path / "out")
    assert_objects_accounted("siim_acr", objs, summary, tables)
    assert summary.records_out == len({r[0] for r in rows})


def test_vindr_cxr_real_table_reader_fusion_accounted(tmp_path):
    """train.csv (image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max; three readers per image, `No finding`
    rows without a box): the first 30 images. Placeholder DICOMs just larger than the image's boxes (the Kaggle
    DICOMs are 2-3k pixels a side). Truths: every finding row is an object; each ROI is named by one row, and its
    box is the mean of that row's box and the boxes of the rows rejected as fused with it (all parsed here)."""
    import math
    import re

    from medlvr.corpus.sample_data.dicom_sets import write_dicom

    src = real_copy("vindr_cxr")
    header, first = first_rows(src / "train.csv", "image_id", 30)
    keep = {r["image_id"] for r in first}
    with open(src / "train.csv", newline="") as f:  # the table is not grouped by image: every row of the 30
        rows = [r for r in csv.DictReader(f) if r["image_id"] in keep]
    assert header[:8] == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    root = tmp_path / "vindr_cxr"
    (root / "train").mkdir(parents=True)
    write_rows(root / "train.csv", header, rows)
    box_cols = ("x_min", "y_min", "x_max", "y_max")
    for i, image_id in enumerate(dict.fromkeys(r["image_id"] for r in rows)):
        boxes = [[float(r[c]) for c in box_cols] for r in rows if r["image_id"] == image_id and r["x_max"]]
        wd = max([64] + [math.ceil(b[2]) + 16 for b in boxes])
        ht = max([64] + [math.ceil(b[3]) + 16 for b in boxes])
        yy, xx = np.mgrid[0:ht, 0:wd]
        write_dicom(root / "train" / f"{image_id}.dicom", ((xx // 8 + 3 * (yy // 8) + 17 * i) % 251).astype(np.uint8))
    findings = {n: r for n, r in enumerate(rows, start=1) if r["class_name"] != "No finding"}
    assert all(r["x_max"] == "" for r in rows if r["class_name"] == "No finding")
    assert_vocabulary_complete("vindr_cxr", Counter(r["class_name"] for r in findings.values()))
    summary, tables = ingest("vindr_cxr", root, tmp_path / "out")
    # every finding row is accounted for, image by image: ROIs written + ROI rejects == its finding rows
    per_file = Counter(f"train/{r['image_id']}.dicom" for r in findings.values())
    images = {im["image_id"]: im for im in tables["images"]}
    written = Counter(images[r["image_id"]]["source_path"] for r in tables["rois"])
    roi_rejects = [r for r in tables["rejects"] if r["level"] == "roi"]
    rejected = Counter(r["source_path"] for r in roi_rejects)
    assert {f: written[f] + rejected[f] for f in per_file} == dict(per_file)
    assert summary.rois_out + summary.rois_rejected == len(findings)
    # each ROI: its naming row and the rows fused into it, by row number; the box is their mean, 2+ readers
    fused_into: dict[int, list[int]] = {}
    for r in roi_rejects:
        m = re.search(r"fused with row=(\d+)", r["reason"])
        if m:
            fused_into.setdefault(int(m.group(1)), []).append(int(r["source_object"].rsplit("=", 1)[1]))
        else:
            assert re.search(r"marked by 1 reader\(s\), fewer than 2", r["reason"]), r["reason"]
    for roi in tables["rois"]:
        n = int(roi["source_object"].rsplit("=", 1)[1])
        members = [n] + fused_into.get(n, [])
        assert all(findings[k]["class_name"] == roi["label"] for k in members)
        assert len({findings[k]["rad_id"] for k in members}) >= 2
        mean = [sum(float(findings[k][c]) for k in members) / len(members) for c in box_cols]
        assert roi["box_orig"] == pytest.approx(mean, abs=1e-6)
