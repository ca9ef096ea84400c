"""A4 `dicom_series_lidc_xml` (LIDC-IDRI): slice order, XML, holes, reader clustering, consensus, bad input."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.lidc import cluster_annotations, parse_lidc_xml, reader_masks
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError, RecordRef, Reject
from medlvr.corpus.sample_data.dicom_sets import write_lidc_idri
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

SPEC = load_catalog()["lidc_idri"]
AD = ADAPTERS["dicom_series_lidc_xml"]


@pytest.fixture
def sample(tmp_path):
    truth = write_lidc_idri(tmp_path, np.random.default_rng(0))
    return tmp_path, truth


def refs_and_rejects(root):
    out = list(AD.discover(SPEC, root))
    return [r for r in out if isinstance(r, RecordRef)], [r for r in out if isinstance(r, Reject)]


def test_discover_load_recovers_consensus_boxes(sample):
    root, truth = sample
    refs, rejects = refs_and_rejects(root)
    assert len(refs) == 1 and not rejects  # the IdriReadMessage (radiograph) XML is skipped, not rejected
    images = AD.load(SPEC, root, refs[0])
    got = {im.suffix: [(r.label, list(r.box)) for r in im.rois] for im in images}
    for t in truth:
        assert got[t["suffix"]] == [tuple(b) for b in t["boxes"]]
    assert sum(len(im.rois) for im in images) == 3  # nodules A, B and the 9-px C; points (small nodule, non-nodule) are never boxes
    # reader 4's unknown SOP UID was matched by z position: no reject but the accounting ones (reads fused into
    # their nodule's first read, the < 3 mm point)
    assert all("fused with" in r[1] or "point" in r[1] for im in images for r in im.roi_rejects)
    key = {im.suffix: im for im in images}["z0003"]
    x0, y0, x1, y1 = (int(v) for v in truth[0]["boxes"][0][1])
    # slices are in z order (file names run the other way) and in HU: the nodule is soft tissue, the lung air
    assert np.median(key.pixels[y0 + 2:y1 - 2, x0 + 2:x1 - 2]) == pytest.approx(60, abs=40)
    assert key.intensity == "ct_hu" and key.pixels.min() < -900
    roi = key.rois[0]
    assert roi.attributes["n_readers"] == 3 and roi.attributes["z_range"] == [2, 4]
    b = {im.suffix: im for im in images}["z0005"].rois[0]
    assert b.attributes["n_readers"] == 2 and b.attributes["z_range"] == [5, 6]
    kinds = sorted(p["kind"] for p in key.attributes["point_annotations"])
    assert kinds == ["non-nodule", "small nodule"]


def test_ingest_sample_exact_boxes(tmp_path):
    ing = ingest_sample(tmp_path, "lidc_idri")
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) == 3
    images = ing.table("images").to_pylist()
    assert {im["window_name"] for im in images} == {"lung"}


def test_namespace_optional_and_hole_subtracted(sample):
    root, _ = sample
    xml = next(root.rglob("069.xml"))
    with_ns = parse_lidc_xml(xml)
    xml.write_text(xml.read_text().replace(' xmlns="http://www.nih.gov"', ""))
    assert parse_lidc_xml(xml) == with_ns
    nod = with_ns["readers"][0]["nodules"][0]
    assert any(not r["inclusion"] for r in nod["rois"])
    refs, _ = refs_and_rejects(root)
    ds = [pydicom.dcmread(root / s) for s in refs[0].annotations["slices"]]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    by_sop = {d.SOPInstanceUID: k for k, d in enumerate(ds)}
    zs = [float(d.ImagePositionPatient[2]) for d in ds]
    masks, problems = reader_masks(nod, (64, 64), by_sop, zs)
    assert not problems and sorted(masks) == [2, 3, 4]
    m = masks[3]
    assert not m[23:26, 24:27].any()  # the inclusion=FALSE hole (x 24..26, y 23..25, boundary included)
    assert m[20:29, 20:24].all() and m.sum() == 10 * 9 - 9


def test_cluster_annotations_by_centroid():
    anns = [{"reader": 0, "centroid": (10, 10, 0)}, {"reader": 1, "centroid": (11, 10, 0)},
            {"reader": 2, "centroid": (10, 12, 1)}, {"reader": 1, "centroid": (40, 40, 0)},
            {"reader": 3, "centroid": (41, 40, 0)}]
    assert cluster_annotations(anns, 10.0) == [[0, 1, 2], [3, 4]]
    # two annotations of one reader 6 mm apart: the tolerance shrinks until they are in different groups
    # (reader 1 lies 2 mm from the first, 4 mm from the second: it stays with the nearer one)
    close = [{"reader": 0, "centroid": (0, 0, 0)}, {"reader": 1, "centroid": (2, 0, 0)},
             {"reader": 0, "centroid": (6, 0, 0)}]
    assert cluster_annotations(close, 10.0) == [[0, 1], [2]]


def test_consensus_needs_half_the_readers(sample):
    """Three readers: only pixels two of them marked are in the nodule (reader 2's extra top row is not)."""
    root, truth = sample
    refs, _ = refs_and_rejects(root)
    spec = type(SPEC)(**{**SPEC.__dict__, "options": {**SPEC.options, "consensus_level": 1.0}})
    images = {im.suffix: im for im in AD.load(spec, root, refs[0])}
    strict = images["z0003"].rois[0].box  # all three readers: the intersection
    assert strict == (21.0, 21.0, 30.0, 29.0)
    assert truth[0]["boxes"][0][1] == [20.0, 20.0, 30.0, 29.0]


# -------------------------------------------------------------------------------------------- bad input
def test_malformed_xml_and_empty_series_are_rejects(sample):
    root, _ = sample
    bad = root / "LIDC-IDRI/LIDC-IDRI-0003/s/series"
    bad.mkdir(parents=True)
    (bad / "070.xml").write_text("<LidcReadMessage xmlns='http://www.nih.gov'><readingSession>")
    empty = root / "LIDC-IDRI/LIDC-IDRI-0004/s/series"
    empty.mkdir(parents=True)
    (empty / "070.xml").write_text("<LidcReadMessage xmlns='http://www.nih.gov'><ResponseHeader/></LidcReadMessage>")
    refs, rejects = refs_and_rejects(root)
    assert len(refs) == 1
    reasons = sorted(r.reason for r in rejects)
    assert any("cannot parse LIDC XML" in r for r in reasons) and any("no DICOM slices" in r for r in reasons)


def test_duplicate_series_is_rejected(sample):
    root, _ = sample
    src = next(root.rglob("069.xml")).parent
    shutil.copytree(src, root / "LIDC-IDRI/LIDC-IDRI-0009/copy/series")
    refs, rejects = refs_and_rejects(root)
    assert len(refs) == 1 and len(rejects) == 1 and "duplicate series" in rejects[0].reason


def test_symlinked_slice_escaping_root_is_rejected(sample, tmp_path_factory):
    root, _ = sample
    outside = tmp_path_factory.mktemp("outside") / "x.dcm"
    series = next(root.rglob("069.xml")).parent
    shutil.copy(next(series.glob("*.dcm")), outside)
    os.symlink(outside, series / "9-999.dcm")
    refs, rejects = refs_and_rejects(root)
    assert not refs and len(rejects) == 1 and "outside the dataset root" in rejects[0].reason


def test_corrupt_slice_rejects_the_record_and_reconciles(sample, tmp_path):
    root, _ = sample
    series = next(root.rglob("069.xml")).parent
    f = sorted(series.glob("*.dcm"))[3]
    f.write_bytes(f.read_bytes()[:1500])
    refs, _ = refs_and_rejects(root)
    with pytest.raises(RecordError, match="unreadable DICOM slice|without pixel|truncated"):
        AD.load(SPEC, root, refs[0])
    s = ingest_dataset(SPEC, root, tmp_path / "out", IngestConfig(patient_salt="s"))
    assert_reconciles(s)
    assert s.records_rejected == 1 and s.records_out == 0


def test_slices_of_different_sizes_or_without_position(sample):
    root, _ = sample
    series = next(root.rglob("069.xml")).parent
    f = sorted(series.glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)
    refs, _ = refs_and_rejects(root)
    with pytest.raises(RecordError, match="ImagePositionPatient"):
        AD.load(SPEC, root, refs[0])
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [0, 0, 999.0]
    ds.Rows = ds.Columns = 32
    ds.PixelData = np.zeros((32, 32), np.uint16).tobytes()
    ds.save_as(f)
    with pytest.raises(RecordError, match="different sizes"):
        AD.load(SPEC, root, refs[0])


def test_outline_on_unknown_slice_is_an_roi_reject(sample):
    root, truth = sample
    xml = next(root.rglob("069.xml"))
    text = xml.read_text()
    # reader 4's fallback outline: unknown SOP UID and now also a z position no slice has
    i = text.index("1.2.3.999.unknown")
    j = text.rindex("<imageZposition>", 0, i)
    k = text.index("</imageZposition>", j)
    xml.write_text(text[:j] + "<imageZposition>12345</imageZposition>" + text[k + len("</imageZposition>"):])
    refs, _ = refs_and_rejects(root)
    images = AD.load(SPEC, root, refs[0])
    rejects = [r for im in images for r in im.roi_rejects if "unknown slice" in r[1]]
    assert len(rejects) == 1 and rejects[0][2].endswith("069.xml#reader=4/nodule=1")
    assert {im.suffix for im in images} >= {"z0003", "z0005"}


def _displayed_truth(stored, row, col):
    """(Z, rows, columns) -> the display convention, straight from the cosines (LPS): the stored axis whose
    cosine points most along x is shown as x, increasing towards the patient's left (+x); the other as y,
    increasing towards posterior (+y)."""
    a = stored
    if abs(row[0]) < abs(col[0]):  # rows run along A-P: columns are the left-right axis
        a, row, col = np.swapaxes(a, 1, 2), col, row
    if row[0] < 0:
        a = a[:, :, ::-1]
    if col[1] < 0:
        a = a[:, ::-1, :]
    return a


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0),
                                 (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)],
                         ids=["axial", "row-flipped", "column-flipped", "both-flipped", "transposed"])
