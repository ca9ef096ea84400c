"""A7 csv_boxes: VinDr-CXR (3 readers, No finding), RSNA (xywh, Target=0), NIH (header quirk, split lists),
OCT5k (CSV or YOLO, sniffed), reader fusion, and bad input becoming rejects."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.csv_boxes import fuse_readers, sniff_format
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError, Reject
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

CFG = IngestConfig(patient_salt="t")


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    """A minimal uncompressed 8/16-bit single-frame DICOM for the fixtures of this test family."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientID = "DX", "ANON"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def spec_with(ds_id: str, **options):
    s = load_catalog()[ds_id]
    return dataclasses.replace(s, options={**s.options, **options})


def run(spec, root: Path):
    """discover + load directly: ({key: SourceImage}, [rejects])."""
    ad = ADAPTERS[spec.adapter]
    images, rejects = {}, []
    for item in ad.discover(spec, root):
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            images[item.key] = ad.load(spec, root, item)[0]
    return images, rejects


def boxes(img) -> list:
    return sorted([r.label, [round(v, 6) for v in r.box]] for r in img.rois)


@pytest.mark.parametrize("dataset_id", ["vindr_cxr", "rsna_pneumonia", "nih_bbox", "oct5k"])
def test_sample_exact_boxes_through_ingest(tmp_path, dataset_id):
    ing = ingest_sample(tmp_path, dataset_id)
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) > 0


# ------------------------------------------------------------------ fusion
def test_fusion_keeps_findings_of_two_readers_with_mean_box():
    marks = [("R1", [10, 10, 30, 30]), ("R2", [12, 10, 32, 34]), ("R3", [70, 70, 80, 80])]
    kept, dropped = fuse_readers(marks, 2, "mean")
    assert kept == [([11.0, 10.0, 31.0, 32.0], 2)]
    assert dropped == [1]
    kept, _ = fuse_readers(marks, 2, "union")
    assert kept == [([10, 10, 32, 34], 2)]


def test_fusion_never_counts_one_reader_twice():
    kept, dropped = fuse_readers([("R1", [0, 0, 10, 10]), ("R1", [1, 1, 10, 10])], 2)
    assert kept == [] and dropped == [1, 1]


def test_fusion_nan_box_cannot_join_a_cluster():
    kept, dropped = fuse_readers([("R1", [0, 0, 10, 10]), ("R2", [float("nan")] * 4), ("R3", [0, 0, 10, 10])], 2)
    assert kept == [([0.0, 0.0, 10.0, 10.0], 2)] and dropped == [1]


# ------------------------------------------------------------------ VinDr
def _vindr(root: Path, rows: list[str], images=("a1", "b2")) -> None:
    for k, i in enumerate(images):  # distinct pixels: identical images would be deduplicated by the runner
        arr = np.random.default_rng(k).integers(0, 255, (64, 64), dtype=np.uint8)
        write_dicom(root / "train" / f"{i}.dicom", arr, "MONOCHROME1")
    (root / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                    + "\n".join(rows) + "\n")


def test_vindr_three_readers_and_no_finding(tmp_path):
    _vindr(tmp_path, [
        "a1,Nodule/Mass,8,R8,10,10,20,20", "a1,Nodule/Mass,8,R9,12,12,22,22", "a1,Nodule/Mass,8,R10,11,11,21,21",
        "a1,Pleural effusion,10,R9,30,30,60,60",  # one reader only: dropped and reported
        "b2,No finding,14,R8,,,,", "b2,No finding,14,R9,,,,", "b2,No finding,14,R10,,,,"])
    imgs, rej = run(load_catalog()["vindr_cxr"], tmp_path)
    assert not rej
    assert boxes(imgs["a1"]) == [["Nodule/Mass", [11.0, 11.0, 21.0, 21.0]]]
    assert imgs["a1"].rois[0].attributes["readers"] == 3
    # every row is an object: the two marks fused into row 1's box, and the single-reader finding, are rejects
    fused = "fused with row=1 of the same table by the reader-agreement rule (3 readers)"
    assert imgs["a1"].roi_rejects == [("Nodule/Mass", fused, "train.csv#row=2"), ("Nodule/Mass", fused, "train.csv#row=3"),
                                      ("Pleural effusion", "marked by 1 reader(s), fewer than 2", "train.csv#row=4")]
    assert imgs["a1"].rois[0].source_object == "train.csv#row=1"
    assert imgs["b2"].rois == [] and imgs["b2"].attributes["negative"] is True
    assert imgs["a1"].attributes.get("inverted") is True  # MONOCHROME1 went through read_2d


