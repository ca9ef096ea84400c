"""A1 nifti_volume: KiTS23, LiTS, MSD CT, BraTS, ACDC, MSD Prostate, CAMUS 2023 (docs/datasets.md §2.1, §2.2, §2.4)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError, RecordRef, Reject
from medlvr.corpus.sample_data import volumes as sv
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

NIFTI_IDS = ["kits23", "lits", "msd_ct", "brats2021", "acdc", "msd_prostate", "camus"]


def run(spec, root: Path):
    """discover + load directly: (images, rejects)."""
    a = ADAPTERS[spec.adapter]
    images, rejects = [], []
    for item in a.discover(spec, root):
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        try:
            images += a.load(spec, root, item)
        except RecordError as e:
            rejects.append(Reject(spec.id, item.key, "load", e.reason, item.key))
    return images, rejects


def assert_direct_truth(images, truth) -> int:
    got = {(im.source_path, im.suffix): [(r.label, list(r.box)) for r in im.rois] for im in images}
    n = 0
    for t in truth:
        key = (t["source_path"], t["suffix"])
        assert key in got, f"no image {key}; have {sorted(got)}"
        for label, box in t["boxes"]:
            assert (label, box) in got[key], f"{key}: {label} {box} not in {got[key]}"
            n += 1
    assert n > 0
    return n


def spec_with(ds: str, **options):
    spec = load_catalog()[ds]
    return dataclasses.replace(spec, options={**spec.options, **options})


def ingest(spec, root: Path, tmp_path: Path):
    s = ingest_dataset(spec, root, tmp_path / "out", IngestConfig(patient_salt="t"))
    assert_reconciles(s)
    rej = pq.read_table(tmp_path / "out" / spec.id / "rejects.parquet").to_pylist()
    return s, rej


@pytest.mark.parametrize("ds", NIFTI_IDS)
def test_sample_boxes_recovered_through_ingest(tmp_path, ds):
    ing = ingest_sample(tmp_path, ds)
    assert_reconciles(ing.summary)
    assert ing.summary.records_rejected == 0, ing.summary.reasons
    assert assert_truth_recovered(ing) > 0
    assert not ing.summary.layout_missing


def test_kits_axis_order_spacing_and_hierarchy(tmp_path):
    truth = sv.write_kits23(tmp_path, np.random.default_rng(0))
    images, rejects = run(load_catalog()["kits23"], tmp_path)
    assert not rejects
    assert_direct_truth(images, truth)
    im = next(i for i in images if i.source_path.endswith("case_00000/imaging.nii.gz") and i.suffix == "z0005")
    assert im.pixels.shape == (48, 48) and im.slice_axis == 0
    assert im.spacing_mm == pytest.approx((3.0, 0.78, 0.78))
    by = {}
    for r in im.rois:
        by.setdefault(r.label, []).append(r)
    assert len(by["kidney tumor"]) == 2  # two separate class-2 components inside the kidney
    assert {r.parent for r in by["kidney tumor"]} == {"kidney mass"}
    assert {r.parent for r in by["kidney mass"]} == {"kidney"}
    assert all("z_range" in r.attributes and "z_extent_mm" in r.attributes for r in im.rois)
    # the affine, not axis_order, names the spatial axes of a NIfTI: a wrong axis_order changes nothing
    same, _ = run(spec_with("kits23", axis_order="XYZ"), tmp_path)
    assert [(i.suffix, i.pixels.tobytes(), [r.box for r in i.rois]) for i in same] == \
        [(i.suffix, i.pixels.tobytes(), [r.box for r in i.rois]) for i in images]


def test_kits_ras_reorientation_flips_consistently(tmp_path):
    truth = sv.write_kits23(tmp_path, np.random.default_rng(0))
    images, rejects = run(spec_with("kits23", canonical=True, axis_order="XYZ"), tmp_path)
    assert not rejects
    # the sample affine has negative diagonal terms: RAS reorientation reverses z, y and x; the display
    # convention then shows x and y as before (left, posterior), and the slices in the canonical (reversed) order
    flipped = [{"source_path": t["source_path"], "suffix": f"z{9 - int(t['suffix'][1:]):04d}", "boxes": t["boxes"]}
               for t in truth]
    assert_direct_truth(images, flipped)


def test_brats_2023_release_detected_from_file_names(tmp_path):
    truth = sv.write_brats2021(tmp_path, np.random.default_rng(1), release="2023")
    spec = load_catalog()["brats2021"]
    refs = list(ADAPTERS[spec.adapter].discover(spec, tmp_path))
    assert [r.annotations["variant"] for r in refs] == ["2023-GLI"]
    images, rejects = run(spec, tmp_path)
    assert not rejects
    assert_direct_truth(images, truth)
    assert any(r.label == "enhancing tumor" for im in images for r in im.rois)  # ET = 3 in 2023
    seqs = {im.attributes["sequence"]: im for im in images if im.suffix.endswith("z0004")}
    assert set(seqs) == {"flair", "t1", "t1ce", "t2"}
    assert seqs["t1ce"].source_path.endswith("-t1c.nii.gz")
    assert len({im.window for im in seqs.values()}) == 4  # percentiles per sequence, never shared


def test_brats_2021_label_3_rejected_as_wrong_coding(tmp_path):
    sv.write_brats2021(tmp_path, np.random.default_rng(1))
    seg = tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    img = nib.load(str(seg))
    a = np.asanyarray(img.dataobj).copy()
    a[a == 4] = 3
    nib.save(nib.Nifti1Image(a, img.affine), str(seg))
    images, rejects = run(load_catalog()["brats2021"], tmp_path)
    assert not images and len(rejects) == 1 and "[3]" in rejects[0].reason


def test_acdc_ed_es_phase_patient_split(tmp_path):
    truth = sv.write_acdc(tmp_path, np.random.default_rng(2))
    spec = load_catalog()["acdc"]
    refs = [r for r in ADAPTERS[spec.adapter].discover(spec, tmp_path)]
    assert all(isinstance(r, RecordRef) for r in refs) and len(refs) == 4
    assert {(r.patient, r.attributes["phase"]) for r in refs} == {
        ("patient001", "ED"), ("patient001", "ES"), ("patient101", "ED"), ("patient101", "ES")}
    assert all("Weight" not in r.attributes and "Height" not in r.attributes for r in refs)
    images, _ = run(spec, tmp_path)
    assert_direct_truth(images, truth)
    # a frame that is neither ED nor ES in Info.cfg is not an annotated frame: rejected with the reason
    d = tmp_path / "database" / "training" / "patient001"
    for suffix in ("", "_gt"):
        (d / f"patient001_frame05{suffix}.nii.gz").write_bytes((d / f"patient001_frame01{suffix}.nii.gz").read_bytes())
    _, rejects = run(spec, tmp_path)
    assert len(rejects) == 1 and "frame 5 is none of" in rejects[0].reason
    ing = ingest_sample(tmp_path / "ing", "acdc")
    rows = ing.table("images").to_pylist()
    assert {r["official_split"] for r in rows} == {"train", "test"}
    assert {json.loads(r["attributes"])["phase"] for r in rows} == {"ED", "ES"}


def test_msd_ct_labels_from_dataset_json_and_apple_double(tmp_path):
    truth = sv.write_msd_ct(tmp_path, np.random.default_rng(3))
    assert (tmp_path / "Task06_Lung" / "imagesTr" / "._lung_001.nii.gz").exists()
    # a task the catalog leaves out (MSD Liver duplicates LiTS) is ignored
    (tmp_path / "Task03_Liver").mkdir()
    (tmp_path / "Task03_Liver" / "dataset.json").write_text("{}")
    spec = load_catalog()["msd_ct"]
    images, rejects = run(spec, tmp_path)
    assert not rejects and len({im.source_path for im in images}) == 5
    assert_direct_truth(images, truth)
    assert not any("._" in im.source_path for im in images)
    pan = [r for im in images for r in im.rois if r.label == "Task07_Pancreas/cancer"]
    assert len(pan) == 2 and {r.parent for r in pan} == {"Task07_Pancreas/pancreas"}
    # renaming a label in dataset.json renames the reported label: names are never hard-coded
    js = json.loads((tmp_path / "Task09_Spleen" / "dataset.json").read_text())
    js["labels"]["1"] = "lien"
    (tmp_path / "Task09_Spleen" / "dataset.json").write_text(json.dumps(js))
    images, _ = run(spec, tmp_path)
    assert "Task09_Spleen/lien" in {r.label for im in images for r in im.rois}


def test_msd_json_bad_references(tmp_path):
    sv.write_msd_ct(tmp_path, np.random.default_rng(3))
    jp = tmp_path / "Task06_Lung" / "dataset.json"
    js = json.loads(jp.read_text())
    good = js["training"][0]
    js["training"] = [good, dict(good),  # duplicate id
                      {"image": "./imagesTr/lung_002.nii.gz", "label": "./labelsTr/lung_002.nii.gz"},  # missing
                      {"image": "../Task09_Spleen/imagesTr/spleen_001.nii.gz", "label": "./labelsTr/x.nii.gz"},
                      {"image": "./imagesTr/._lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"},  # twin
                      {"image": "./imagesTr/lung_001.nii.gz"}]
    jp.write_text(json.dumps(js))
    (tmp_path / "Task10_Colon" / "dataset.json").write_text("{not json")
    s, rej = ingest(load_catalog()["msd_ct"], tmp_path, tmp_path)
    reasons = " | ".join(r["reason"] for r in rej)
    for needle in ("duplicate record id", "file referenced but missing", "escapes", "without image/label",
                   "unusable dataset.json"):
        assert needle in reasons, reasons
    assert s.records_out == 4 and s.records_rejected == 5


def test_msd_prostate_4d_channels_normalised_separately(tmp_path):
    truth = sv.write_msd_prostate(tmp_path, np.random.default_rng(4))
    assert (tmp_path / "Task05_Prostate" / "imagesTr" / "._prostate_00.nii.gz").exists()
    images, rejects = run(load_catalog()["msd_prostate"], tmp_path)
    assert not rejects
    assert_direct_truth(images, truth)
    t2 = next(i for i in images if i.attributes["sequence"] == "T2")
    adc = next(i for i in images if i.attributes["sequence"] == "ADC" and i.slice_index == t2.slice_index)
    assert t2.window[1] < 500 < adc.window[1]  # per-channel percentiles
    assert [(r.label, r.box) for r in t2.rois] == [(r.label, r.box) for r in adc.rois]
    # a dataset.json naming fewer channels than the 4-D image holds is rejected
    jp = tmp_path / "Task05_Prostate" / "dataset.json"
    js = json.loads(jp.read_text())
    js["modality"] = {"0": "T2"}
    jp.write_text(json.dumps(js))
    images, rejects = run(load_catalog()["msd_prostate"], tmp_path)
    assert not images and "2 channels" in rejects[0].reason


def test_camus_2d_views_and_phases(tmp_path):
    truth = sv.write_camus(tmp_path, np.random.default_rng(5))
    images, rejects = run(load_catalog()["camus"], tmp_path)
    assert not rejects and len(images) == 4
    assert_direct_truth(images, truth)
    assert {(i.attributes["view"], i.attributes["phase"]) for i in images} == {
        ("2CH", "ED"), ("2CH", "ES"), ("4CH", "ED"), ("4CH", "ES")}
    assert all(i.pixels.shape == (64, 48) and i.intensity == "uint8" for i in images)
    assert all("Sex" not in i.attributes and "Age" not in i.attributes for i in images)


def _save_like(path: Path, arr, zooms=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(arr, np.diag([*zooms, 1.0])), str(path))


def test_bad_nifti_inputs_become_rejects(tmp_path):
    root = tmp_path / "kits"
    sv.write_kits23(root, np.random.default_rng(0))
    ds = root / "dataset"
    good = ds / "case_00000"
    vol = np.asanyarray(nib.load(str(good / "imaging.nii.gz")).dataobj)
    seg = np.asanyarray(nib.load(str(good / "segmentation.nii.gz")).dataobj)

    def case(name, image=None, label=None, image_bytes=None):
        d = ds / name
        d.mkdir()
        if image_bytes is not None:
            (d / "imaging.nii.gz").write_bytes(image_bytes)
        elif image is not None:
            _save_like(d / "imaging.nii.gz", image)
        if label is not None:
            _save_like(d / "segmentation.nii.gz", label)

    whole = (good / "imaging.nii.gz").read_bytes()
    case("case_00010", image_bytes=whole[: len(whole) // 2], label=seg)  # truncated gzip
    nan = vol.astype(np.float32) + 7  # other pixels than case_00000 (else a duplicate image)
    nan[3, 10, 10] = np.nan
    case("case_00011", image=nan, label=seg)  # one NaN voxel: background, counted (the NaN rule), not a reject
    case("case_00012", image=vol, label=seg[:, :40, :])  # image/label shape mismatch
    case("case_00013", image=vol)  # label file missing
    case("case_00014", image_bytes=b"this is not a NIfTI file at all", label=seg)  # corrupt
    case("case_00015", image=vol[0], label=seg[0])  # 2-D where 3-D (Z,Y,X) is required
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "imaging.nii.gz").write_bytes(whole)
    (ds / "case_00016").mkdir()
    os.symlink(outside / "imaging.nii.gz", ds / "case_00016" / "imaging.nii.gz")  # symlink out of the root
    (ds / "case_00016" / "segmentation.nii.gz").write_bytes((good / "segmentation.nii.gz").read_bytes())
    case("case_00017", image=vol, label=np.zeros_like(seg))  # empty mask: negatives only, still a record
    s, rej = ingest(load_catalog()["kits23"], root, tmp_path)
    by_key = {r["record_key"].split("/")[1]: r["reason"] for r in rej if r["level"] == "record"}
    assert "cannot read NIfTI" in by_key["case_00010"]
    assert "case_00011" not in by_key
    assert "label shape" in by_key["case_00012"]
    assert "missing" in by_key["case_00013"]
    assert "cannot read NIfTI" in by_key["case_00014"]
    assert "3-D array" in by_key["case_00015"]
    assert "outside the dataset root" in by_key["case_00016"]
    assert "case_00017" not in by_key
    assert s.records_in == 10 and s.records_out == 4 and s.records_rejected == 6
    images = pq.read_table(tmp_path / "out" / "kits23" / "images.parquet", columns=["record_key", "attributes"])
    nan_attrs = {r["record_key"]: json.loads(r["attributes"]).get("nan_voxels") for r in images.to_pylist()}
    assert {k.split("/")[1]: v for k, v in nan_attrs.items() if v} == {"case_00011": 1}


def test_label_map_with_nan_or_fractions_rejected(tmp_path):
    sv.write_lits(tmp_path, np.random.default_rng(0))
    p = tmp_path / "Training Batch 1" / "segmentation-0.nii"
    a = np.asanyarray(nib.load(str(p)).dataobj).astype(np.float32)
    a[0, 0, 0] = np.nan
    _save_like(p, a)
    p2 = tmp_path / "Training Batch 2" / "segmentation-28.nii"
    b = np.asanyarray(nib.load(str(p2)).dataobj).astype(np.float32) * 0.5
    _save_like(p2, b)
    images, rejects = run(load_catalog()["lits"], tmp_path)
    reasons = sorted(r.reason for r in rejects)
    assert len(reasons) == 2 and "NaN" in reasons[0] and "non-integer" in reasons[1]


def test_no_matching_files_is_a_dataset_error(tmp_path):
    spec = load_catalog()["kits23"]
    with pytest.raises(RecordError, match="no file matches"):
        list(ADAPTERS[spec.adapter].discover(spec, tmp_path))



def test_label_values_validated_without_copying_small_integer_maps():
    from medlvr.corpus.adapters.nifti import _labels_int
    from medlvr.corpus.records import RecordError

    lab = np.zeros((3, 4, 4), np.uint8)
    lab[0, 0, 0], lab[1, 1, 1] = 1, 4
    assert _labels_int(lab, "x", {1, 4}, True) is lab  # values 2, 3 are unnamed but absent: accepted as is
    lab[2, 2, 2] = 3
    with pytest.raises(RecordError, match=r"values \[3\]"):
        _labels_int(lab, "x", {1, 4}, True)
    neg = lab.astype(np.int16)
    neg[2, 2, 2] = -1
    with pytest.raises(RecordError, match=r"values \[-1\]"):
        _labels_int(neg, "x", {1, 4}, True)
    wide = np.full((2, 2, 2), 70000, np.int64)  # many unnamed values in range: the np.unique path
    wide[0, 0, 0] = 1
    with pytest.raises(RecordError, match=r"values \[70000\]"):
        _labels_int(wide, "x", {1}, True)
    assert _labels_int(np.array([[[1.0, 4.0]]]), "x", {1, 4}, True).dtype == np.int32
    many = np.array([[[0, 1, 7, 20]]], np.uint8)  # 18 unnamed values in range: the one-bincount path
    with pytest.raises(RecordError, match=r"values \[7\]"):
        _labels_int(many, "x", {1, 20}, True)


# ------------------------------------------------------------------ nibabel's own test files (issue 14, point 3)
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"  # ships inside the installed package: no network
NIBABEL_FILES = sorted(p.name for p in NIBABEL_DATA.iterdir() if p.name.endswith((".nii", ".nii.gz", ".hdr", ".mgz")))


def displayed(img) -> np.ndarray:
    """An image's array as the display convention shows it, computed with nibabel.orientations alone: x towards
    the patient's left, y towards posterior, the slice axis in its stored direction; as (Z, Y, X[, ...])."""
    from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    zcode = next(c for c in aff2axcodes(img.affine) if c in "SI")
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", zcode)))
    data = apply_orientation(np.asanyarray(img.dataobj), ornt)
    return np.swapaxes(data, 0, 2)


