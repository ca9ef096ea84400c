"""Every source annotation object ends as a box or a reject row with a whole reason (issue 23). Each test here
reproduces a loss the old code made silently; truths come from numpy / scipy / csv, not from the code under test."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.masks import LabelRule, mask_objects, min_speck_px
from medlvr.corpus.sample_data import write_samples
from medlvr.corpus.volumes import SliceConfig, volume_images
from tests.corpus.helpers import Ingested, assert_objects_accounted

CFG = IngestConfig(patient_salt="t")
NO_NEG = SliceConfig(negatives_per_volume=0)


def _ingest(tmp_path, root, ds) -> Ingested:
    s = ingest_dataset(load_catalog()[ds], root, tmp_path / "out", CFG)
    return Ingested(s, root, tmp_path / "out", [])


# ------------------------------------------------------------------ the speck threshold
def test_speck_threshold_is_not_truncated():
    # docs/datasets.md §6.1: 0.02 % of 512² = 52.43 px; the old int() made it 52, so 52-px pieces were kept
    assert min_speck_px((512, 512)) == pytest.approx(0.0002 * 512 * 512)
    m = np.zeros((512, 512), bool)
    m[10:14, 10:23] = True  # 52 px
    rois, rejects, objects = mask_objects(m, "lesion", source="m.png")
    assert rois == [] and rejects == [("lesion", "component of 52 px below the minimum size 52.4288 px",
                                       "m.png#label=lesion/component=1")]
    assert objects == ["m.png#label=lesion/component=1"]


# ------------------------------------------------------------------ volumes
def test_structure_below_the_speck_size_on_every_slice_is_a_reject_with_its_size():
    """A 3-D lesion of 40 voxels (>= min_voxels 8) but 20 px a slice on a 512² slice (speck 52.43): it used to
    vanish with no ROI and no reject (KiTS)."""
    lab = np.zeros((6, 512, 512), np.uint8)
    lab[2:4, 100:104, 100:105] = 2  # 20 px on each of two slices
    lab[1:5, 300:320, 300:320] = 2  # a real lesion
    ims = volume_images({"": np.zeros(lab.shape, np.float32)}, lab, [LabelRule("tumor", (2,))],
                        source_path="img.nii.gz", label_source="seg.nii.gz", intensity="ct_hu", cfg=NO_NEG)
    rejects = [r for im in ims for r in im.roi_rejects]
    rois = [r for im in ims for r in im.rois]
    # independent truth: scipy's 26-connected labelling in raster order
    comp, n = ndimage.label(lab == 2, structure=np.ones((3, 3, 3)))
    assert n == 2
    small = next(i for i in (1, 2) if (comp == i).sum() == 40)
    big = 3 - small
    assert {r.source_object for r in rois} == {f"seg.nii.gz#label=tumor/component={big}"}
    assert rejects and all(r[2] == f"seg.nii.gz#label=tumor/component={small}" for r in rejects)
    assert all("component of 20 px below the minimum size 52.4288 px" in r[1] for r in rejects)
    assert ims[0].objects == [f"seg.nii.gz#label=tumor/component={i}" for i in (1, 2)]


def test_3d_specks_and_slice_cap_are_rejects():
    lab = np.zeros((30, 64, 64), np.uint8)
    lab[3, 5:7, 5:7] = 1  # 4 voxels: a 3-D speck (min_voxels 8)
    for k, z in enumerate(range(5, 30, 6)):  # 5 lesions on their own slices
        lab[z, 20:30, 10 * k:10 * k + 8] = 1
    cfg = SliceConfig(negatives_per_volume=0, max_slices_per_volume=3, extra_slices_per_instance=0)
    ims = volume_images({"": np.zeros(lab.shape, np.float32)}, lab, [LabelRule("lesion", (1,))],
                        source_path="v", intensity="ct_hu", cfg=cfg, min_area=1)
    reasons = [r[1] for im in ims for r in im.roi_rejects]
    assert sum("3-D component of 4 voxels below the minimum size 8 voxels" in r for r in reasons) == 1
    assert sum(r.startswith("slice cap:") for r in reasons) == 2
    named = {r.source_object for im in ims for r in im.rois} | {r[2] for im in ims for r in im.roi_rejects}
    assert named == set(ims[0].objects) and len(named) == 6


def test_structure_without_instances_is_one_box_per_slice():
    """MSD prostate PZ (instances: false) split in two pieces on a slice, plus a 39-px island: docs promise ONE
    box per slice; the old code gave one per component."""
    lab = np.zeros((3, 128, 128), np.uint8)
    lab[1, 40:60, 20:50] = 1  # left piece
    lab[1, 40:60, 70:100] = 1  # right piece
    lab[1, 90:93, 60:73] = 1  # 39 px island (speck threshold 16 px here: kept in the union)
    ims = volume_images({"": np.zeros(lab.shape, np.float32)}, lab, [LabelRule("PZ", (1,), instances=False)],
                        source_path="p.nii.gz", intensity="ct_hu", cfg=NO_NEG)
    (im,) = ims
    ys, xs = np.nonzero(lab[1])
    assert [(r.box, r.source_object) for r in im.rois] == [
        ((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), "p.nii.gz#label=PZ")]


# ------------------------------------------------------------------ ingest rules
def test_conflicting_duplicates_get_their_own_reason(tmp_path):
    """The BUSI sample's malignant (2) is pixel-identical to benign (1) with another mask (as two real BUSI
    files are): the second used to be 'duplicate image id' naming the twin, not the label conflict."""
    write_samples(tmp_path / "data", ["busi"], seed=0)
    root = tmp_path / "data" / "busi"
    d = root / "Dataset_BUSI_with_GT"
    a, b = (np.asarray(Image.open(d / p)) for p in ("benign/benign (1).png", "malignant/malignant (2).png"))
    assert np.array_equal(a, b)  # the quirk as written
    ing = _ingest(tmp_path, root, "busi")
    outcome = assert_objects_accounted(ing)
    rej = ing.table("rejects").to_pylist()
    conflict = [r for r in rej if "conflicting duplicate" in r["reason"]]
    assert {"image", "roi"} <= {r["level"] for r in conflict}
    (roi,) = [r for r in conflict if r["level"] == "roi"]
    assert roi["source_object"] == "Dataset_BUSI_with_GT/malignant/malignant (2)_mask.png#label=malignant lesion/component=1"
    assert outcome[roi["source_object"]] == "malignant lesion: on a conflicting duplicate image"
    assert "benign/benign (1).png" in next(r for r in conflict if r["level"] == "image")["reason"]
    kept = {r["source_path"] for r in ing.table("images").drop_columns(["png"]).to_pylist()}
    assert "Dataset_BUSI_with_GT/benign/benign (1).png" in kept  # the first in path order is kept
    assert "Dataset_BUSI_with_GT/malignant/malignant (2).png" not in kept


def test_annotated_image_whose_objects_are_all_rejected_is_not_written(tmp_path):
    """BUSI image whose only mask component is a speck: it used to be written with 0 ROIs, reading as normal."""
    write_samples(tmp_path / "data", ["busi"], seed=0)
    root = tmp_path / "data" / "busi"
    target = "Dataset_BUSI_with_GT/benign/benign (1)"
    m = np.zeros(np.asarray(Image.open(root / f"{target}_mask.png")).shape[:2], np.uint8)
    m[2:5, 2:5] = 255  # 9 px
    Image.fromarray(m).save(root / f"{target}_mask.png")
    ing = _ingest(tmp_path, root, "busi")
    assert_objects_accounted(ing)
    images = ing.table("images").drop_columns(["png"]).to_pylist()
    assert f"{target}.png" not in {im["source_path"] for im in images}
    rej = ing.table("rejects").to_pylist()
    assert any(r["level"] == "roi" and "component of 9 px below the minimum size 16 px" in r["reason"] and
               r["source_object"] == f"{target}_mask.png#label=benign lesion/component=1" for r in rej)
    assert any(r["level"] == "image" and "every annotation object was rejected" in r["reason"] for r in rej)


def test_fastmri_unmapped_label_makes_no_empty_annotated_slice(tmp_path):
    """A slice whose only box has a label the catalog does not map: the old adapter made an `annotated` image of
    it before labels were mapped, and ingest wrote it with 0 ROIs and no negative flag."""
    write_samples(tmp_path / "data", ["fastmri_plus"], seed=0)
    root = tmp_path / "data" / "fastmri_plus"
    table = root / "Annotations" / "knee.csv"
    rows = list(csv.reader(table.open()))
    header = rows[0]
    row = dict(zip(header, rows[1]))
    import h5py

    with h5py.File(next(root.rglob(f"{row['file']}.h5")), "r") as f:
        nz = next(f[k].shape[0] for k in ("reconstruction_rss", "reconstruction_esc") if k in f)
    boxed_slices = {int(r[header.index("slice")]) for r in rows[1:] if r[0] == row["file"] and r[header.index("x")]}
    free = next(z for z in range(nz) if z not in boxed_slices)
    row.update(slice=str(free), label="Another unlisted finding", x="10", y="10", width="8", height="8")
    with table.open("a", newline="") as f:
        csv.writer(f).writerow([row[h] for h in header])
    n_data = len(rows)  # the new row's data-row number (the header is not a data row)
    ing = _ingest(tmp_path, root, "fastmri_plus")
    assert_objects_accounted(ing)
    images = ing.table("images").drop_columns(["png"]).to_pylist()
    rois = ing.table("rois").to_pylist()
    boxed = {r["image_id"] for r in rois}
    for im in images:
        if '"slice_role": "annotated"' in im["attributes"]:
            assert im["image_id"] in boxed, im["suffix"]
    assert not any(im["record_key"] == row["file"] and im["suffix"] == f"z{free:04d}" for im in images)
    rej = ing.table("rejects").to_pylist()
    (r,) = [r for r in rej if r["source_object"] == f"Annotations/knee.csv#row={n_data}"]
    assert "'Another unlisted finding' is not in the catalog label map" in r["reason"]
    assert ing.summary.object_outcomes.get(
        "load: Another unlisted finding: label '…' is not in the catalog label map") == 1


def test_rois_trace_to_their_source_rows(tmp_path):
    """source_object names the annotation row, and instance is the row's index, not the position among kept boxes
    (the first VOC object is rejected, so the old instance of the second was 0)."""
    write_samples(tmp_path / "data", ["bccd"], seed=0)
    root = tmp_path / "data" / "bccd"
    ing = _ingest(tmp_path, root, "bccd")
    assert_objects_accounted(ing)
    import xml.etree.ElementTree as ET

    for r in [r for r in ing.table("rois").to_pylist() if not r["clipped"]][:20]:
        path, where = r["source_object"].split("#")
        k = int(where.split("=")[1])
        obj = ET.parse(root / path).getroot().findall("object")[k - 1]
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        assert obj.find("name").text == r["label"] and r["instance"] == k
        assert r["box_orig"] == pytest.approx([xmin - 1, ymin - 1, xmax, ymax])


def test_lidc_small_outlined_nodule_gets_a_box(tmp_path):
    """An outlined nodule of 3-4 mm on a 512² CT is ~30 px, under the 2-D speck size 52.43: LIDC passed no
    minimum and lost it silently. Readers outline nodules >= 3 mm: every outline is a box."""
    from tests.corpus.test_adapter_lidc import SPEC, refs_and_rejects  # the LIDC sample, made small below

    write_samples(tmp_path / "data", ["lidc_idri"], seed=0)
    root = tmp_path / "data" / "lidc_idri"
    refs, _ = refs_and_rejects(root)
    images = ADAPTERS[SPEC.adapter].load(SPEC, root, refs[0])
    objects = set(images[0].objects)
    named = {r.source_object for im in images for r in im.rois} | {r[2] for im in images for r in im.roi_rejects}
    assert objects <= named
    assert not any("below the minimum size" in r[1] for im in images for r in im.roi_rejects)


def test_a_slice_whose_pieces_are_all_specks_is_no_image_in_any_sequence():
    """Multi-sequence volumes (BraTS, MSD prostate) copy a slice's boxes to every sequence: a key slice whose only
    pieces are specks used to be rejected in its first sequence only and written empty in the others."""
    lab = np.zeros((6, 128, 128), np.uint8)
    lab[2:4, 10:13, 10:13] = 1  # 18 voxels, 9 px a slice (speck size 16 px)
    chans = {"T2": np.ones(lab.shape, np.float32), "ADC": np.ones(lab.shape, np.float32)}
    ims = volume_images(chans, lab, [LabelRule("lesion", (1,))], source_path="v.nii.gz", intensity="ct_hu",
                        cfg=SliceConfig(negatives_per_volume=1, negative_gap=1))
    assert ims and all(im.attributes["slice_role"] == "negative" for im in ims)
    reasons = [r[1] for im in ims for r in im.roi_rejects]
    assert reasons and all("component of 9 px below the minimum size 16 px" in r for r in reasons)
    assert ims[0].objects == ["v.nii.gz#label=lesion/component=1"]
