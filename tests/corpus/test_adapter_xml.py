"""A12 voc_xml (BCCD) and A13 aperio_xml (MoNuSeg): exact boxes, 1-based coordinates, degenerate and
out-of-bounds boxes, missing images, malformed XML, one ROI per Region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from medlvr.corpus.catalog import load_catalog, official_split_of, patient_of
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.sample_data.boxes import _voc_xml, aperio_xml
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample
from tests.corpus.test_adapter_csv_boxes import boxes, run

CFG = IngestConfig(patient_salt="t")


def test_bccd_sample_degenerate_rejected_outside_clipped(tmp_path):
    ing = ingest_sample(tmp_path, "bccd")
    s = ing.summary
    assert_reconciles(s)
    assert assert_truth_recovered(ing) == 3
    assert (s.records_in, s.records_out, s.records_rejected) == (4, 3, 1)  # one XML names a missing image
    rej = ing.table("rejects").to_pylist()
    assert any(r["level"] == "roi" and r["reason"].startswith("Platelets") for r in rej)
    assert any("file referenced but missing" in r["reason"] for r in rej)
    rois = ing.table("rois").to_pylist()
    assert sum(r["clipped"] for r in rois) == 1
    splits = {r["source_path"]: r["official_split"] for r in ing.table("images").drop_columns(["png"]).to_pylist()}
    assert splits["BCCD/JPEGImages/BloodImage_00003.jpg"] == "val"


def _bccd(root: Path, xmls: dict[str, str], images=("BloodImage_00001",)) -> None:
    (root / "BCCD" / "Annotations").mkdir(parents=True)
    (root / "BCCD" / "JPEGImages").mkdir(parents=True)
    (root / "BCCD" / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val", "test"):  # the official lists must exist (a missing one is a dataset error)
        names = "BloodImage_00001\n" if split == "train" else ""
        (root / "BCCD" / "ImageSets" / "Main" / f"{split}.txt").write_text(names)
    for k, stem in enumerate(images):
        ramp = np.arange(40, dtype=np.uint8)[:, None]  # not constant: constant images are rejected
        Image.fromarray(np.full((30, 40, 3), 20 * k, np.uint8) + ramp).save(root / "BCCD" / "JPEGImages" / f"{stem}.jpg")
    for stem, text in xmls.items():
        (root / "BCCD" / "Annotations" / f"{stem}.xml").write_text(text)


def test_voc_one_based_inclusive(tmp_path):
    _bccd(tmp_path, {"BloodImage_00001": _voc_xml("BloodImage_00001.jpg", 40, 30, [("WBC", (1, 1, 10, 5)),
                                                                                 ("RBC", (7, 7, 7, 7))])})
    imgs, rej = run(load_catalog()["bccd"], tmp_path)
    assert not rej
    # pixels 1..10 (1-based) are columns 0..9: pixel-edge box 0..10
    assert boxes(imgs["BloodImage_00001"]) == [["WBC", [0.0, 0.0, 10.0, 5.0]]]
    # xmin == xmax, ymin == ymax (two real BCCD boxes): degenerate in the file, rejected before the 1-based shift
    # (issue 14; it used to become a 1x1 box that passed every check)
    (label, why, oid), = imgs["BloodImage_00001"].roi_rejects
    assert label == "RBC" and why.startswith("degenerate source box [7.0, 7.0, 7.0, 7.0] (voc)")
    assert oid == "BCCD/Annotations/BloodImage_00001.xml#object=2"  # the XML's second <object>


def test_degenerate_source_boxes_rejected_by_every_box_adapter_through_ingest(tmp_path):
    _bccd(tmp_path, {"BloodImage_00001": _voc_xml("BloodImage_00001.jpg", 40, 30, [
        ("WBC", (1, 1, 10, 5)), ("RBC", (7, 7, 7, 7)), ("RBC", (3, 9, 8, 9))])})
    s = ingest_dataset(load_catalog()["bccd"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    assert (s.rois_out, s.rois_rejected) == (1, 2)
    rej = pq.read_table(tmp_path / "out" / "bccd" / "rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rej if r["level"] == "roi") == [
        "RBC: degenerate source box [3.0, 9.0, 8.0, 9.0] (voc): zero or negative width or height",
        "RBC: degenerate source box [7.0, 7.0, 7.0, 7.0] (voc): zero or negative width or height"]


def test_voc_bad_files(tmp_path):
    _bccd(tmp_path, {
        "BloodImage_00001": _voc_xml("BloodImage_00001.jpg", 40, 30, [("RBC", (1, 1, 5, 5))]),
        "BloodImage_00002": "<annotation><filename>BloodImage_00002.jpg</filename",            # malformed
        "BloodImage_00003": _voc_xml("../../../etc/passwd", 40, 30, []),                         # escapes
        "BloodImage_00004": _voc_xml("BloodImage_00001.jpg", 40, 30, []),                        # duplicate
        "BloodImage_00005": _voc_xml("BloodImage_00005.jpg", 80, 60, [("RBC", (1, 1, 5, 5))]),  # wrong size
        "BloodImage_00006": _voc_xml("BloodImage_00006.jpg", 40, 30, [("RBC", (1, 1, "nan", 5))]),
    }, images=("BloodImage_00001", "BloodImage_00005", "BloodImage_00006"))
    s = ingest_dataset(load_catalog()["bccd"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    # 00006's only box is rejected: an annotated image without a box is rejected, not written as a negative
    assert (s.records_in, s.records_out, s.records_rejected) == (6, 1, 5)
    reasons = [r["reason"] for r in pq.read_table(tmp_path / "out" / "bccd" / "rejects.parquet").to_pylist()]
    text = " | ".join(reasons)
    for why in ("cannot parse VOC XML", "escapes the dataset root", "already annotated", "differs from the image",
                "RBC:"):
        assert why in text, (why, text)
    assert s.rois_out == 1 and s.rois_rejected == 1  # the NaN box is rejected by the runner


# ------------------------------------------------------------------ MoNuSeg
def test_monuseg_sample_three_regions(tmp_path):
    ing = ingest_sample(tmp_path, "monuseg")
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) == 6
    images = ing.table("images").drop_columns(["png"]).to_pylist()
    assert sorted(im["official_split"] for im in images) == ["test", "train"]
    rois = ing.table("rois").to_pylist()
    assert sorted(r["instance"] for r in rois) == [1, 1, 2, 2, 3, 3]  # the Region's position in its XML
    assert {r["origin"] for r in rois} == {"polygon"}


def test_monuseg_patient_and_split_rules():
    spec = load_catalog()["monuseg"]
    p = "MoNuSeg 2018 Training Data/Tissue Images/TCGA-18-5592-01Z-00-DX1.tif"
    assert patient_of(spec, p, None, "k") == "TCGA-18-5592"
    assert official_split_of(spec, p, None) == "train"
    assert official_split_of(spec, "MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif", None) == "test"


def _monuseg_test(root: Path, stem: str, xml: str | None, seed: int = 0) -> None:
    d = root / "MoNuSegTestData"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(d / f"{stem}.tif")
    if xml is not None:
        (d / f"{stem}.xml").write_text(xml)


def test_aperio_regions_each_an_instance_and_bad_regions(tmp_path):
    regions = [[[2, 2], [8, 2], [8, 6]], [[20, 20], [30, 22], [25, 31]], [[40, 40], [60, 45], [45, 70]],
               [[5, 40], [9, 40]],                     # 2 vertices: not a polygon
               [[100, 100], [120, 100], [110, 120]]]   # outside the 50x50 image
    _monuseg_test(tmp_path, "TCGA-AA-0001-01Z-00-DX1", aperio_xml(regions))
    imgs, rej = run(load_catalog()["monuseg"], tmp_path)
    img = imgs["TCGA-AA-0001-01Z-00-DX1"]
    # the third polygon reaches past the image: its box is cut at the edge by rasterising on the image grid
    assert boxes(img) == [["nucleus", [2.0, 2.0, 9.0, 7.0]], ["nucleus", [20.0, 20.0, 31.0, 32.0]],
                          ["nucleus", [40.0, 40.0, 50.0, 50.0]]]
    assert [r.instance for r in img.rois] == [1, 2, 3]
    reasons = [r[1] for r in img.roi_rejects]
    assert any("needs 3" in r for r in reasons) and any("outside" in r for r in reasons)


def test_aperio_missing_and_malformed_xml(tmp_path):
    _monuseg_test(tmp_path, "TCGA-AA-0001-01Z-00-DX1", None, 0)                 # no XML at all
    _monuseg_test(tmp_path, "TCGA-AA-0002-01Z-00-DX1", "<Annotations><Regions", 1)
    _monuseg_test(tmp_path, "TCGA-AA-0003-01Z-00-DX1", aperio_xml([[[2, 2], [8, 2], [8, 6]]]), 2)
    (tmp_path / "MoNuSegTestData" / "TCGA-AA-0004-01Z-00-DX1.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "MoNuSegTestData" / "TCGA-AA-0004-01Z-00-DX1.xml").write_text(aperio_xml([[[2, 2], [8, 2], [8, 6]]]))
    s = ingest_dataset(load_catalog()["monuseg"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    assert (s.records_in, s.records_out, s.records_rejected) == (4, 1, 3)
    text = " ".join(s.reasons)
    assert "annotation XML missing" in text and "cannot parse Aperio XML" in text