def test_vindr_bad_rows_reject_not_abort(tmp_path):
    _vindr(tmp_path, ["a1,Nodule/Mass,8,R8,abc,10,20,20", "a1,Nodule/Mass,8,R9,abc,10,20,20",
                      "b2,Aortic enlargement,0,R8,10,10,90,90", "b2,Aortic enlargement,0,R9,10,10,90,90",
                      "zz,Nodule/Mass,8,R8,1,1,5,5",            # image file missing
                      "../../etc/passwd,Nodule/Mass,8,R8,1,1,5,5"])  # escapes the root
    s = ingest_dataset(load_catalog()["vindr_cxr"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    # a1's findings are all rejected: an annotated image left without a box is rejected, never written empty
    assert (s.records_in, s.records_out, s.records_rejected) == (4, 1, 3)
    reasons = " | ".join(f"{k}" for k in s.reasons)
    assert "file referenced but missing" in reasons and "escapes the dataset root" in reasons
    # NaN coordinates (a1) cannot match another reader's box: both marks are dropped as single-reader;
    # the box past the 64x64 image (b2) is clipped by the runner
    # (b2's second reader's mark is fused into the first: a reject row of its own)
    assert s.rois_out == 1 and s.rois_rejected == 3


# ------------------------------------------------------------------ RSNA
def test_rsna_xywh_and_target0(tmp_path):
    for k, p in enumerate(("p1", "p2")):
        write_dicom(tmp_path / "stage_2_train_images" / f"{p}.dcm", np.full((50, 40), k, np.uint8))
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\np1,,,,,0\np2,5,6,10,12,1\np2,20.5,1,4,4,1\n")
    imgs, rej = run(load_catalog()["rsna_pneumonia"], tmp_path)
    assert not rej
    assert imgs["p1"].rois == [] and imgs["p1"].attributes["negative"]
    assert boxes(imgs["p2"]) == [["Lung Opacity", [5.0, 6.0, 15.0, 18.0]], ["Lung Opacity", [20.5, 1.0, 24.5, 5.0]]]
    assert imgs["p2"].pixels.shape == (50, 40)


def test_corrupt_dicom_is_a_record_reject(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_images" / "p1.dcm").write_bytes(b"DICM" * 10)
    (tmp_path / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\np1,1,1,4,4,1\n")
    s = ingest_dataset(load_catalog()["rsna_pneumonia"], tmp_path, tmp_path / "out", CFG)
    assert (s.records_in, s.records_rejected) == (1, 1)
    assert any("DICOM" in k for k in s.reasons)


# ------------------------------------------------------------------ NIH
def _nih(root: Path) -> None:
    (root / "images").mkdir()
    ramp = np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8)  # not constant: constant images are rejected
    Image.fromarray(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 255)]), "RGBA").save(
        root / "images" / "00000005_000.png")
    Image.fromarray(ramp + 9).save(root / "images" / "00000006_001.png")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             "00000005_000.png,Mass,1.5,2.25,10,10\n"
                                             "00000006_001.png,Effusion,3,4,5,6\n")
    (root / "train_val_list.txt").write_text("00000005_000.png\n")
    (root / "test_list.txt").write_text("00000006_001.png\n")


def test_nih_header_quirk_split_and_rgba(tmp_path):
    _nih(tmp_path)
    imgs, _ = run(load_catalog()["nih_bbox"], tmp_path)
    assert boxes(imgs["00000005_000.png"]) == [["Mass", [1.5, 2.25, 11.5, 12.25]]]
    assert imgs["00000005_000.png"].pixels.ndim == 2  # RGBA converted to L
    refs = [r for r in ADAPTERS["csv_boxes"].discover(load_catalog()["nih_bbox"], tmp_path)]
    assert {r.key: r.split for r in refs} == {"00000005_000.png": "train", "00000006_001.png": "test"}
    s = ingest_dataset(load_catalog()["nih_bbox"], tmp_path, tmp_path / "out", CFG)
    assert s.records_out == 2


def test_nih_header_without_column_map_fails_loudly(tmp_path):
    _nih(tmp_path)
    spec = spec_with("nih_bbox", columns=None)
    with pytest.raises(RecordError, match="unnamed columns"):
        list(ADAPTERS["csv_boxes"].discover(spec, tmp_path))


def test_missing_table_is_a_dataset_reject(tmp_path):
    (tmp_path / "images").mkdir()
    s = ingest_dataset(load_catalog()["nih_bbox"], tmp_path, tmp_path / "out", CFG)
    assert (s.records_in, s.records_rejected, s.records_out) == (1, 1, 0)


