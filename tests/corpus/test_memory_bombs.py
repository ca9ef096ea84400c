"""Issue 15 (2): memory bombs. Readers check declared sizes against the record limit (`max_record_bytes`) before
they read, decompression never inflates past the declared size, and a MemoryError costs one record, not the
dataset. Peak memory is measured in a fresh subprocess with resource.getrusage (ru_maxrss)."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import zlib

import h5py
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.fastmri import read_volume
from medlvr.corpus.adapters.images import read_2d, read_pil
from medlvr.corpus.adapters.nifti import read_nifti
from medlvr.corpus.catalog import CatalogError, load_catalog, parse_spec
from medlvr.corpus.config import ConfigError, build_config
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.limits import DEFAULT_MAX_RECORD_BYTES, charge, inflate_bounded, record_limit
from medlvr.corpus.mhd import read_mhd
from medlvr.corpus.records import RecordError
from medlvr.corpus.sample_data import write_samples

MIB = 1 << 20
LIMIT = 256 * MIB  # the record limit of the measured runs
# what a rejected bomb may cost above the baseline of the measuring process: far less than LIMIT (the other,
# legitimate records of the sample dataset are decoded and encoded in the same run)
BUDGET = 64 * MIB

_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import h5py, nibabel, numpy, pydicom, PIL.Image  # heavy imports before the baseline
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.ingest import IngestConfig, ingest_dataset

    root, out, dataset, limit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        s = ingest_dataset(load_catalog()[dataset], root, out,
                           IngestConfig(patient_salt="t", workers=1, max_record_bytes=limit))
        result = {"summary": s.as_dict()}
    except BaseException as e:  # today's code: the dataset dies
        result = {"error": type(e).__name__}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(result, delta_kib=peak - base)))
""")


def _measure(root, out, dataset, limit=LIMIT) -> dict:
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(root), str(out), dataset, str(limit)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _rejects(out, dataset) -> list[dict]:
    return pq.read_table(out / dataset / "rejects.parquet").to_pylist()


