"""pydicom's own bundled test files through the project's DICOM reader and the shared normalisation.

Every file whose pixel data pydicom decodes must come out as an 8-bit image that matches pydicom's own display
pipeline (modality LUT + VOI LUT/window, YBR -> RGB, palette applied, MONOCHROME1 shown inverted) with a
correlation >= 0.99; multi-frame volumes come out through the volume reader instead; everything else is rejected
with a one-line reason that says why. Nothing raises anything but RecordError.

The files are read from the installed package's folder (`get_testdata_files` would try the network).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

from medlvr.corpus.adapters.images import read_2d, read_dicom, read_dicom_volume
from medlvr.corpus.catalog import CatalogError, parse_spec
from medlvr.corpus.normalize import NormaliseConfig, to_uint8
from medlvr.corpus.records import RecordError, SourceImage

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ALL_FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _pydicom_decodes(path: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            return ds, ds.pixel_array
    except Exception:
        return None, None


def reference_display(ds, arr: np.ndarray) -> np.ndarray:
    """pydicom's own pipeline for what a viewer shows, computed independently of the project's reader."""
    pi = str(ds.PhotometricInterpretation)
    if pi == "PALETTE COLOR":
        return apply_color_lut(arr, ds).astype(np.float64)
    if arr.ndim == 3:
        return arr.astype(np.float64)
    v = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0).astype(np.float64)
    return -v if pi == "MONOCHROME1" else v  # MONOCHROME1: low values are shown white


def ours(path: Path, frame: int = 0) -> np.ndarray:
    px = read_dicom(path, multi_frame=frame)
    src = SourceImage(source_path=path.name, pixels=px.array, intensity=px.intensity, window=px.window,
                      window_name=px.window_name)
    img8, _ = to_uint8(src, {}, NormaliseConfig())
    return img8


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def assert_good_reason(reason: str) -> None:
    assert reason and "\n" not in reason and not reason.rstrip().endswith(":"), reason
    assert str(TEST_FILES) not in reason and str(Path.home()) not in reason, reason
    assert " /" not in reason and not reason.startswith("/"), reason


def test_the_bundle_is_there():
    assert len(ALL_FILES) >= 78


@pytest.mark.parametrize("path", ALL_FILES, ids=[str(p.relative_to(TEST_FILES)) for p in ALL_FILES])
def test_bundled_file_matches_pydicom_or_is_rejected_with_a_reason(path):
    ds, arr = _pydicom_decodes(path)
    if arr is None:  # pydicom cannot decode it: a one-line reason, never another exception
        with pytest.raises(RecordError) as e:
            read_dicom(path)
        assert_good_reason(e.value.reason)
        return
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1 and arr.ndim == 3 and ds.SamplesPerPixel == 1:  # a volume: rejected as 2-D, read as slices
        with pytest.raises(RecordError, match="is a volume") as e:
            read_dicom(path)
        assert_good_reason(e.value.reason)
        vol = read_dicom_volume(path)
        offsets = [float(v) for v in ds.GridFrameOffsetVector]
        ref = apply_modality_lut(arr, ds)[np.argsort(offsets, kind="stable")]
        assert vol.values.shape == ref.shape and vol.positions == sorted(offsets)
        assert np.allclose(vol.values, ref)
        return
    frame = arr[0] if n_frames > 1 else arr
    ref = reference_display(ds, frame)
    if np.ptp(ref) == 0:  # nothing to show: rejected as constant
        with pytest.raises(RecordError, match="constant after windowing"):
            ours(path)
        return
    img = ours(path)
    assert img.shape[:2] == ref.shape[:2]
    if ref.ndim == 3 and img.ndim == 2:  # grey stored as RGB is kept as one channel
        ref = ref[:, :, 0]
    assert corr(img, ref) >= 0.99, corr(img, ref)


def test_plugins_decode_every_compressed_family():
    """JPEG-LS, JPEG Lossless SV1, 12-bit JPEG Extended, JPEG 2000 and RLE all decode (pylibjpeg plugins)."""
    for name in ("JPEGLSNearLossless_16.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm",
                 "MR_small_jp2klossless.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_RLE.dcm", "693_J2KI.dcm"):
        assert ours(TEST_FILES / name).size > 0, name


def test_ybr_colour_is_converted_to_rgb():
    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        path = TEST_FILES / name
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation.startswith("YBR")
        from pydicom.pixels import pixel_array
        ybr = pixel_array(ds, as_rgb=False)
        ref = convert_color_space(ybr, ds.PhotometricInterpretation, "RGB")
        img = ours(path)
        assert img.shape == ref.shape and corr(img, ref) >= 0.99, name


def test_palette_colour_applies_the_palette():
    path = TEST_FILES / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    img = ours(path)
    assert img.ndim == 3 and img.shape[2] == 3
    assert corr(img, apply_color_lut(ds.pixel_array, ds)) >= 0.99


def test_16_bit_colour_is_scaled_not_wrapped():
    path = TEST_FILES / "SC_rgb_rle_16bit.dcm"
    ref = pydicom.dcmread(path).pixel_array
    img = ours(path)
    assert img.dtype == np.uint8 and corr(img, ref) >= 0.999


def test_multi_frame_rule_names_the_frame(tmp_path):
    path = TEST_FILES / "SC_rgb_rle_2frame.dcm"
    arr = pydicom.dcmread(path).pixel_array
    assert not np.array_equal(arr[0], arr[1])
    px0, px1 = read_dicom(path), read_dicom(path, multi_frame=1)
    assert np.array_equal(px0.array, arr[0]) and np.array_equal(px1.array, arr[1])
    assert px1.attributes["frame"] == 1 and px1.attributes["frames"] == 2
    with pytest.raises(RecordError, match="has 2 frames; the catalog names frame 5"):
        read_dicom(path, multi_frame=5)
    with pytest.raises(RecordError, match="multi_frame rule is reject"):
        read_2d(path, multi_frame="reject")
    # read_2d goes by suffix: a copy under a DICOM name follows the same rule
    copy = tmp_path / "cine.dcm"
    copy.write_bytes(path.read_bytes())
    assert np.array_equal(read_2d(copy, multi_frame=1).array, arr[1])


def test_multi_frame_volume_is_not_a_2d_image():
    with pytest.raises(RecordError, match=r"is a volume \(RT Dose, 15 slices\)"):
        read_dicom(TEST_FILES / "rtdose.dcm", multi_frame=3)


def _spec(**extra):
    raw = {"id": "x", "name": "X", "modality": "X-ray", "body_region": "chest", "adapter": "csv_boxes",
           "labels": {"a": "kg:a"}, "layout": ["*.dcm"], "patient_key": {"source": "image"}, "licence": "l",
           "citation": "c", "homepage": "h", **extra}
    return parse_spec(raw)


def test_catalog_multi_frame_rule():
    assert _spec().multi_frame == 0
    assert _spec(multi_frame=4).multi_frame == 4
    assert _spec(multi_frame="reject").multi_frame == "reject"
    for bad in (-1, "middle", True, 1.5):
        with pytest.raises(CatalogError, match="multi_frame"):
            _spec(multi_frame=bad)


def test_one_bit_segmentation_is_a_binary_image_not_black():
    """liver_1frame.dcm is a 1-bit DICOM SEG: the percentile window of its non-zero pixels collapses (lo = hi);
    the old code mapped every pixel to 0 and wrote an all-black image."""
    path = TEST_FILES / "liver_1frame.dcm"
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID.name == "Segmentation Storage" and ds.BitsAllocated == 1
    img = ours(path)
    assert set(np.unique(img)) == {0, 255}
    assert np.array_equal(img == 255, ds.pixel_array == 1)


def test_constant_segmentation_is_rejected(tmp_path):
    ds = pydicom.dcmread(TEST_FILES / "liver_1frame.dcm")
    ds.PixelData = bytes(len(ds.PixelData))  # every voxel outside the segment
    path = tmp_path / "empty_seg.dcm"
    ds.save_as(path)
    with pytest.raises(RecordError, match="constant after windowing") as e:
        ours(path)
    assert e.value.stage == "normalise"


def test_constant_png_is_rejected_on_the_2d_path(tmp_path):
    for name, arr in (("grey.png", np.full((32, 40), 17, np.uint8)), ("rgb.png", np.full((32, 40, 3), 200, np.uint8)),
                      ("deep.png", np.full((32, 40), 4000, np.uint16))):
        Image.fromarray(arr).save(tmp_path / name)
        px = read_2d(tmp_path / name)
        src = SourceImage(source_path=name, pixels=px.array, intensity=px.intensity)
        with pytest.raises(RecordError, match="constant after windowing"):
            to_uint8(src, {}, NormaliseConfig())


def test_reasons_keep_the_cause_on_one_line():
    """Decoder errors span lines ('...all available plugins:' then the plugin's cause): the cause is kept."""
    with pytest.raises(RecordError) as e:
        read_dicom(TEST_FILES / "JPEG-lossy.dcm")
    assert "pylibjpeg" in e.value.reason and "libjpeg error" in e.value.reason
    assert_good_reason(e.value.reason)
    with pytest.raises(RecordError, match="truncated DICOM pixel data: 8130 of 8192 bytes"):
        read_dicom(TEST_FILES / "MR_truncated.dcm")
    with pytest.raises(RecordError, match="without a transfer syntax"):
        read_dicom(TEST_FILES / "meta_missing_tsyntax.dcm")
    with pytest.raises(RecordError, match="without pixel data"):
        read_dicom(TEST_FILES / "rtplan.dcm")


def test_decompression_bomb_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 x 100: Pillow refuses
    with pytest.raises(RecordError, match="decompression-bomb limit big.png: Image size") as e:
        read_2d(tmp_path / "big.png")
    assert_good_reason(e.value.reason)


def test_volume_path_reads_a_multi_frame_file_as_its_slices(tmp_path):
    """The DICOM series reader (LIDC-IDRI's volume path) takes a one-file volume frame by frame, in position order."""
    from medlvr.corpus.adapters.lidc import read_series

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "dose.dcm").write_bytes((TEST_FILES / "rtdose.dcm").read_bytes())
    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    vol, zs, sops, spacing, _ = read_series(tmp_path, ["series/dose.dcm"])
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert vol.shape == (15, 10, 10) and zs == sorted(offsets) and set(sops) == {str(ds.SOPInstanceUID)}
    np.testing.assert_allclose(vol, apply_modality_lut(ds.pixel_array, ds)[np.argsort(offsets, kind="stable")])
    assert spacing == (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


def test_volume_path_takes_a_multi_frame_file_orientation_from_its_header(tmp_path):
    """The one-file volume's ImageOrientationPatient orients it too: rows written towards the patient's right
    give RAS directions whose x axis points right (display_axes then flips it)."""
    from medlvr.corpus.adapters.lidc import read_series
    from medlvr.corpus.orientation import display_axes

    ds = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    (tmp_path / "series").mkdir()
    ds.save_as(tmp_path / "series" / "dose.dcm")
    vol, zs, _, _, directions = read_series(tmp_path, ["series/dose.dcm"])
    assert directions[0, 0] > 0 and display_axes(directions) == ("XYZ", (0,))
    # frame offsets run along row x column = (0, 0, -1), towards the feet: the series runs foot to head, so the
    # frames come in descending offset order
    assert zs == sorted(zs, reverse=True) and vol.shape == (15, 10, 10)
    np.testing.assert_allclose(vol, apply_modality_lut(ds.pixel_array, ds)[::-1])
