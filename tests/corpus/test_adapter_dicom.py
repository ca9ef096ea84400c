"""Single-frame DICOM reading (A3, corpus.adapters.images.read_dicom) and the native layouts of the DICOM-based
X-ray samples (VinDr-CXR, RSNA, SIIM-ACR) that the csv_boxes / rle adapters read."""

from __future__ import annotations

import csv
import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from medlvr.corpus.adapters.images import read_2d, read_dicom
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.normalize import NormaliseConfig, to_uint8
from medlvr.corpus.records import RecordError, SourceImage
from medlvr.corpus.sample_data import write_samples
from medlvr.corpus.sample_data.dicom_sets import relative_rle, write_dicom, write_rsna_pneumonia, write_siim_acr, \
    write_vindr_cxr
from tests.corpus.helpers import assert_reconciles


def ramp(h=32, w=48, top=4000):
    return (np.arange(h * w).reshape(h, w) % top).astype(np.uint16)


def test_slope_intercept_gives_hu_for_ct(tmp_path):
    raw = ramp()
    write_dicom(tmp_path / "ct.dcm", raw, modality="CT", bits_stored=12, slope=2.0, intercept=-1024.0)
    px = read_dicom(tmp_path / "ct.dcm", ct=True)
    assert px.intensity == "ct_hu" and px.window is None
    np.testing.assert_array_equal(px.array, raw.astype(np.float32) * 2 - 1024)


def test_voi_window_from_header(tmp_path):
    raw = ramp()
    write_dicom(tmp_path / "w.dcm", raw, bits_stored=12, slope=1.0, intercept=-100.0, window=(900.0, 1000.0))
    px = read_dicom(tmp_path / "w.dcm")
    # PS3.3 C.11.2.1.2 LINEAR: c - 0.5 -/+ (w-1)/2 are black and white, i.e. (c - w/2, c + w/2 - 1)
    assert px.intensity == "window" and px.window == (400.0, 1399.0) and px.window_name == "dicom_voi"
    np.testing.assert_array_equal(px.array, raw.astype(np.float32) - 100)
    img8, _ = to_uint8(SourceImage("w.dcm", px.array, px.intensity, window=px.window), {}, NormaliseConfig())
    assert img8[px.array <= 400].max() == 0 and img8[px.array >= 1399].min() == 255


def test_monochrome1_is_inverted_inside_its_window(tmp_path):
    raw = ramp()
    write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", bits_stored=12, slope=2.0, intercept=-100.0,
                window=(4000.0, 7000.0))
    px = read_dicom(tmp_path / "m1.dcm")
    lo, hi = 500.0, 7499.0  # window (c - w/2, c + w/2 - 1), see test_voi_window_from_header
    assert px.window == (lo, hi) and px.attributes["inverted"] is True
    np.testing.assert_allclose(px.array, (lo + hi) - (raw.astype(np.float32) * 2 - 100))
    # the brightest stored value becomes the darkest displayed one
    assert px.array.flat[int(raw.argmax())] == px.array.min()


def test_monochrome1_without_window_inverts_over_its_range(tmp_path):
    raw = ramp(top=1000)
    write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", bits_stored=10)
    px = read_dicom(tmp_path / "m1.dcm")
    assert px.intensity == "window" and px.window == (0.0, 999.0) and px.window_name == "min_max"
    np.testing.assert_array_equal(px.array, 999.0 - raw)


def test_bits_stored_masks_the_unused_high_bits(tmp_path):
    raw = ramp(top=4096)
    dirty = raw | np.uint16(0xF000)  # overlay bits above BitsStored=12
    write_dicom(tmp_path / "b.dcm", dirty, bits_stored=12)
    px = read_dicom(tmp_path / "b.dcm")
    assert px.attributes["bits_stored"] == 12
    np.testing.assert_array_equal(px.array, raw.astype(np.float32))