def test_series_shown_in_display_convention_boxes_follow(sample, iop):
    """ImageOrientationPatient -> x towards the patient's left, y towards posterior; outlines (stored pixel grid)
    flip with the pixels, so the boxes stay exact. Truths: the files read with pydicom, flipped by the cosines."""
    root, truth = sample
    files = sorted(root.rglob("LIDC-IDRI-0001/**/*.dcm"))
    stored = {}
    for p in files:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = list(iop)
        ds.save_as(p)
        stored[float(ds.ImagePositionPatient[2])] = ds.pixel_array.astype(np.float32) - 1024.0
    hu = np.stack([stored[z] for z in sorted(stored)])  # an axial series runs foot to head either way
    row, col = iop[:3], iop[3:]
    want = _displayed_truth(hu, row, col)
    refs, _ = refs_and_rejects(root)
    images = {im.suffix: im for im in AD.load(SPEC, root, refs[0])}
    for t in truth:
        im = images[t["suffix"]]
        z = int(t["suffix"][1:])
        np.testing.assert_array_equal(im.pixels, want[z])
        x0, y0, x1, y1 = (int(v) for v in t["boxes"][0][1])
        mask = np.zeros((1,) + hu.shape[1:], dtype=bool)
        mask[0, y0:y1, x0:x1] = True
        ys, xs = np.nonzero(_displayed_truth(mask, row, col)[0])
        assert [list(r.box) for r in im.rois] == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    # the non-nodule locus (x 50, y 12 on slice 7) lands where its pixel went
    spot = np.zeros((1,) + hu.shape[1:], dtype=bool)
    spot[0, 12, 50] = True
    ys, xs = np.nonzero(_displayed_truth(spot, row, col)[0])
    pts = [p for im in images.values() for p in im.attributes.get("point_annotations", []) if p["kind"] == "non-nodule"]
    assert {(p["slice"], p["x"], p["y"]) for p in pts} == {(7, xs[0], ys[0])}
