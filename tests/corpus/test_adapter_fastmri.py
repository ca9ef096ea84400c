"""A6 `hdf5_csv_boxes` (fastMRI+): rss/esc, up-down flip, xywh, study-level rows, reviewed negatives, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.fastmri import read_file_list
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError, RecordRef, Reject
from medlvr.corpus.sample_data.dicom_sets import write_fastmri_plus
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

SPEC = load_catalog()["fastmri_plus"]
AD = ADAPTERS["hdf5_csv_boxes"]


@pytest.fixture
def sample(tmp_path):
    root = tmp_path / "fastmri_plus"
    root.mkdir()
    return root, write_fastmri_plus(root, np.random.default_rng(0))


def split(root):
    out = list(AD.discover(SPEC, root))
    return {r.key: r for r in out if isinstance(r, RecordRef)}, [r for r in out if isinstance(r, Reject)]


def test_discover_load_boxes_flip_and_study_rows(sample):
    root, truth = sample
    refs, rejects = split(root)
    assert not rejects
    assert sorted(refs) == ["file1000001", "file1000002", "file_brain_AXFLAIR_200_6002425"]  # 1000003: unreviewed
    images = {im.suffix: im for im in AD.load(SPEC, root, refs["file1000001"])}
    for t in truth:
        im = images[t["suffix"]]
        assert [(r.label, list(r.box)) for r in im.rois] == [tuple(b) for b in t["boxes"]]
        for _, (x0, y0, x1, y1) in t["boxes"]:  # the lesion is bright where the box is: the flip is right
            inside = im.pixels[int(y0):int(y1), int(x0):int(x1)]
            assert inside.mean() > 2.0 * np.median(im.pixels[im.pixels > 0])
    labels = {r.label for im in images.values() for r in im.rois}
    assert "Joint Effusion" in labels  # trailing space stripped
    # the sample's "Possible artifact" box: the catalog ignores the label, so the adapter rejects it before any
    # image is made (with the catalog's reason), and it is no ROI
    assert "Possible artifact" not in labels and SPEC.ignored("Possible artifact")
    reasons = [str(r) for im in images.values() for r in im.roi_rejects]
    assert any("label 'Possible artifact' is ignored by the catalog: " + SPEC.ignored("Possible artifact") in r
               for r in reasons), reasons
    im = images["z0001"]
    assert im.attributes["study_labels"] == ["Periarticular cysts"]
    with h5py.File(root / "knee_multicoil_val/file1000001.h5") as f:
        vol = f["reconstruction_rss"][()]
    assert im.intensity == "window" and im.window == (0.0, pytest.approx(float(np.percentile(vol, 99.5))))
    np.testing.assert_array_equal(im.pixels, vol[1][::-1, :])


def test_reviewed_files_without_boxes_are_negatives(sample):
    root, _ = sample
    refs, _ = split(root)
    esc = AD.load(SPEC, root, refs["file1000002"])
    assert len(esc) == 2 and all(not im.rois for im in esc)
    assert {im.attributes["reconstruction"] for im in esc} == {"reconstruction_esc"}
    assert {im.attributes["slice_role"] for im in esc} == {"negative"}
    brain = AD.load(SPEC, root, refs["file_brain_AXFLAIR_200_6002425"])
    assert brain and all(not im.rois and im.attributes["study_labels"] == ["Normal for age"] for im in brain)


def test_ingest_sample_exact_boxes(tmp_path):
    ing = ingest_sample(tmp_path, "fastmri_plus")
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) == 3
    images = ing.table("images").to_pylist()
    assert {im["official_split"] for im in images} == {"val"}
    # 2 annotated knee slices, 2 negatives of the 4-slice esc volume, 1 middle slice of the 3-slice brain
    assert ing.summary.records_out == 3 and ing.summary.images_out == 2 + 2 + 1


def test_file_list_with_or_without_header(tmp_path):
    (tmp_path / "a.csv").write_text("file\nfile1000001.h5\n\nfile1000002\n")
    assert read_file_list(tmp_path / "a.csv") == ["file1000001", "file1000002"]


def test_bad_volumes_and_rows(sample, tmp_path):
    root, _ = sample
    knee = root / "Annotations/knee.csv"
    lines = knee.read_text().splitlines()
    lines += ["file1000001,9,No,10,10,5,5,Meniscus Tear",  # slice outside the 4-slice volume
              "file1000001,1,No,abc,10,5,5,Meniscus Tear",  # non-numeric x -> NaN -> runner rejects
              "file1000001,2,No,150,200,25,25,Bone- Subchondral edema",  # duplicate row
              "file1000001,2,No,400,400,10,10,Meniscus Tear",  # outside the 320x320 image
              "file1000001,2,No,10,10,0,10,Meniscus Tear",  # zero width
              "file2000001,0,No,1,1,5,5,Mass",  # no such h5 file
              "file2000002,0,No,1,1,5,5,Mass", "file2000003,0,No,1,1,5,5,Mass", "file2000004,0,No,1,1,5,5,Mass",
              "file2000005,0,No,1,1,5,5,Mass"]
    knee.write_text("\n".join(lines) + "\n")
    d = root / "knee_multicoil_train"
    d.mkdir()
    with h5py.File(d / "file2000002.h5", "w") as f:  # no reconstruction dataset
        f.create_dataset("kspace", data=np.zeros((2, 4, 4), np.complex64))
    with h5py.File(d / "file2000003.h5", "w") as f:  # NaN
        f.create_dataset("reconstruction_rss", data=np.full((2, 16, 16), np.nan, np.float32))
    with h5py.File(d / "file2000004.h5", "w") as f:  # 2-D instead of (slices, H, W)
        f.create_dataset("reconstruction_rss", data=np.ones((16, 16), np.float32))
    (d / "file2000005.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 20)  # corrupt HDF5
    (root / "brain_multicoil_val/file1000002.h5").write_bytes(b"")  # duplicate id: a second file1000002
    refs, rejects = split(root)
    reasons = sorted(r.reason for r in rejects)
    assert len(rejects) == 2 and any("missing" in r for r in reasons) and any("duplicate" in r for r in reasons)
    s = ingest_dataset(SPEC, root, tmp_path / "out", IngestConfig(patient_salt="s"))
    assert_reconciles(s)
    assert s.records_in == 8 and s.records_rejected == 2 + 4 and s.records_out == 2
    text = " | ".join(pq.read_table(tmp_path / "out/fastmri_plus/rejects.parquet").column("reason").to_pylist())
    for needle in ("outside the volume", "NaN", "duplicate box row", "outside the 320x320", "degenerate",
                   "no reconstruction dataset", "must be (slices, H, W)", "cannot read HDF5"):
        assert needle in text, (needle, text)


def test_missing_table_or_columns_fail_the_dataset(sample):
    root, _ = sample
    (root / "Annotations/brain.csv").write_text("file,slice,x,y\nfile_brain_AXFLAIR_200_6002425,1,2,3\n")
    with pytest.raises(RecordError, match="missing columns"):
        list(AD.discover(SPEC, root))
    (root / "Annotations/brain.csv").unlink()
    with pytest.raises(RecordError, match="missing"):
        list(AD.discover(SPEC, root))
