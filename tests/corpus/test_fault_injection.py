"""Issue 15: fault injection over every reader family, on a copy of the bundled sample data.

For each of the 31 sample datasets (every adapter; DICOM, NIfTI, MetaImage, HDF5, PNG, JPEG, BMP, TIFF images,
LIDC series, DeepLesion 16-bit PNGs, paired masks) the first record's image file is damaged in six ways: truncated,
garbage bytes, empty, another format, a declared-size bomb and a symlink out of the root. Then, for the annotation
files (VOC/Aperio/LIDC XML, CSV tables, COCO and list JSON, RLE tables, MSD dataset.json, TN3K folds, key-value
sidecars) garbage, empty, another format, a cut and a file over the size limit. Each run must complete, reject the
damaged record (or the dataset, for a table every record needs) with a whole reason naming the file, reconcile its
counts (read + rejected = discovered) and leave every undamaged record exactly as the pristine run wrote it.
"""

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, discover, ingest_dataset, with_slice_options
from medlvr.corpus.sample_data import write_samples

LIMIT = 64 << 20  # record limit of every run here (the samples are far smaller)
CFG = IngestConfig(patient_salt="fault-injection", workers=1, max_record_bytes=LIMIT)
DATASETS = list(load_catalog())
IMAGE_FAULTS = ("truncated", "garbage", "empty", "wrong_format", "size_bomb", "path_escape")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The sample data of every dataset, and each dataset's pristine run (ingested on first use)."""
    data = tmp_path_factory.mktemp("pristine")
    write_samples(data / "data", DATASETS, seed=0)
    runs: dict[str, dict] = {}

    def run(dataset: str) -> dict:
        if dataset not in runs:
            runs[dataset] = _run(dataset, data / "data" / dataset, data / "out")
        return runs[dataset]

    run.root = data / "data"
    return run


def _run(dataset: str, root: Path, out: Path) -> dict:
    s = ingest_dataset(load_catalog()[dataset], root, out, CFG)
    folder = out / dataset
    images = pq.read_table(folder / "images.parquet").drop_columns(["png"]).to_pylist()
    return {"summary": s, "images": images, "rois": pq.read_table(folder / "rois.parquet").to_pylist(),
            "rejects": pq.read_table(folder / "rejects.parquet").to_pylist()}


def _victim(dataset: str, root: Path) -> tuple[str, str]:
    """(record key, relative path of its image file) of the first record the adapter discovers."""
    refs, _ = discover(with_slice_options(load_catalog()[dataset], CFG), root)
    ref = refs[0]
    if "slices" in (ref.annotations or {}) and isinstance(ref.annotations, dict):  # LIDC: a series folder
        return ref.key, ref.annotations["slices"][0]
    role = "image" if "image" in ref.paths else sorted(r for r in ref.paths if r.startswith("image"))[0]
    return ref.key, ref.paths[role]


# ---------------------------------------------------------------- the faults

