"""A degenerate SOURCE box (no extent in the file's own numbers: xmin == xmax, a zero width) is an ROI reject in
every box-reading adapter, decided before a coordinate convention is applied (issue 14: BCCD's xmin == xmax boxes
used to become 1x1 boxes through the 1-based shift and pass every check)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.csv_boxes import pixel_box
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.records import RecordError, RecordRef
from medlvr.corpus.sample_data.dicom_sets import write_deeplesion, write_fastmri_plus
from tests.corpus.test_adapter_csv_boxes import _oct_images, boxes, run, write_dicom
from tests.corpus.test_adapter_json_coco import _chestx, _livecell, _png

DEGENERATE = "degenerate source box"


@pytest.mark.parametrize("conv, vals, want", [
    ("xyxy", (2, 3, 7, 9), (2, 3, 7, 9)),
    ("xywh", (2, 3, 5, 6), (2, 3, 7, 9)),
    ("inclusive", (2, 3, 6, 8), (2, 3, 7, 9)),
    ("voc", (3, 4, 7, 9), (2, 3, 7, 9)),
    ("yolo", (0.45, 0.6, 0.5, 0.6), (2.0, 3.0, 7.0, 9.0)),
])
def test_pixel_box_conventions(conv, vals, want):
    assert pixel_box(vals, conv, (10, 10)) == pytest.approx(want)


@pytest.mark.parametrize("conv, vals", [
    ("voc", (7, 7, 7, 7)), ("voc", (3, 9, 8, 9)), ("inclusive", (5, 5, 5, 9)), ("xyxy", (5, 5, 4, 9)),
    ("xywh", (1, 1, 0, 4)), ("xywh", (1, 1, 4, -2)), ("yolo", (0.5, 0.5, 0.2, 0.0)),
])
def test_zero_extent_in_the_file_is_rejected_before_the_convention(conv, vals):
    with pytest.raises(RecordError, match=DEGENERATE):
        pixel_box(vals, conv, (10, 10))


def test_nan_is_left_to_the_runner_and_unknown_convention_named():
    assert math.isnan(pixel_box((1, float("nan"), 3, 4), "xyxy")[1])
    with pytest.raises(RecordError, match="unknown box convention 'cxcy'"):
        pixel_box((1, 1, 3, 3), "cxcy")


def _reasons(img) -> list[str]:
    return [r[1] for r in img.roi_rejects]


def test_csv_tables_xyxy_xywh_and_reader_fusion(tmp_path):
    write_dicom(tmp_path / "stage_2_train_images" / "p2.dcm", np.full((50, 40), 3, np.uint8))
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np2,5,6,10,12,1\np2,20,1,0,4,1\n")
    imgs, _ = run(load_catalog()["rsna_pneumonia"], tmp_path)
    assert boxes(imgs["p2"]) == [["Lung Opacity", [5.0, 6.0, 15.0, 18.0]]]
    assert len(_reasons(imgs["p2"])) == 1 and DEGENERATE in _reasons(imgs["p2"])[0]
    vindr = tmp_path / "vindr"
    write_dicom(vindr / "train" / "a1.dicom", np.full((64, 64), 9, np.uint8), "MONOCHROME2")
    (vindr / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                     "a1,Nodule/Mass,8,R8,10,10,20,20\na1,Nodule/Mass,8,R9,12,12,22,22\n"
                                     "a1,Nodule/Mass,8,R10,15,15,15,15\n")  # a click, not a box: no third reader
    imgs, _ = run(load_catalog()["vindr_cxr"], vindr)
    (roi,) = imgs["a1"].rois
    assert list(roi.box) == [11.0, 11.0, 21.0, 21.0] and roi.attributes["readers"] == 2
    assert [r for r in _reasons(imgs["a1"]) if DEGENERATE in r]


def test_yolo_zero_size(tmp_path):
    _oct_images(tmp_path)
    (tmp_path / "Detection").mkdir()
    (tmp_path / "Detection" / "CNV-11-1.txt").write_text("1 0.5 0.5 0.2 0.4\n1 0.3 0.3 0.0 0.1\n")
    imgs, _ = run(load_catalog()["oct5k"], tmp_path)
    assert boxes(imgs["CNV-11-1"]) == [["Fluid", [40.0, 15.0, 60.0, 35.0]]]
    assert DEGENERATE in _reasons(imgs["CNV-11-1"])[0]


def test_chestx_given_box_without_extent(tmp_path):
    _png(tmp_path / "train_data" / "1.png", 0)
    _chestx(tmp_path, [{"file_name": "1.png", "syms": ["Nodule", "Mass"], "boxes": [[1, 1, 4, 4], [9, 9, 9, 9]],
                        "polygons": [[], [[9, 9]]]}])
    imgs, _ = run(load_catalog()["chestx_det"], tmp_path)
    img = imgs["train/1.png"]
    assert boxes(img) == [["Nodule", [1.0, 1.0, 5.0, 5.0]]]
    assert img.roi_rejects[0][0] == "Mass" and DEGENERATE in img.roi_rejects[0][1]


def test_coco_bbox_of_zero_width(tmp_path):
    spec = load_catalog()["livecell"]
    spec = dataclasses.replace(spec, options={**spec.options, "files": {"train": "livecell_coco_train.json"}})
    _livecell(tmp_path, [{"id": 3, "image_id": 7, "category_id": 1, "segmentation": [], "bbox": [1, 2, 3, 4]},
                         {"id": 4, "image_id": 7, "category_id": 1, "segmentation": [], "bbox": [5, 5, 0, 4]}])
    imgs, _ = run(spec, tmp_path)
    (img,) = imgs.values()
    assert boxes(img) == [["cell", [1.0, 2.0, 4.0, 6.0]]]
    assert img.roi_rejects[0][1].startswith("annotation 4: " + DEGENERATE)


def test_voc_point_box(tmp_path):
    from tests.corpus.test_adapter_xml import _bccd
    from medlvr.corpus.sample_data.boxes import _voc_xml

    _bccd(tmp_path, {"BloodImage_00001": _voc_xml("BloodImage_00001.jpg", 40, 30, [("RBC", (7, 7, 7, 7))])})
    imgs, _ = run(load_catalog()["bccd"], tmp_path)
    assert imgs["BloodImage_00001"].rois == [] and DEGENERATE in _reasons(imgs["BloodImage_00001"])[0]
    assert "negative" not in imgs["BloodImage_00001"].attributes  # it had a finding; a bad one, not none


def test_fastmri_zero_width(tmp_path):
    spec, ad = load_catalog()["fastmri_plus"], ADAPTERS["hdf5_csv_boxes"]
    write_fastmri_plus(tmp_path, np.random.default_rng(0))
    knee = tmp_path / "Annotations/knee.csv"
    knee.write_text(knee.read_text().rstrip("\n") + "\nfile1000001,2,No,10,10,0,10,Meniscus Tear\n")
    ref = next(r for r in ad.discover(spec, tmp_path) if isinstance(r, RecordRef) and r.key == "file1000001")
    rejects = [why for im in ad.load(spec, tmp_path, ref) for _, why, *_ in im.roi_rejects
               if "catalog label map" not in why and "ignored by the catalog" not in why]  # (the sample's
    # deliberately unmapped and ignored labels are rejects too)
    assert len(rejects) == 1 and DEGENERATE in rejects[0]


def test_deeplesion_point_box(tmp_path):
    import csv

    spec, ad = load_catalog()["deeplesion"], ADAPTERS["png16_csv"]
    write_deeplesion(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "DL_info.csv", newline="") as f:
        table = list(csv.reader(f))
    col = table[0].index("Bounding_boxes")
    extra = list(table[1])
    extra[col] = "30, 30, 30, 40"
    with open(tmp_path / "DL_info.csv", "w", newline="") as f:
        csv.writer(f).writerows(table + [extra])
    rejects = [why for ref in ad.discover(spec, tmp_path) if isinstance(ref, RecordRef)
               for im in ad.load(spec, tmp_path, ref) for _, why, *_ in im.roi_rejects]
    assert len(rejects) == 1 and DEGENERATE in rejects[0]