def test_display_convention_on_ras_and_lps_affines(tmp_path):
    """One convention from the affine, whatever the file's own: the same anatomy written with a RAS and an LPS
    affine (and with its axes permuted, as KiTS stores them) reads back as the same displayed slices."""
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, (12, 10, 8)).astype(np.int16)  # (x, y, z) in RAS order
    ras = np.diag([0.7, 0.8, 2.5, 1.0])
    lps = np.diag([-0.7, -0.8, 2.5, 1.0])
    perm = np.array([[0, 0, 0.7, 0], [0, 0.8, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])  # stored (z, y, x)
    files = {"ras.nii.gz": (vol, ras), "lps.nii.gz": (vol[::-1, ::-1, :], lps),
             "zyx.nii.gz": (vol.transpose(2, 1, 0), perm)}
    root = tmp_path / "o"
    (root / "files").mkdir(parents=True)
    for name, (arr, aff) in files.items():
        nib.save(nib.Nifti1Image(arr, aff), str(root / "files" / name))
    spec = spec_with("kits23", anchor_glob="files/*.nii.gz", anchor_regex=None, label=None, label_rules=[],
                     axis_order="XYZ", intensity="percentile", slices={"negatives_per_volume": 12})
    images, rejects = run(spec, root)
    assert not rejects
    got = {name: {i.slice_index: i.pixels for i in images if i.source_path == f"files/{name}"} for name in files}
    for name in files:
        want = displayed(nib.load(str(root / "files" / name)))
        assert got[name] and all(np.array_equal(p, want[z]) for z, p in got[name].items()), name
    # the same patient left is on the same image side in all three: compare with the RAS file's
    assert all(np.array_equal(got["lps.nii.gz"][z], got["ras.nii.gz"][z]) for z in got["ras.nii.gz"])
    # in the displayed slice, column 0 is the patient's right (RAS x index 11), row 0 anterior (y index 9)
    z = next(iter(got["ras.nii.gz"]))
    assert got["ras.nii.gz"][z][0, 0] == vol[11, 9, z]


def _nibabel_dataset(tmp_path: Path, **options):
    """nibabel's bundled NIfTI-1/2, Analyze/NIfTI pairs (headers without their .img), MGH and CIFTI files as an
    unlabelled dataset read with axis_order XYZ."""
    root = tmp_path / "nib"
    (root / "files").mkdir(parents=True)
    for name in NIBABEL_FILES:
        (root / "files" / name).write_bytes((NIBABEL_DATA / name).read_bytes())
    spec = spec_with("kits23", anchor_glob="files/*", anchor_regex=None, label=None, label_rules=[],
                     axis_order="XYZ", intensity="percentile", **options)
    return spec, root


def test_nibabel_test_files_decode_or_give_one_line_relative_reasons(tmp_path):
    assert {"example4d.nii.gz", "test.mgz", "analyze.hdr", "row_major.dconn.nii", "resampled_anat_moved.nii",
            "functional.nii", "anatomical.nii"} <= set(NIBABEL_FILES)
    spec, root = _nibabel_dataset(tmp_path)
    images, rejects = run(spec, root)
    reasons = {Path(r.source_path).name: r.reason for r in rejects}
    decoded = {Path(i.source_path).name for i in images}
    assert decoded | set(reasons) == set(NIBABEL_FILES) and not decoded & set(reasons)
    for name, why in reasons.items():
        assert "\n" not in why and str(tmp_path) not in why and "/work" not in why and "site-packages" not in why
        assert "Error" not in why, (name, why)  # no bare exception text (CIFTI used to give an AttributeError)
    # 4-D (NIfTI-1, NIfTI-2, MGH): the default rejects them and names the option that reads them
    for name in ("example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii", "test.mgz"):
        assert "4-D array" in reasons[name] and "volume_index" in reasons[name], reasons[name]
    # Analyze / NIfTI pairs shipped without their .img: the missing file, relative to the dataset root
    assert reasons["analyze.hdr"] == "cannot read NIfTI files/analyze.hdr: its data file files/analyze.img is missing"
    assert reasons["nifti1.hdr"].endswith("its data file files/nifti1.img is missing")
    assert reasons["row_major.dconn.nii"] == "files/row_major.dconn.nii is a Cifti2Image (not a voxel volume): " \
                                            "not supported"
    assert {"anatomical.nii", "standard.nii.gz", "resampled_anat_moved.nii"} <= decoded
    # NaN voxels (153 in the resampled volume) are background and counted
    nan_counts = {Path(i.source_path).name: i.attributes.get("nan_voxels") for i in images}
    assert nan_counts["resampled_anat_moved.nii"] == 153 and nan_counts["anatomical.nii"] is None
    assert all(np.isfinite(i.pixels).all() for i in images)


def test_volume_index_reads_one_volume_of_4d_files(tmp_path):
    spec, root = _nibabel_dataset(tmp_path, volume_index=1)
    images, rejects = run(spec, root)
    assert not [r for r in rejects if "4-D" in r.reason]
    for name in ("example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii", "test.mgz"):
        want = displayed(nib.load(str(NIBABEL_DATA / name)))[:, :, :, 1]  # (Z, Y, X, volume)
        got = [i for i in images if i.source_path == f"files/{name}"]
        assert got and all(np.array_equal(i.pixels, want[i.slice_index]) for i in got), name
    spec, root = _nibabel_dataset(tmp_path / "far", volume_index=7)
    _, rejects = run(spec, root)
    reasons = {Path(r.source_path).name: r.reason for r in rejects}
    assert "volume_index 7 is outside the 2 volumes" in reasons["example4d.nii.gz"]
    assert "functional.nii" not in reasons  # 20 volumes: index 7 exists


def test_4d_rule_names_the_option_for_a_4d_cine_and_channel_keeps_one(tmp_path):
    truth = sv.write_msd_prostate(tmp_path, np.random.default_rng(4))
    # MSD Prostate read as if its images were 3-D: the two stacked sequences make a 4-D array -> clear reject
    images, rejects = run(spec_with("msd_prostate", axis_order="XYZ"), tmp_path)
    assert not images and all("volume_index" in r.reason and "XYZC" in r.reason for r in rejects)
    images, rejects = run(spec_with("msd_prostate", channel="ADC"), tmp_path)
    assert not rejects and {i.attributes["sequence"] for i in images} == {"ADC"}
    assert_direct_truth(images, [dict(t, suffix=t["suffix"].replace("T2_", "ADC_")) for t in truth
                                 if t["suffix"].startswith("T2_")])
    _, rejects = run(spec_with("msd_prostate", channel="DWI"), tmp_path)
    assert rejects and "channel 'DWI' is not one of the channels ['ADC', 'T2']" in rejects[0].reason


def test_analyze_pair_with_its_img_reads(tmp_path):
    root = tmp_path / "ana"
    (root / "files").mkdir(parents=True)
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nib.save(nib.AnalyzeImage(vol, np.eye(4)), str(root / "files" / "vol.hdr"))
    assert (root / "files" / "vol.img").exists()
    spec = spec_with("kits23", anchor_glob="files/*.hdr", anchor_regex=None, label=None, label_rules=[],
                     axis_order="XYZ", intensity="percentile")
    images, rejects = run(spec, root)
    assert not rejects and images
    want = displayed(nib.load(str(root / "files" / "vol.hdr")))  # eye affine: x and y reversed for display
    assert all(np.array_equal(i.pixels, want[i.slice_index]) for i in images)


def test_reasons_never_carry_absolute_paths(tmp_path):
    from medlvr.corpus.adapters.nifti import _one_line

    root = tmp_path / "data"
    e = OSError(f"cannot open {root}/a/b.nii.gz\nand /usr/lib/other/thing.so either")
    assert _one_line(e, root) == "OSError: cannot open a/b.nii.gz and thing.so either"
