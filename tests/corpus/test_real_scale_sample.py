"""`medlvr sample-data OUT --scale real`: representative datasets written at the catalog's real size, dtype and
bit depth, checked by an independent parse (pydicom, nibabel, PIL, h5py, the YAML itself), and read by the normal
ingest with the miniature's truth boxes recovered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# a 12-bit DICOM X-ray, a NIfTI CT volume, a 16-bit PNG, a fundus JPEG, BraTS 4 sequences, fastMRI HDF5
DATASETS = ["vindr_cxr", "msd_ct", "deeplesion", "refuge", "brats2021", "fastmri_plus", "ham10000"]


def real_size(ds: str) -> dict:
    """The catalog figures, read from the YAML file itself (not through the catalog loader under test)."""
    return yaml.safe_load((REPO / "corpus" / "catalog" / f"{ds}.yaml").read_text())["real_size"]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real")
    medlvr = Path(sys.executable).with_name("medlvr")
    proc = subprocess.run([str(medlvr), "sample-data", str(out), "--scale", "real", "--datasets", *DATASETS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(DATASETS)} real-scale sample datasets" in proc.stdout
    return out


def test_every_catalog_entry_states_its_real_figures_and_their_source():
    for path in sorted((REPO / "corpus" / "catalog").glob("*.yaml")):
        r = yaml.safe_load(path.read_text()).get("real_size")
        assert r, f"{path.name} has no real_size"
        assert r["records"] >= 1 and len(r["source"]) > 20, path.name
        assert bool(r.get("volume")) != bool(r.get("height")), path.name


def test_dicom_xray_has_the_real_rows_columns_and_bits(real_root):
    import pydicom

    r = real_size("vindr_cxr")
    files = sorted((real_root / "vindr_cxr" / "train").glob("*.dicom"))
    assert files
    for f in files:
        ds = pydicom.dcmread(f)
        assert (ds.Rows, ds.Columns) == (r["height"], r["width"])
        assert ds.BitsStored == r["bits_stored"] == 12
        arr = ds.pixel_array
        assert arr.dtype == np.dtype(r["dtype"]) and int(arr.max()) < 1 << 12


def test_nifti_ct_volumes_have_the_real_shape_and_their_labels_no_new_objects(real_root):
    import nibabel as nib

    r = real_size("msd_ct")
    images = sorted((real_root / "msd_ct").glob("Task*/imagesTr/[!.]*.nii.gz"))
    assert images
    for f in images:
        img = nib.load(f)
        assert img.shape == tuple(r["volume"]) and img.get_data_dtype() == np.dtype(r["dtype"])
        lab = np.asarray(nib.load(str(f).replace("imagesTr", "labelsTr")).dataobj)
        assert lab.shape == tuple(r["volume"])
        nz = np.argwhere(lab > 0)
        # the miniature is 40x40x8: its image plane zoomed 12 times (512 // 40), then padded with background only
        assert len(nz) and (nz.max(axis=0) < (480, 480, 8)).all() and nz.max(axis=0)[:2].max() >= 40


def test_sixteen_bit_png_and_fundus_jpeg(real_root):
    from PIL import Image

    r = real_size("deeplesion")
    pngs = sorted((real_root / "deeplesion" / "Images_png").rglob("*.png"))
    for f in pngs:
        im = Image.open(f)
        assert im.mode.startswith("I;16") and im.size == (r["width"], r["height"])
    r = real_size("refuge")
    jpgs = sorted((real_root / "refuge").rglob("*.jpg"))
    assert jpgs
    for f in jpgs:
        im = Image.open(f)
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (r["width"], r["height"])


def test_brats_four_sequences_and_fastmri_hdf5(real_root):
    import h5py
    import nibabel as nib

    r = real_size("brats2021")
    case = next((real_root / "brats2021").glob("BraTS2021_*"))
    for seq in ("flair", "t1", "t1ce", "t2", "seg"):
        assert nib.load(case / f"{case.name}_{seq}.nii.gz").shape == tuple(r["volume"])
    r = real_size("fastmri_plus")
    files = sorted((real_root / "fastmri_plus").rglob("*.h5"))
    assert files
    for f in files:
        with h5py.File(f) as h:
            key = "reconstruction_rss" if "reconstruction_rss" in h else "reconstruction_esc"
            assert h[key].shape == tuple(r["volume"]) and h[key].dtype == np.dtype(r["dtype"])


def test_real_scale_data_goes_through_ingest_with_the_true_boxes(real_root, tmp_path):
    medlvr = Path(sys.executable).with_name("medlvr")
    proc = subprocess.run([str(medlvr), "ingest", "--data-root", str(real_root), "--out", str(tmp_path),
                           "--datasets", "vindr_cxr", "deeplesion", "ham10000", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq

    for ds in ("vindr_cxr", "deeplesion", "ham10000"):  # table boxes as drawn; mask boxes times the zoom
        truth = json.loads((real_root / "_truth" / f"{ds}.json").read_text())
        images = pq.read_table(tmp_path / ds / "images.parquet").to_pylist()
        rois = pq.read_table(tmp_path / ds / "rois.parquet").to_pylist()
        r = real_size(ds)
        assert images and all((im["orig_height"], im["orig_width"]) == (r["height"], r["width"]) for im in images)
        source = {im["image_id"]: im["source_path"] for im in images}
        want = sorted((t["source_path"], lb, tuple(round(v, 1) for v in b)) for t in truth for lb, b in t["boxes"])
        got = sorted((source[x["image_id"]], x["label"], tuple(round(v, 1) for v in x["box_orig"])) for x in rois)
        assert got == want
    # ham10000's masks were zoomed with their images: its truth is the miniature's truth times the zoom, which is
    # the largest integer that fits 80x60 into the real 600x450 (7)
    mini = json.loads(subprocess.run([sys.executable, "-c", "import json,tempfile,pathlib;"
                                      "from medlvr.corpus.sample_data import write_samples, load_truth;"
                                      "d=tempfile.mkdtemp(); write_samples(pathlib.Path(d), ['ham10000']);"
                                      "print(json.dumps(load_truth(d, 'ham10000')))"],
                                     capture_output=True, text=True, check=True).stdout)
    real = json.loads((real_root / "_truth" / "ham10000.json").read_text())
    assert [[[lb, [v * 7 for v in b]] for lb, b in t["boxes"]] for t in mini] == [t["boxes"] for t in real]