def _png_header_bomb(side: int = 9000) -> bytes:
    """A real PNG declaring side x side grey pixels (81 MB at 9000, over LIMIT), whose data stream holds one row."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(side + 1)))
            + chunk(b"IEND", b""))


def _size_bomb(path: Path) -> None:
    """The same format, its header declaring far more than the record limit; the file itself stays small."""
    name = path.name.lower()
    if name.endswith((".dcm", ".dicom")):
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns, ds.NumberOfFrames = 30000, 30000, 8
        ds.save_as(path)
    elif name.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        hdr = img.header.copy()
        hdr.set_data_shape((30000, 30000, 64))
        hdr["vox_offset"] = 352  # a single-file NIfTI-1: 348 header bytes, 4 extension-flag bytes, the data
        raw = hdr.binaryblock + bytes(4) + bytes(4096)
        path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    elif name.endswith(".mhd"):
        text = path.read_text()
        lines = [ln for ln in text.splitlines() if not ln.startswith(("DimSize", "CompressedData", "NDims"))]
        data = [ln for ln in lines if ln.startswith("ElementDataFile")][0].split("=", 1)[1].strip()
        lines.insert(0, "NDims = 3\nDimSize = 40000 40000 64\nCompressedData = True")
        path.write_text("\n".join(lines) + "\n")
        (path.parent / data).write_bytes(zlib.compress(bytes(1000)))
    elif name.endswith(".h5"):
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_dataset("reconstruction_rss", shape=(64, 40000, 40000), dtype="f4", chunks=(1, 500, 500))
    else:  # PIL formats: PIL identifies the file by its content, whatever the suffix
        path.write_bytes(_png_header_bomb())


def _inject(fault: str, path: Path, outside: Path) -> None:
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "garbage":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, max(len(data), 64), dtype=np.uint8).tobytes())
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "wrong_format":
        path.write_bytes(b'{"this": "is JSON, not an image or a table"}\n' * 4)
    elif fault == "png_instead":
        path.write_bytes(_png_header_bomb(16))
    elif fault == "size_bomb":
        _size_bomb(path)
    elif fault == "over_limit":  # a sparse file one byte over the record limit: no reader opens it
        os.truncate(path, LIMIT + 1)
    elif fault == "cut":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif fault == "path_escape":
        outside.mkdir(exist_ok=True)
        shutil.move(path, outside / path.name)
        os.symlink(outside / path.name, path)
    else:
        raise ValueError(fault)


def _undamaged_unchanged(before: dict, after: dict, damaged_keys: set[str]) -> None:
    """Every image and ROI row of a record that was not damaged is exactly as in the pristine run."""
    def rows(run, table):
        record_of = {i["image_id"]: i["record_key"] for i in run["images"]}
        return sorted(repr(sorted(r.items())) for r in run[table] if record_of[r["image_id"]] not in damaged_keys)

    assert rows(after, "images") == rows(before, "images")
    assert rows(after, "rois") == rows(before, "rois")


def _check(before: dict, after: dict, rel: str, keys: set[str], tmp_path: Path) -> None:
    s = after["summary"]
    assert s.records_in == s.records_out + s.records_rejected  # read + rejected = discovered
    dataset_level = [r for r in after["rejects"] if r["record_key"] == "<dataset>"]
    # a dataset whose only anchor file was refused also fails as a whole ("no file matches"): one row more
    assert s.records_in == before["summary"].records_in + len(dataset_level)
    name = Path(rel).name
    hits = [r for r in after["rejects"] if r["level"] == "record" and (name in r["reason"] or rel in r["reason"])]
    assert hits, f"no record reject names {rel}: {[r['reason'] for r in after['rejects']]}"
    for r in after["rejects"]:
        assert "\n" not in r["reason"] and str(tmp_path) not in r["reason"] and not r["source_path"].startswith("/")
    keys |= {r["record_key"] for r in hits}
    assert not [i for i in after["images"] if i["record_key"] in keys], "a damaged record was published"
    # a record the pristine run rejected as a pixel twin of the damaged one (the BUSI sample's conflicting
    # duplicate) is published once its twin is gone: it is not one of the records that must stay unchanged
    twins = {r["record_key"] for r in before["rejects"] if r["level"] == "record" and r["stage"] == "dedup"}
    _undamaged_unchanged(before, after, keys | twins)


@pytest.mark.parametrize("fault", IMAGE_FAULTS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_damaged_image_file(pristine, tmp_path, dataset, fault):
    before = pristine(dataset)
    root = tmp_path / "data" / dataset
    shutil.copytree(pristine.root / dataset, root, symlinks=True)
    key, rel = _victim(dataset, root)
    _inject(fault, root / rel, tmp_path / "outside")
    after = _run(dataset, root, tmp_path / "out")
    _check(before, after, rel, {key}, tmp_path)
    if fault == "size_bomb":
        (hit,) = [r for r in after["rejects"] if r["level"] == "record" and Path(rel).name in r["reason"]]
        assert "max_record_bytes" in hit["reason"] or "decompression-bomb" in hit["reason"], hit["reason"]
    if fault == "path_escape":
        assert any("outside the dataset root" in r["reason"] for r in after["rejects"])


# (dataset, annotation file, faults that must be detected). A CSV cut at any byte is still a CSV (fewer rows),
# so cuts are injected into XML and JSON only; `<dataset>` marks a table every record needs: its damage is a
# dataset-level reject naming it, with no record written.
ANNOTATION_CASES = [
    ("bccd", "BCCD/Annotations/BloodImage_00000.xml", "xml"),  # VOC XML, one per record
    ("monuseg", "MoNuSeg 2018 Training Data/Annotations/TCGA-18-5592-01Z-00-DX1.xml", "xml"),  # Aperio XML
    ("lidc_idri", "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-CT CHEST-30178/3000566.000000-NA-03192/069.xml", "xml"),
    ("livecell", "livecell_coco_train.json", "json"),  # COCO
    ("chestx_det", "ChestX_Det_train.json", "json"),  # a JSON list of records
    ("msd_ct", "Task06_Lung/dataset.json", "json"),
    ("tn3k", "tn3k/tn3k-trainval-fold0.json", "folds"),  # every record's cross-validation fold comes from them
    ("vindr_cxr", "train.csv", "csv"),
    ("rsna_pneumonia", "stage_2_train_labels.csv", "csv"),
    ("nih_bbox", "BBox_List_2017.csv", "csv"),
    ("oct5k", "Detection/all_bounding_boxes.csv", "csv"),
    ("deeplesion", "DL_info.csv", "csv"),
    ("siim_acr", "train-rle.csv", "csv"),  # RLE
    ("dsb2018", None, "csv"),  # RLE (the table named by the catalog)
    ("fastmri_plus", "Annotations/knee.csv", "csv"),
    ("ph2", "PH2Dataset/PH2_dataset.txt", "csv"),
    ("acdc", "database/testing/patient101/Info.cfg", "cfg"),
]
ANNOTATION_FAULTS = {"xml": ("garbage", "empty", "wrong_format", "cut", "over_limit", "path_escape"),
                     "json": ("garbage", "empty", "png_instead", "cut", "over_limit", "path_escape"),
                     "csv": ("garbage", "empty", "png_instead", "over_limit", "path_escape"),
                     "cfg": ("garbage", "empty", "png_instead", "over_limit", "path_escape"),
                     "folds": ("garbage", "empty", "png_instead", "cut", "over_limit", "path_escape")}


def _annotation_rel(dataset: str, rel: str | None) -> str:
    return rel or load_catalog()[dataset].options["table"]


@pytest.mark.parametrize("dataset,rel,fault", [(d, r, f) for d, r, kind in ANNOTATION_CASES
                                               for f in ANNOTATION_FAULTS[kind]],
                         ids=lambda v: Path(v).name if isinstance(v, str) else str(v))
def test_damaged_annotation_file(pristine, tmp_path, dataset, rel, fault):
    before = pristine(dataset)
    rel = _annotation_rel(dataset, rel)
    root = tmp_path / "data" / dataset
    shutil.copytree(pristine.root / dataset, root, symlinks=True)
    _inject(fault, root / rel, tmp_path / "outside")
    after = _run(dataset, root, tmp_path / "out")
    s = after["summary"]
    assert s.records_in == s.records_out + s.records_rejected
    name = Path(rel).name
    hits = [r for r in after["rejects"] if name in r["reason"] or r["source_path"] == rel]
    assert hits, f"no reject names {rel}: {[r['reason'] for r in after['rejects']]}"
    for r in after["rejects"]:
        assert "\n" not in r["reason"] and str(tmp_path) not in r["reason"] and not r["source_path"].startswith("/")
    # the records that still came out are exactly as before; the damaged file's records did not
    damaged = {r["record_key"] for r in hits}
    if "<dataset>" in damaged:
        damaged |= {i["record_key"] for i in before["images"]}
        assert not after["images"]
    assert not [i for i in after["images"] if i["record_key"] in damaged]
    out_keys = {i["record_key"] for i in after["images"]}
    lost = {i["record_key"] for i in before["images"]} - out_keys
    if rel.endswith("fold0.json") and fault == "path_escape":
        # the refused fold file is not there: the records lose that fold's attribute, their pixels and boxes stay
        keep = lambda run: sorted((i["record_key"], i["image_id"]) for i in run["images"])  # noqa: E731
        assert keep(after) == keep(before) and len(after["rois"]) == len(before["rois"])
        return
    _undamaged_unchanged(before, after, damaged | lost)
    assert out_keys <= {i["record_key"] for i in before["images"]}
