"""A5 `png16_csv` (DeepLesion): File_name split, quoted ", " fields, HU offset and clip, grouping, bad input."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.deeplesion import floats, image_path
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError, RecordRef, Reject
from medlvr.corpus.sample_data.dicom_sets import write_deeplesion
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

SPEC = load_catalog()["deeplesion"]
AD = ADAPTERS["png16_csv"]


@pytest.fixture
def sample(tmp_path):
    root = tmp_path / "deeplesion"
    root.mkdir()
    return root, write_deeplesion(root, np.random.default_rng(0))


def split(root):
    out = list(AD.discover(SPEC, root))
    return [r for r in out if isinstance(r, RecordRef)], [r for r in out if isinstance(r, Reject)]


def rows(root):
    with open(root / "DL_info.csv", newline="") as f:
        return list(csv.reader(f))


def write_rows(root, table):
    with open(root / "DL_info.csv", "w", newline="") as f:
        csv.writer(f).writerows(table)


def test_field_parsing():
    assert image_path("000001_01_01_109.png") == "Images_png/000001_01_01/109.png"
    assert floats("226.169, 90.0204, 241.252, 111.977") == [226.169, 90.0204, 241.252, 111.977]
    assert floats("-175, 275") == [-175.0, 275.0]
    for bad in ("nounderscore.png", "../x_1.png", "/abs/x_1.png", "a\\b_1.png"):
        with pytest.raises(RecordError):
            image_path(bad)


def test_csv_has_quoted_multi_value_fields(sample):
    root, _ = sample
    text = (root / "DL_info.csv").read_text()
    assert '"12.5, 14.25, 30.75, 28"' in text and '"-175, 275"' in text
    assert rows(root)[0][0] == "File_name" and len(rows(root)[0]) == 18


def test_discover_load_exact_boxes_grouping_window_split(sample):
    root, truth = sample
    refs, rejects = split(root)
    assert not rejects and len(refs) == 3  # neighbouring slices are shipped but are not records
    by_path = {}
    for ref in refs:
        (im,) = AD.load(SPEC, root, ref)
        by_path[im.source_path] = (ref, im)
    for t in truth:
        ref, im = by_path[t["source_path"]]
        assert [(r.label, list(r.box)) for r in im.rois] == [tuple(b) for b in t["boxes"]]
        assert im.intensity == "ct_hu" and im.spacing_mm == (0.7, 0.7)
    ref, im = by_path["Images_png/000001_01_01/109.png"]
    assert len(im.rois) == 2 and ref.patient == "1" and ref.split == "train"
    assert im.window == (-175.0, 275.0)  # the larger lesion's DICOM_windows
    ref, im = by_path["Images_png/000002_01_01/023.png"]
    assert im.rois[0].label == "unlabelled lesion" and ref.split == "val"
    assert im.pixels.min() == -1024.0  # the wrong-offset corner (HU -32768) is clipped
    raw = np.asarray(Image.open(root / "Images_png/000002_01_01/023.png")).astype(np.float32)
    np.testing.assert_array_equal(im.pixels[10:, 10:], np.clip(raw[10:, 10:] - 32768, -1024, 3071))
    assert by_path["Images_png/000003_02_01/051.png"][0].split == "test"


def test_ingest_sample_exact_boxes(tmp_path):
    ing = ingest_sample(tmp_path, "deeplesion")
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) == 4
    images = ing.table("images").to_pylist()
    assert sorted(im["official_split"] for im in images) == ["test", "train", "val"]
    assert {im["window_name"] for im in images} == {"dicom_windows"}


def test_bad_rows_and_files(sample, tmp_path):
    root, _ = sample
    table = rows(root)
    header, good = table[0], table[1]
    col = {c: i for i, c in enumerate(header)}

    def row(**kw):
        r = list(good)
        for k, v in kw.items():
            r[col[k]] = v
        return r

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "Images_png/000001_01_01/108.png")  # 8-bit
    (root / "Images_png/000001_01_01/110.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated
    Image.fromarray(np.full((40, 64), 32768, np.uint16)).save(root / "Images_png/000002_01_01/022.png")
    table += [
        row(File_name="000009_01_01_001.png"),  # referenced but missing
        row(File_name="../../etc_passwd.png"),  # escapes the root
        row(File_name="/abs/x_1.png"),  # absolute
        row(File_name="000001_01_01_108.png"),  # 8-bit PNG
        row(File_name="000001_01_01_110.png"),  # truncated PNG
        row(File_name="000002_01_01_022.png"),  # 40x64 but Image_size says 64x64
        row(Bounding_boxes="1, 2, 3"),  # not four numbers  -> ROI reject
        row(Bounding_boxes="nan, 2, 30, 40"),  # NaN           -> ROI reject (runner)
        row(Bounding_boxes="100, 100, 120, 130"),  # outside  -> ROI reject (runner)
        row(Bounding_boxes="30, 30, 20, 40"),  # degenerate     -> ROI reject (runner)
        list(good),  # duplicate of a lesion row                -> ROI reject
    ]
    write_rows(root, table)
    refs, rejects = split(root)
    reasons = " | ".join(r.reason for r in rejects)
    assert len(rejects) == 3, reasons
    assert "missing" in reasons and reasons.count("not a plain file name") == 2
    s = ingest_dataset(SPEC, root, tmp_path / "out", IngestConfig(patient_salt="s"))
    assert_reconciles(s)
    assert s.records_in == 9 and s.records_rejected == 6 and s.records_out == 3
    text = " | ".join(pq.read_table(tmp_path / "out/deeplesion/rejects.parquet").column("reason").to_pylist())
    for needle in ("16-bit", "corrupt", "Image_size", "four numbers", "NaN", "outside",
                   "degenerate", "duplicate lesion row"):
        assert needle in text, (needle, s.reasons)
    assert s.rois_out == 4


def test_missing_table_or_columns_fail_the_dataset(sample):
    root, _ = sample
    table = rows(root)
    write_rows(root, [[c for c in table[0] if c != "Bounding_boxes"]] + table[1:])
    with pytest.raises(RecordError, match="missing columns"):
        list(AD.discover(SPEC, root))
    (root / "DL_info.csv").unlink()
    with pytest.raises(RecordError, match="missing"):
        list(AD.discover(SPEC, root))