def zlib_zero_bomb(n: int) -> bytes:
    """A zlib stream that inflates to n zero bytes (n a multiple of 16 MiB), built in well under a second: one
    raw deflate block of 16 MiB zeros ended by a full flush (byte aligned, no back-reference across it) repeated,
    an empty final block, and the Adler-32 of the whole."""
    chunk = 16 * MIB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    adler, zeros = 1, bytes(chunk)
    for _ in range(n // chunk):
        adler = zlib.adler32(zeros, adler)
    return b"\x78\xda" + block * (n // chunk) + end + adler.to_bytes(4, "big")


def test_the_bomb_helper_builds_a_valid_stream():
    data = zlib_zero_bomb(32 * MIB)
    assert len(data) < 100_000 and zlib.decompress(data) == bytes(32 * MIB)


# ---------------------------------------------------------------- the two bombs of the issue, measured

def test_mhd_zlib_stream_of_1_gib_costs_far_less_than_the_limit(tmp_path):
    write_samples(tmp_path / "data", ["retouch"], seed=0)
    root = tmp_path / "data" / "retouch"
    case = root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001"
    header = (case / "oct.mhd").read_text()
    assert "CompressedData = False" in header  # the sample's DimSize stays: a small declared size
    (case / "oct.mhd").write_text(header.replace("CompressedData = False", "CompressedData = True"))
    (case / "oct.raw").write_bytes(zlib_zero_bomb(1 << 30))  # inflates to 1 GiB
    got = _measure(root, tmp_path / "out", "retouch")
    assert "summary" in got, got
    assert got["delta_kib"] * 1024 < BUDGET, f"peak grew by {got['delta_kib'] / 1024:.0f} MiB"
    s = got["summary"]
    assert s["records_out"] == 1 and s["records_rejected"] == 1
    (bad,) = [r for r in _rejects(tmp_path / "out", "retouch") if r["level"] == "record"]
    assert bad["source_path"] == "RETOUCH-TrainingSet-Cirrus/TRAIN001/oct.mhd"
    assert "inflates past the declared" in bad["reason"] and "oct.raw" in bad["reason"]


def test_hdf5_declaring_64x40000x40000_is_rejected_before_any_read(tmp_path):
    write_samples(tmp_path / "data", ["fastmri_plus"], seed=0)
    root = tmp_path / "data" / "fastmri_plus"
    bomb = root / "knee_multicoil_val" / "file1000001.h5"
    bomb.unlink()
    with h5py.File(bomb, "w") as f:  # chunked and never written: a file of a few KB declaring 409.6 GB
        f.create_dataset("reconstruction_rss", shape=(64, 40000, 40000), dtype="f4", chunks=(1, 500, 500))
    assert bomb.stat().st_size < 100_000
    got = _measure(root, tmp_path / "out", "fastmri_plus")
    assert "summary" in got, got  # today's code: MemoryError, the dataset dies
    assert got["delta_kib"] * 1024 < BUDGET, f"peak grew by {got['delta_kib'] / 1024:.0f} MiB"
    s = got["summary"]
    assert s["records_rejected"] == 1 and s["records_out"] == s["records_in"] - 1
    (bad,) = [r for r in _rejects(tmp_path / "out", "fastmri_plus") if r["level"] == "record"]
    assert bad["source_path"] == "knee_multicoil_val/file1000001.h5"
    assert "64x40000x40000" in bad["reason"] and "max_record_bytes" in bad["reason"]
    assert str(LIMIT) in bad["reason"]


# ---------------------------------------------------------------- every reader checks the declared size first

def _png_bomb(path, side=20000):
    """A real PNG header declaring side x side grey pixels, with a one-row stream (never decoded that far)."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(side + 1)))
                     + chunk(b"IEND", b""))


def test_png_declared_size_over_the_limit(tmp_path):
    _png_bomb(tmp_path / "bomb.png", 8000)  # 64 M pixels: under PIL's own bomb limit, over ours
    with record_limit(32 * MIB), pytest.raises(RecordError, match=r"bomb.png: 8000x8000 L image declares "
                                                                  r"64000000 bytes .*max_record_bytes"):
        read_pil(tmp_path / "bomb.png")
    with pytest.raises(RecordError, match="bomb.png"):  # past PIL's own limit: a reject too
        _png_bomb(tmp_path / "bomb.png", 40000)
        read_pil(tmp_path / "bomb.png")


def test_dicom_declared_size_over_the_limit(tmp_path):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 40000, 40000, 64
    ds.save_as(tmp_path / "bomb.dcm")
    with record_limit(LIMIT), pytest.raises(RecordError, match=r"bomb.dcm: 40000x40000, 64 frame\(s\) .*over the "
                                                               r"record limit of 268435456 bytes"):
        read_2d(tmp_path / "bomb.dcm")


def test_nifti_header_shape_over_the_limit(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    hdr = img.header.copy()
    hdr.set_data_shape((30000, 30000, 64))  # NIfTI-1 dims are int16
    raw = hdr.binaryblock + b"\0" * (int(hdr["vox_offset"]) - len(hdr.binaryblock)) + bytes(128)
    (tmp_path / "bomb.nii").write_bytes(raw)
    with record_limit(LIMIT), pytest.raises(RecordError, match=r"bomb.nii: header shape 30000x30000x64 of int16 "
                                                               r"declares 115200000000 bytes"):
        read_nifti(tmp_path, "bomb.nii")


def test_metaimage_dimsize_over_the_limit_and_bounded_inflation(tmp_path):
    (tmp_path / "big.mhd").write_text("NDims = 3\nDimSize = 40000 40000 64\nElementType = MET_SHORT\n"
                                      "CompressedData = True\nElementDataFile = big.zraw\n")
    (tmp_path / "big.zraw").write_bytes(zlib.compress(bytes(1000)))
    with record_limit(LIMIT), pytest.raises(RecordError, match=r"big.mhd: DimSize 40000x40000x64 of int16 declares"):
        read_mhd(tmp_path, "big.mhd")
    with pytest.raises(RecordError, match="inflates past the declared 100 bytes"):
        inflate_bounded(zlib.compress(bytes(101)), 100, "x")
    with pytest.raises(RecordError, match="decompressed data is 99 bytes but the header declares 100"):
        inflate_bounded(zlib.compress(bytes(99)), 100, "x")
    assert inflate_bounded(zlib.compress(bytes(100)), 100, "x") == bytes(100)


def test_hdf5_reads_its_declared_shape_only_after_the_check(tmp_path):
    data = np.zeros((2, 300, 400), np.float32)
    data[1, 0, :] = np.arange(400)
    with h5py.File(tmp_path / "v.h5", "w") as f:  # compressed: the file is far smaller than its data
        f.create_dataset("reconstruction_rss", data=data, compression="gzip", chunks=(1, 300, 400))
    vol, _ = read_volume(tmp_path / "v.h5")
    assert np.array_equal(vol, data[:, ::-1, :])
    assert (tmp_path / "v.h5").stat().st_size < data.nbytes - 1
    with record_limit(data.nbytes - 1), pytest.raises(RecordError, match="v.h5: reconstruction_rss of shape "
                                                                         "2x300x400 .as float32. declares 960000"):
        read_volume(tmp_path / "v.h5")


def test_charges_add_up_over_one_record():
    with record_limit(100):
        charge(60, "a")
        with pytest.raises(RecordError, match="with 60 bytes already read for this record"):
            charge(41, "b")
    with record_limit(100):  # a new record starts with a fresh budget
        charge(100, "c")


def test_annotation_files_larger_than_the_limit_are_not_opened(tmp_path):
    write_samples(tmp_path / "data", ["vindr_cxr"], seed=0)
    root = tmp_path / "data" / "vindr_cxr"
    size = (root / "train.csv").stat().st_size
    s = ingest_dataset(load_catalog()["vindr_cxr"], root, tmp_path / "out",
                       IngestConfig(patient_salt="t", max_record_bytes=size - 1))
    assert s.records_out == 0 and s.records_rejected == s.records_in == 1
    (r,) = _rejects(tmp_path / "out", "vindr_cxr")
    assert r["record_key"] == "<dataset>" and r["reason"].startswith(f"train.csv: file is {size} bytes")


# ---------------------------------------------------------------- the limit's configuration

def test_the_limit_is_an_ingest_config_key_and_a_catalog_entry_may_raise_it(tmp_path):
    assert IngestConfig().max_record_bytes == DEFAULT_MAX_RECORD_BYTES
    assert build_config(IngestConfig, {"max_record_bytes": 1234}).max_record_bytes == 1234
    with pytest.raises(ConfigError, match="max_record_bytes must be a positive number"):
        build_config(IngestConfig, {"max_record_bytes": 0})
    write_samples(tmp_path / "data", ["busi"], seed=0)
    root = tmp_path / "data" / "busi"
    spec = load_catalog()["busi"]
    tiny = IngestConfig(patient_salt="t", max_record_bytes=1000)
    s = ingest_dataset(spec, root, tmp_path / "a", tiny)
    assert s.records_out == 0 and all("max_record_bytes" in r["reason"] for r in _rejects(tmp_path / "a", "busi"))
    raised = dataclasses.replace(spec, max_record_bytes=64 * MIB)  # what `max_record_bytes:` in busi.yaml does
    s = ingest_dataset(raised, root, tmp_path / "b", tiny)
    # every record read: the one rejected is the sample's conflicting duplicate, not a record over the limit
    assert s.records_out == s.records_in - 1 > 0
    assert all("max_record_bytes" not in r["reason"] for r in _rejects(tmp_path / "b", "busi"))
    raw = {k: getattr(spec, k) for k in ("id", "name", "modality", "body_region", "adapter", "labels",
                                          "patient_key", "licence", "citation", "homepage")}
    assert parse_spec(dict(raw, layout=list(spec.layout), max_record_bytes=5000)).max_record_bytes == 5000
    with pytest.raises(CatalogError, match="max_record_bytes must be a positive number of bytes"):
        parse_spec(dict(raw, layout=list(spec.layout), max_record_bytes="2G"))


def test_memory_error_in_one_record_rejects_that_record_only(tmp_path, monkeypatch):
    write_samples(tmp_path / "data", ["busi"], seed=0)
    spec = load_catalog()["busi"]
    adapter = ADAPTERS[spec.adapter]
    victim = []

    def load(spec, root, ref):
        if not victim:
            victim.append(ref.key)
            raise MemoryError()
        return adapter.load(spec, root, ref)

    monkeypatch.setitem(ADAPTERS, adapter.name, dataclasses.replace(adapter, load=load))
    s = ingest_dataset(spec, tmp_path / "data" / "busi", tmp_path / "out", IngestConfig(patient_salt="t"))
    assert s.records_rejected == 1 and s.records_out == s.records_in - 1
    (r,) = [r for r in _rejects(tmp_path / "out", "busi") if r["level"] == "record"]
    assert r["record_key"] == victim[0] and r["stage"] == "load"
    assert r["reason"] == (f"out of memory while loading the record (record limit {DEFAULT_MAX_RECORD_BYTES} "
                           f"bytes, max_record_bytes)")