def test_rle_lossless_is_decoded(tmp_path):
    from pydicom.uid import RLELossless

    raw = ramp()
    write_dicom(tmp_path / "u.dcm", raw, bits_stored=12)
    ds = pydicom.dcmread(tmp_path / "u.dcm")
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_dicom(tmp_path / "rle.dcm").array, raw.astype(np.float32))


def _encapsulated(tmp_path, name, ts, frame: bytes, bits=8):
    from pydicom.encaps import encapsulate

    write_dicom(tmp_path / "u.dcm", np.zeros((32, 48), np.uint8))
    ds = pydicom.dcmread(tmp_path / "u.dcm")
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / name)
    return tmp_path / name


def test_jpeg_baseline_is_decoded_or_rejected_by_name(tmp_path):
    from pydicom.uid import JPEGBaseline8Bit

    img = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    path = _encapsulated(tmp_path, "jpeg.dcm", JPEGBaseline8Bit, buf.getvalue())
    try:
        px = read_dicom(path)
    except RecordError as e:  # no JPEG decoder installed: the reason names the syntax
        assert "JPEG Baseline" in e.reason
        return
    assert px.array.shape == (32, 48) and np.abs(px.array - img).max() <= 8  # lossy, but the same picture


def test_undecodable_syntax_is_rejected_with_its_name(tmp_path):
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder
    from pydicom.uid import JPEGLSLossless

    path = _encapsulated(tmp_path, "jls.dcm", JPEGLSLossless, b"\xff\xd8\xff\xf7 not a real codestream \xff\xd9")
    with pytest.raises(RecordError) as e:
        read_dicom(path)
    assert "JPEG-LS Lossless" in e.value.reason
    if not JPEGLSLosslessDecoder.is_available:
        assert "cannot decode" in e.value.reason


def test_non_dicom_with_dcm_suffix(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"PNG? no. just text " * 50)
    with pytest.raises(RecordError, match="not a valid DICOM"):
        read_2d(tmp_path / "fake.dcm")


@pytest.mark.parametrize("keep", [200, 1000, -3000])
def test_truncated_dicom(tmp_path, keep):
    write_dicom(tmp_path / "full.dcm", ramp(64, 64), bits_stored=12)
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:keep] if keep > 0 else data[:len(data) + keep])
    with pytest.raises(RecordError) as e:
        read_dicom(tmp_path / "cut.dcm")
    assert "cut.dcm" in e.value.reason


def test_multiframe_takes_the_named_frame(tmp_path):
    write_dicom(tmp_path / "f.dcm", ramp(16, 16), extra={"NumberOfFrames": 1})
    ds = pydicom.dcmread(tmp_path / "f.dcm")
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([ramp(16, 16), ramp(16, 16)]).tobytes()
    ds.save_as(tmp_path / "f2.dcm")
    # issue 14: a 2-D multi-frame gives the catalog's frame (default 0) instead of being rejected wholesale
    np.testing.assert_array_equal(read_dicom(tmp_path / "f2.dcm").array, ramp(16, 16).astype(np.float32))
    with pytest.raises(RecordError, match="multi-frame"):
        read_dicom(tmp_path / "f2.dcm", multi_frame="reject")


def test_missing_file_is_a_record_error(tmp_path):
    with pytest.raises(RecordError, match="missing"):
        read_dicom(tmp_path / "nope.dcm")


