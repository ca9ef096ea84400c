"""A2 metaimage: own MetaImage parser; RETOUCH OCT volumes and the CAMUS legacy release (docs/datasets.md §2.4, §2.7)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.mhd import check_mhd, read_mhd
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.records import RecordError
from medlvr.corpus.sample_data import volumes as sv
from tests.corpus.helpers import assert_truth_recovered, ingest_sample
from tests.corpus.test_adapter_nifti import assert_direct_truth, ingest, run, spec_with


@pytest.mark.parametrize("ds", ["retouch"])
def test_sample_boxes_recovered_through_ingest(tmp_path, ds):
    ing = ingest_sample(tmp_path, ds)
    assert ing.summary.records_rejected == 0, ing.summary.reasons
    assert assert_truth_recovered(ing) > 0
    rows = ing.table("images").to_pylist()
    vendors = {json.loads(r["attributes"])["vendor"]: r["intensity"] for r in rows}
    assert vendors == {"Cirrus": "uint8", "Spectralis": "window"}  # MET_USHORT is percentile-scaled
    assert {r["official_split"] for r in rows} == {"train"}


def test_retouch_bscan_orientation_and_element_types(tmp_path):
    truth = sv.write_retouch(tmp_path, np.random.default_rng(0))
    hdr = (tmp_path / "RETOUCH-TrainingSet-Spectralis" / "TRAIN025" / "oct.mhd").read_text()
    assert "ElementType = MET_USHORT" in hdr and "DimSize = 48 40 6" in hdr
    images, rejects = run(load_catalog()["retouch"], tmp_path)
    assert not rejects
    assert_direct_truth(images, truth)
    assert {im.pixels.shape for im in images} == {(40, 48)}  # a B-scan is arr[i]: depth x A-scans
    irf = [r for im in images if im.suffix == "z0002" and "Cirrus" in im.source_path for r in im.rois
           if r.label == "intraretinal fluid"]
    assert len(irf) == 2 and irf[0].instance != irf[1].instance
    assert next(im for im in images if "Cirrus" in im.source_path).pixels.dtype == np.uint8
    assert next(im for im in images if "Spectralis" in im.source_path).pixels.dtype == np.uint16


@pytest.mark.parametrize("etype,msb,compressed", [("MET_UCHAR", False, False), ("MET_USHORT", False, False),
                                                  ("MET_USHORT", True, False), ("MET_SHORT", True, True),
                                                  ("MET_FLOAT", False, True)])
def test_parser_roundtrip(tmp_path, etype, msb, compressed):
    rng = np.random.default_rng(1)
    hi = 255 if etype == "MET_UCHAR" else 30000
    arr = rng.integers(0, hi, size=(4, 32, 16)).astype(np.float32)  # (Z, Y, X): DimSize 16 32 4
    sv.write_mhd(tmp_path / "v.mhd", arr, (0.5, 0.25, 2.0), etype, compressed=compressed, msb=msb)
    got, spacing = read_mhd(tmp_path, "v.mhd")
    assert got.shape == (4, 32, 16) and got.dtype.isnative
    np.testing.assert_array_equal(got.astype(np.float32), arr)
    assert spacing == (2.0, 0.25, 0.5)


def test_local_data_and_header_size(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    head = b"NDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    (tmp_path / "a.mha").write_bytes(head + arr.tobytes())
    np.testing.assert_array_equal(read_mhd(tmp_path, "a.mha")[0], arr)
    (tmp_path / "b.raw").write_bytes(b"\xff" * 7 + arr.tobytes())
    (tmp_path / "b.mhd").write_text("NDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\nHeaderSize = 7\n"
                                    "ElementDataFile = b.raw\n")
    np.testing.assert_array_equal(read_mhd(tmp_path, "b.mhd")[0], arr)


@pytest.mark.parametrize("header,match", [
    ("NDims = 3\nDimSize = 16 32 5\nElementType = MET_UCHAR\nElementDataFile = v.raw\n", "needs 2560"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_UCHAR\nElementDataFile = ../v.raw\n", "escapes"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_UCHAR\nElementDataFile = /etc/v.raw\n", "absolute"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_UCHAR\nElementDataFile = gone.raw\n", "missing"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_RGB\nElementDataFile = v.raw\n", "ElementType"),
    ("NDims = 3\nDimSize = 16 32\nElementType = MET_UCHAR\nElementDataFile = v.raw\n", "NDims=3"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_UCHAR\n", "no ElementDataFile"),
    ("NDims = 3\nDimSize = 16 32 4\nElementType = MET_UCHAR\nElementSpacing = 1 0 1\nElementDataFile = v.raw\n",
     "positive"),
    ("\x89PNG garbage\n", "not a MetaImage header"),
])
def test_bad_headers(tmp_path, header, match):
    (tmp_path / "v.raw").write_bytes(bytes(16 * 32 * 4))
    (tmp_path / "v.mhd").write_text(header)
    with pytest.raises(RecordError, match=match):
        check_mhd(tmp_path, "v.mhd")


def test_corrupt_compressed_data(tmp_path):
    (tmp_path / "v.raw").write_bytes(zlib.compress(bytes(100))[:-5] + b"junk")
    (tmp_path / "v.mhd").write_text("NDims = 2\nDimSize = 10 10\nElementType = MET_UCHAR\nCompressedData = True\n"
                                    "ElementDataFile = v.raw\n")
    with pytest.raises(RecordError, match="compressed"):
        read_mhd(tmp_path, "v.mhd")


def test_bad_retouch_records_become_rejects(tmp_path):
    root = tmp_path / "retouch"
    sv.write_retouch(root, np.random.default_rng(0))
    base = root / "RETOUCH-TrainingSet-Topcon"
    vol, lab = sv.retouch_volume(np.random.default_rng(2), "MET_UCHAR")
    sv.write_mhd(base / "TRAIN050" / "oct.mhd", vol, etype="MET_UCHAR", dims=[48, 40, 7])  # DimSize vs bytes
    sv.write_mhd(base / "TRAIN050" / "reference.mhd", lab)
    sv.write_mhd(base / "TRAIN051" / "oct.mhd", vol)  # reference missing
    sv.write_mhd(base / "TRAIN052" / "oct.mhd", vol)
    sv.write_mhd(base / "TRAIN052" / "reference.mhd", lab, data_name="../TRAIN050/reference.raw")  # `..`
    sv.write_mhd(base / "TRAIN053" / "oct.mhd", vol)
    sv.write_mhd(base / "TRAIN053" / "reference.mhd", lab[:, :30])  # label/image shape mismatch
    nan = vol.astype(np.float32)
    nan[1, 1, 1] = np.nan
    sv.write_mhd(base / "TRAIN054" / "oct.mhd", nan, etype="MET_FLOAT")  # NaN: background, counted (issue 14)
    sv.write_mhd(base / "TRAIN054" / "reference.mhd", lab)
    sv.write_mhd(base / "TRAIN055" / "oct.mhd", vol, compressed=True)
    raw = base / "TRAIN055" / "oct.raw"
    raw.write_bytes(raw.read_bytes()[:40])  # truncated zlib stream
    sv.write_mhd(base / "TRAIN055" / "reference.mhd", lab)
    s, rej = ingest(load_catalog()["retouch"], root, tmp_path)
    by = {r["record_key"].split("/")[1]: r["reason"] for r in rej if r["level"] == "record"}
    assert "needs" in by["TRAIN050"] and "missing" in by["TRAIN051"] and "escapes" in by["TRAIN052"]
    assert "label shape" in by["TRAIN053"] and "compressed" in by["TRAIN055"] and "TRAIN054" not in by
    assert s.records_in == 8 and s.records_out == 3 and s.records_rejected == 5
    images = pq.read_table(tmp_path / "out" / "retouch" / "images.parquet", columns=["record_key", "attributes"])
    nan_voxels = {r["record_key"].split("/")[1]: json.loads(r["attributes"]).get("nan_voxels")
                  for r in images.to_pylist()}
    assert nan_voxels["TRAIN054"] == 1 and {k for k, v in nan_voxels.items() if v} == {"TRAIN054"}


def test_camus_legacy_mhd_release(tmp_path):
    truth = sv.write_camus(tmp_path, np.random.default_rng(5), release="2019-mhd")
    spec = load_catalog()["camus"]
    refs = list(ADAPTERS[spec.adapter].discover(spec, tmp_path))
    assert {r.annotations["variant"] for r in refs} == {"2019-mhd"} and len(refs) == 4
    images, rejects = run(spec, tmp_path)
    assert not rejects
    assert_direct_truth(images, truth)
    assert all(i.pixels.shape == (64, 48) for i in images)
    assert {i.source_path for i in images} == {t["source_path"] for t in truth}


def test_display_convention_from_transform_matrix_and_anatomical_orientation(tmp_path):
    """The same anatomy stored LPS (identity), RAS-like (x, y reversed: by TransformMatrix, or by the ITK code
    'LPI'), and with its axes permuted reads back as the same displayed slices: x towards the patient's left, y
    towards posterior (truth: the LPS array itself, the others built from it with numpy)."""
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, (9, 10, 12)).astype(np.int16)  # (Z, Y, X) in the display convention: LPS
    files = {"lps": (vol, "TransformMatrix = 1 0 0 0 1 0 0 0 1"),
             "ras": (vol[:, ::-1, ::-1], "TransformMatrix = -1 0 0 0 -1 0 0 0 1"),
             "code": (vol[:, ::-1, ::-1], "AnatomicalOrientation = LPI"),
             # DimSize axis 0 runs foot to head, axis 2 right to left: numpy (X, Y, Z)
             "perm": (vol.transpose(2, 1, 0), "TransformMatrix = 0 0 1 0 1 0 1 0 0")}
    root = tmp_path / "o"
    for name, (arr, line) in files.items():
        hdr = root / "files" / f"{name}.mhd"
        sv.write_mhd(hdr, arr, etype="MET_SHORT")
        text = hdr.read_text().replace("ElementDataFile", f"{line}\nElementDataFile")
        hdr.write_text(text)
    spec = spec_with("kits23", anchor_glob="files/*.mhd", anchor_regex=None, label=None, label_rules=[],
                     reader="metaimage", axis_order="ZYX", intensity="percentile", slices={"negatives_per_volume": 9})
    images, rejects = run(spec, root)
    assert not rejects
    for name in files:
        got = {i.slice_index: i.pixels for i in images if i.source_path == f"files/{name}.mhd"}
        assert got and all(np.array_equal(p, vol[z]) for z, p in got.items()), name
    # as_stored opts out: the RAS-like file reads as stored
    images, _ = run(spec_with("kits23", anchor_glob="files/ras.mhd", anchor_regex=None, label=None, label_rules=[],
                              reader="metaimage", axis_order="ZYX", intensity="percentile", orientation="as_stored",
                              slices={"negatives_per_volume": 9}), root)
    assert images and all(np.array_equal(i.pixels, vol[i.slice_index][::-1, ::-1]) for i in images)


@pytest.mark.parametrize("line,match", [("TransformMatrix = 1 0 0 0 1 0", "invertible 3x3"),
                                        ("TransformMatrix = 1 0 0 0 x 0 0 0 1", "not numeric"),
                                        ("AnatomicalOrientation = RRI", "three letters")])
def test_bad_orientation_headers(tmp_path, line, match):
    sv.write_mhd(tmp_path / "v.mhd", np.zeros((2, 3, 4), np.uint8))
    hdr = tmp_path / "v.mhd"
    hdr.write_text(hdr.read_text().replace("ElementDataFile", f"{line}\nElementDataFile"))
    with pytest.raises(RecordError, match=match):
        check_mhd(tmp_path, "v.mhd")