def test_symlink_out_of_root_is_rejected(tmp_path):
    _nih(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    (tmp_path / "images" / "00000006_001.png").unlink()
    os.symlink(outside, tmp_path / "images" / "00000006_001.png")
    _, rej = run(load_catalog()["nih_bbox"], tmp_path)
    assert len(rej) == 1 and "outside the dataset root" in rej[0].reason


# ------------------------------------------------------------------ OCT5k: CSV or YOLO, sniffed
def _oct_images(root: Path) -> None:
    (root / "Images").mkdir(parents=True)
    for k, n in enumerate(("CNV-11-1.jpeg", "DME-22-3.jpeg")):
        Image.fromarray(np.full((50, 100), 40 * k, np.uint8)).save(root / "Images" / n)


def test_oct5k_yolo_mode_is_sniffed(tmp_path):
    _oct_images(tmp_path)
    (tmp_path / "Detection").mkdir()
    (tmp_path / "Detection" / "CNV-11-1.txt").write_text("1 0.5 0.5 0.2 0.4\n8 0.1 0.1 0.1 0.1\n")
    (tmp_path / "Detection" / "DME-22-3.txt").write_text("12 0.5 0.5 0.2 0.2\n")  # class out of range
    assert sniff_format(tmp_path / "Detection" / "CNV-11-1.txt") == "yolo"
    imgs, rej = run(load_catalog()["oct5k"], tmp_path)
    assert not rej
    assert boxes(imgs["CNV-11-1"]) == [["Fluid", [40.0, 15.0, 60.0, 35.0]], ["Soft drusen PED", [5.0, 2.5, 15.0, 7.5]]]
    assert imgs["DME-22-3"].rois == [] and "not in options.yolo_classes" in imgs["DME-22-3"].roi_rejects[0][1]


def test_oct5k_bad_yolo_file_rejected_and_duplicates(tmp_path):
    _oct_images(tmp_path)
    (tmp_path / "Detection" / "sub").mkdir(parents=True)
    (tmp_path / "Detection" / "CNV-11-1.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "Detection" / "DME-22-3.txt").write_text("1 0.5 0.5\n")
    spec = spec_with("oct5k", annotations="Detection/**/*.txt")
    (tmp_path / "Detection" / "sub" / "CNV-11-1.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    imgs, rej = run(spec, tmp_path)
    assert list(imgs) == ["CNV-11-1"]
    reasons = sorted(r.reason for r in rej)
    assert any("duplicate image id" in r for r in reasons) and any("not `class cx cy w h`" in r for r in reasons)


def test_oct5k_csv_mode_and_patient(tmp_path):
    _oct_images(tmp_path)
    (tmp_path / "Detection").mkdir()
    (tmp_path / "Detection" / "all_bounding_boxes.csv").write_text(
        "image,class,xmin,ymin,xmax,ymax\nDME-22-3.jpeg,Fluid,1,2,3,4\n")
    (tmp_path / "Detection" / "all_classes.csv").write_text("class\nFluid\n")  # shipped alongside; not a box table
    assert sniff_format(tmp_path / "Detection" / "all_bounding_boxes.csv") == "csv"
    imgs, _ = run(load_catalog()["oct5k"], tmp_path)
    assert boxes(imgs["DME-22-3.jpeg"]) == [["Fluid", [1.0, 2.0, 3.0, 4.0]]]
    from medlvr.corpus.catalog import patient_of
    assert patient_of(load_catalog()["oct5k"], "Images/CNV-11-1.jpeg", None, "k") == "11"


def test_oct5k_release_layout_folders_and_class_spelling(tmp_path):
    """As public loaders read the release: one all_bounding_boxes.csv whose `image` is a path under an image folder
    (Images/Images_Manual, Detection/Photo), classes spelled without spaces; the patient is the Kermany id or the
    patient folder ("AMD (7)")."""
    from medlvr.corpus.catalog import patient_of

    names = {"Images/Images_Manual": "DRUSEN/DRUSEN-9884539-8.png",
             "Detection/Photo": "AMD Part1/AMD (7).E2E/2-25-2017/Image.png"}
    for k, (folder, name) in enumerate(names.items()):
        (tmp_path / folder / name).parent.mkdir(parents=True)
        Image.fromarray(np.full((50, 100), 40 * k + 10, np.uint8)).save(tmp_path / folder / name)
    (tmp_path / "Detection" / "all_bounding_boxes.csv").write_text(
        "image,xmin,ymin,xmax,ymax,class\n"
        "DRUSEN/DRUSEN-9884539-8.png,1,2,30,40,Softdrusen\n"
        "AMD Part1/AMD (7).E2E/2-25-2017/Image.png,5,6,20,30,PRlayerdisruption\n")
    spec = load_catalog()["oct5k"]
    imgs, rej = run(spec, tmp_path)
    assert not rej
    assert boxes(imgs["DRUSEN/DRUSEN-9884539-8.png"]) == [["Softdrusen", [1.0, 2.0, 30.0, 40.0]]]
    assert imgs["AMD Part1/AMD (7).E2E/2-25-2017/Image.png"].source_path == \
        "Detection/Photo/AMD Part1/AMD (7).E2E/2-25-2017/Image.png"
    assert spec.concept("Softdrusen") == spec.concept("Soft drusen") and spec.concept("PRlayerdisruption")
    assert patient_of(spec, "Images/Images_Manual/DRUSEN/DRUSEN-9884539-8.png", None, "k") == "9884539"
    assert patient_of(spec, "Detection/Photo/AMD Part1/AMD (7).E2E/2-25-2017/Image.png", None, "k") == "AMD (7)"