# ------------------------------------------------------------------- native layouts of the X-ray samples
def test_vindr_layout_and_quirks(tmp_path):
    truth = write_vindr_cxr(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    nf = [r for r in rows if r["class_name"] == "No finding"]
    assert nf and all(r["class_id"] == "14" and r["x_min"] == "" for r in nf)
    for t in truth:
        for label, box in t["boxes"]:
            readers = {r["rad_id"] for r in rows if r["class_name"] == label and
                       f"train/{r['image_id']}.dicom" == t["source_path"]}
            assert len(readers) == 3
    kinds = {}
    for p in (tmp_path / "train").glob("*.dicom"):
        ds = pydicom.dcmread(p)
        kinds[ds.PhotometricInterpretation] = ds
    m1 = kinds["MONOCHROME1"]
    assert m1.BitsStored == 12 and "RescaleSlope" in m1 and "WindowCenter" in m1 and "WindowWidth" in m1


def test_rsna_layout_and_target0(tmp_path):
    truth = write_rsna_pneumonia(tmp_path, np.random.default_rng(0))
    text = (tmp_path / "stage_2_train_labels.csv").read_text().splitlines()
    assert text[0] == "patientId,x,y,width,height,Target"
    rows = [r.split(",") for r in text[1:]]
    assert any(r[5] == "0" and r[1:5] == ["", "", "", ""] for r in rows)
    counts = {}
    for r in rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    assert max(counts.values()) == 2  # a patient with two boxes has two rows
    for t in truth:  # xywh in the table, xyxy in the truth
        pid = t["source_path"].split("/")[-1][:-4]
        got = sorted([float(r[1]), float(r[2]), float(r[1]) + float(r[3]), float(r[2]) + float(r[4])]
                     for r in rows if r[0] == pid)
        assert got == sorted(b for _, b in t["boxes"])
        assert (tmp_path / t["source_path"]).is_file()


def _decode_relative(rle: str, h: int, w: int) -> np.ndarray:
    """The spec's decoder, written out here independently: flat buffer, reshape (W, H), transpose."""
    flat = np.zeros(w * h, dtype=bool)
    vals = [int(v) for v in rle.split()]
    pos = 0
    for off, length in zip(vals[0::2], vals[1::2]):
        pos += off
        flat[pos:pos + length] = True
        pos += length
    return flat.reshape(w, h).T


def test_relative_rle_round_trip_non_square():
    rng = np.random.default_rng(3)
    m = rng.random((20, 30)) > 0.7
    assert (_decode_relative(relative_rle(m), 20, 30) == m).all()


def test_siim_layout_rle_and_quirks(tmp_path):
    from scipy import ndimage

    truth = write_siim_acr(tmp_path, np.random.default_rng(0))
    lines = (tmp_path / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    rows = [ln.split(", ", 1) for ln in lines[1:]]
    assert any(r[1] == "-1" for r in rows)
    by_id: dict[str, list[str]] = {}
    for sop, rle in rows:
        by_id.setdefault(sop, []).append(rle)
    assert sorted(len(v) for v in by_id.values()) == [1, 1, 2]
    for t in truth:
        parts = t["source_path"].split("/")
        assert parts[0] == "dicom-images-train" and len(parts) == 4 and parts[3].endswith(".dcm")
        ds = pydicom.dcmread(tmp_path / t["source_path"])
        assert ds.SOPInstanceUID == parts[3][:-4] and ds.StudyInstanceUID == parts[1]
        mask = np.logical_or.reduce([_decode_relative(r, ds.Rows, ds.Columns) for r in by_id[parts[3][:-4]]])
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        boxes = sorted([float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop)]
                       for s in ndimage.find_objects(lab))
        assert boxes == sorted(b for _, b in t["boxes"])


# ------------------------------------------------------------------------- bad DICOM files through ingest
def test_bad_dicoms_become_rejects(tmp_path):
    root = tmp_path / "data"
    write_samples(root, ["rsna_pneumonia"], seed=0)
    ds_root = root / "rsna_pneumonia"
    files = sorted((ds_root / "stage_2_train_images").glob("*.dcm"))
    files[0].write_bytes(b"not a dicom at all" * 20)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 2])
    s = ingest_dataset(load_catalog()["rsna_pneumonia"], ds_root, tmp_path / "out", IngestConfig(patient_salt="s"))
    assert_reconciles(s)
    assert s.records_rejected == 2 and s.records_out == 1
    reasons = " | ".join(s.reasons)
    assert "DICOM" in reasons, s.reasons
