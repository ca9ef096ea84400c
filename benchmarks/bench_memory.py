"""Peak memory of one ingest worker at the real datasets' largest sizes (issue 25 §2), this code against a baseline
commit measured in the same run.

For each volume family one record is written at the size of the largest real volumes of the catalog, in the
catalog's layout (the bundled sample's other records stay: they are tiny), and `ingest_dataset` (workers=1: the
records are read in the measuring process, as in one worker) runs it in a fresh subprocess that prints its peak
RSS (VmHWM of /proc/self/status: the process's high-water mark, heap and touched file pages; ru_maxrss is not
used because Linux carries the parent's value over fork + exec). The same
subprocess runs once with the baseline's `corpus/` first on sys.path (a `git archive` of `--baseline`) and once
with this checkout's; the ratio is printed per family.

  family        file(s) written                                           real dataset it stands for
  lits          volume-0.nii 512x512x987 int16 scaled + segmentation .nii  LiTS, the longest CT (987 slices)
  kits23        imaging.nii.gz 611x512x512 int16 scaled + seg .nii.gz      KiTS23, ~611 slices

(scaled: stored as HU + 1024 with scl_inter -1024, as CT converters often write; an unscaled int16 .nii is
memory-mapped by nibabel on both sides and costs the same: 408 MiB for the LiTS shape, see RESULTS.md)
  brats2021     4 x 240x240x155 int16 .nii.gz + seg                        BraTS 2021 (4 sequences)
  fastmri_plus  multi-coil .h5: kspace 16x16x640x368 complex64 + rss 16x320x320 float32   fastMRI brain
  vindr_cxr     3000x3000 16-bit (12 stored) DICOM                          VinDr-CXR / 3000x3000 X-rays
  retouch       Cirrus oct.raw 128x1024x512 uint8 MetaImage + reference    RETOUCH Cirrus OCT
  lidc_idri     a DICOM series of 500 slices of 512x512 int16                LIDC-IDRI CT series

Then (unless --families leaves out "headers") the header rejects: a header-legal 12000 x 12000 PNG, JPEG, BMP,
a TIFF whose second page declares it, and a DICOM (the files of tests/corpus/test_header_rejects.py, KB on disk),
each read by `read_2d` in a fresh subprocess on both sides: peak RSS growth and whether it was rejected.

  python benchmarks/bench_memory.py [--baseline REV] [--families lits kits23 ... headers] [--keep DIR]

Prints one row per family: peak RSS (MiB) baseline / this code, their ratio, and records out. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

_RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import h5py, nibabel, numpy, pydicom, PIL.Image, scipy.ndimage  # imports before the baseline
    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.ingest import IngestConfig, ingest_dataset
    import medlvr.corpus.ingest as ingest_module

    root, out, dataset = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    def hwm_kib():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's peak over fork + exec)
        return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])

    base = hwm_kib()
    s = ingest_dataset(load_catalog()[dataset], root, out, IngestConfig(patient_salt="bench", workers=1))
    peak = hwm_kib()
    print(json.dumps({"peak_kib": peak, "base_kib": base, "records_out": s.records_out,
                      "records_rejected": s.records_rejected, "images": s.images_out,
                      "code": ingest_module.__file__}))
""")


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _ct_slices(nz: int, ny: int, nx: int, seed: int) -> np.ndarray:
    """(nz, ny, nx) int16 HU: air, a body ellipse of soft tissue with noise."""
    rng = np.random.default_rng(seed)
    body = _ellipsoid((ny, nx), (ny / 2, nx / 2), (ny * 0.4, nx * 0.45))
    vol = np.full((nz, ny, nx), -1000, np.int16)
    noise = rng.normal(0, 20, (ny, nx)).astype(np.int16)
    for z in range(nz):
        vol[z][body] = 40 + np.roll(noise, z, axis=0)[body]
    return vol


def make_lits(root: Path) -> None:
    import nibabel as nib

    d = root / "Training Batch 1"
    nz, ny, nx = 987, 512, 512
    vol = _ct_slices(nz, ny, nx, 0)
    lab = np.zeros((nz, ny, nx), np.uint8)
    lab[300:700, 150:350, 140:360][_ellipsoid((400, 200, 220), (200, 100, 110), (190, 95, 105))] = 1
    lab[480:520, 250:280, 250:285] = 2
    # stored as HU + 1024 with scl_inter -1024: nibabel hands out the scaled volume as float64 (2 GB here)
    write_scaled_nifti(d / "volume-0.nii", (vol + 1024).transpose(2, 1, 0), 1.0, -1024.0)  # on disk X, Y, Z
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab.transpose(2, 1, 0)), np.eye(4)), d / "segmentation-0.nii")


def write_scaled_nifti(path: Path, raw: np.ndarray, slope: float, inter: float) -> None:
    """A NIfTI-1 (gzipped for .nii.gz) of `raw`, in its on-disk axis order, with scl_slope/scl_inter set
    (nibabel's writer would choose its own scaling)."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(raw.shape)
    hdr.set_data_dtype(raw.dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr["scl_slope"], hdr["scl_inter"], hdr["vox_offset"] = slope, inter, 352
    with (gzip.open(path, "wb", compresslevel=1) if path.name.endswith(".gz") else open(path, "wb")) as f:
        f.write(hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock)))
        for z in range(raw.shape[2]):  # Fortran order, one plane at a time
            f.write(np.ascontiguousarray(raw[:, :, z].T).tobytes())


def make_kits23(root: Path) -> None:
    import nibabel as nib

    d = root / "dataset" / "case_00000"
    nz, ny, nx = 611, 512, 512
    vol = _ct_slices(nz, ny, nx, 1)
    lab = np.zeros((nz, ny, nx), np.uint8)
    lab[200:330, 200:280, 150:210][_ellipsoid((130, 80, 60), (65, 40, 30), (60, 38, 28))] = 1
    lab[200:330, 200:280, 150:210][_ellipsoid((130, 80, 60), (65, 40, 30), (20, 15, 12))] = 2
    # stored as HU + 1024 with scl_inter -1024, as converters often write CT: nibabel hands out scaled values
    write_scaled_nifti(d / "imaging.nii.gz", vol + 1024, 1.0, -1024.0)  # KiTS stores (slices, H, W)
    nib.save(nib.Nifti1Image(lab, np.eye(4)), d / "segmentation.nii.gz")


def make_brats2021(root: Path) -> None:
    import nibabel as nib

    d = root / "BraTS2021_00000"
    shape = (240, 240, 155)
    brain = _ellipsoid(shape, (120, 120, 77), (90, 100, 60))
    rng = np.random.default_rng(2)
    for i, seq in enumerate(("flair", "t1", "t1ce", "t2")):
        vol = np.zeros(shape, np.int16)
        vol[brain] = rng.normal(400 + 100 * i, 80, int(brain.sum())).clip(1, 4000).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([-1, -1, 1, 1.0])), d / f"BraTS2021_00000_{seq}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    seg[_ellipsoid(shape, (140, 110, 80), (25, 20, 15))] = 2
    seg[_ellipsoid(shape, (140, 110, 80), (12, 10, 8))] = 1
    seg[_ellipsoid(shape, (140, 110, 80), (6, 5, 4))] = 4
    nib.save(nib.Nifti1Image(seg, np.diag([-1, -1, 1, 1.0])), d / "BraTS2021_00000_seg.nii.gz")


def make_fastmri_plus(root: Path) -> None:
    import h5py

    path = root / "brain_multicoil_val" / "file_brain_AXFLAIR_200_6002425.h5"
    with h5py.File(path, "r") as f:
        keep = {k: f[k][()] for k in f if k not in ("kspace", "reconstruction_rss")}
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        k = f.create_dataset("kspace", (16, 16, 640, 368), np.complex64, chunks=(1, 16, 640, 368))
        block = (rng.normal(size=(16, 640, 368)) + 1j * rng.normal(size=(16, 640, 368))).astype(np.complex64)
        for z in range(16):
            k[z] = block
        rss = np.abs(rng.normal(1e-4, 3e-5, (16, 320, 320))).astype(np.float32)
        f.create_dataset("reconstruction_rss", data=rss)
        for name, v in keep.items():
            f.create_dataset(name, data=v)


def make_vindr_cxr(root: Path) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    path = sorted((root / "train").glob("*.dicom"))[0]
    ds = pydicom.dcmread(path)
    arr = (np.add.outer(np.arange(3000), np.arange(3000)) % 4096).astype(np.uint16)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3000, 3000, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_retouch(root: Path) -> None:
    case = root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001"
    dims = (512, 1024, 128)  # DimSize x y z: Cirrus 512 A-scans x 1024 depth x 128 B-scans
    rng = np.random.default_rng(4)
    oct_ = rng.integers(0, 255, dims[::-1], dtype=np.uint8)
    ref = np.zeros(dims[::-1], np.uint8)
    ref[60:70, 400:460, 200:260] = 1
    for name, arr in (("oct", oct_), ("reference", ref)):
        header = (case / f"{name}.mhd").read_text().splitlines()
        header = [f"DimSize = {dims[0]} {dims[1]} {dims[2]}" if ln.startswith("DimSize") else
                  "CompressedData = False" if ln.startswith("CompressedData") else ln
                  for ln in header if not ln.startswith("CompressedDataSize")]
        (case / f"{name}.mhd").write_text("\n".join(header) + "\n")
        (case / f"{name}.raw").write_bytes(arr.tobytes())


def make_lidc_idri(root: Path, n_slices: int = 500) -> None:
    """The sample's CT series grown to n_slices of 512 x 512 int16 (LIDC-IDRI series run to several hundred
    slices); the XML's nodules stay on the sample's slices, the new slices continue the stack."""
    import pydicom
    from pydicom.uid import generate_uid

    series = next(p.parent for p in root.glob("LIDC-IDRI/*/*CT*/*/*.xml"))
    files = sorted(series.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    zs = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    step = zs[1] - zs[0]
    img = _ct_slices(1, 512, 512, 5)[0] + 1024  # stored values; RescaleIntercept -1024
    for i in range(n_slices):
        ds = pydicom.dcmread(files[i]) if i < len(files) else first.copy()
        if i >= len(files):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [float(v) for v in first.ImagePositionPatient[:2]] + [zs[-1] + step * (i - len(files) + 1)]
            ds.InstanceNumber = i + 1
        ds.Rows = ds.Columns = 512
        ds.PixelData = img.astype(np.int16).tobytes()
        ds.save_as(files[i] if i < len(files) else series / f"1-{i + 1:03d}.dcm")


FAMILIES = {"lits": make_lits, "kits23": make_kits23, "brats2021": make_brats2021,
            "fastmri_plus": make_fastmri_plus, "vindr_cxr": make_vindr_cxr, "retouch": make_retouch,
            "lidc_idri": make_lidc_idri}


_HEADER_RUN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy, pydicom, PIL.Image
    from medlvr.corpus.adapters.images import read_2d
    from medlvr.corpus.records import RecordError

    def hwm_kib():
        return int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")).split()[1])

    path = Path(sys.argv[1])
    base = hwm_kib()
    try:
        read_2d(path, root=path.parent)
        reason = None
    except RecordError as e:
        reason = e.reason
    print(json.dumps({"delta_kib": hwm_kib() - base, "reason": reason}))
""")


def bench_headers(work: Path, old: Path) -> None:
    sys.path.insert(0, str(REPO))
    from tests.corpus.test_header_rejects import WRITERS  # the test's header-legal 12000 x 12000 files

    d = work / "headers"
    d.mkdir(exist_ok=True)
    print(f"\n{'header reject':<14}{'old growth MiB':>16}{'new growth MiB':>16}  old outcome -> new outcome")
    for name, write in WRITERS.items():
        write(d / name)
        got = {}
        for side, path in (("old", old), ("new", None)):
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if path is not None:
                env["PYTHONPATH"] = str(path)
            r = subprocess.run([sys.executable, "-c", _HEADER_RUN, str(d / name)], capture_output=True, text=True,
                               env=env, timeout=600)
            got[side] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {
                "delta_kib": float("nan"), "reason": f"exit {r.returncode}"}

        def outcome(g):
            reason = g["reason"]
            return "decoded" if reason is None else ("pixel limit" if "max_image_pixels" in reason else reason[:60])

        print(f"{name:<14}{got['old']['delta_kib'] / 1024:>16.1f}{got['new']['delta_kib'] / 1024:>16.1f}  "
              f"{outcome(got['old'])} -> {outcome(got['new'])}", flush=True)


def baseline_tree(rev: str, dest: Path) -> Path:
    """`corpus/` of commit `rev` as an importable medlvr.corpus under dest (PYTHONPATH wins over the editable
    install's finder)."""
    (dest / "medlvr").mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "corpus"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest / "medlvr")], input=archive.stdout, check=True)
    return dest


def measure(root: Path, out: Path, dataset: str, pythonpath: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, "-c", _RUN, str(root), str(out), dataset], capture_output=True, text=True,
                       env=env, timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from medlvr.corpus.sample_data import write_samples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="commit whose corpus/ is the old path (default: main)")
    ap.add_argument("--families", nargs="+", default=[*FAMILIES, "headers"], choices=[*FAMILIES, "headers"])
    ap.add_argument("--keep", type=Path, help="write the files here and keep them (default: a temp dir)")
    a = ap.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        old = baseline_tree(a.baseline, work / "baseline")
        print(f"baseline {a.baseline}: {subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', a.baseline], capture_output=True, text=True).stdout.strip()}; "
              f"this code: {REPO}")
        print(f"{'family':<14}{'old peak MiB':>14}{'new peak MiB':>14}{'new/old':>9}{'records out':>13}  (import baseline MiB)")
        for fam in (f for f in a.families if f != "headers"):
            data = work / "data"
            shutil.rmtree(data, ignore_errors=True)
            write_samples(data, [fam], seed=0)
            FAMILIES[fam](data / fam)
            got = {side: measure(data / fam, work / "out", fam, path) for side, path in (("old", old), ("new", None))}
            if any("error" in g for g in got.values()):
                print(f"{fam:<14} failed: {got}")
                continue
            o, n = got["old"], got["new"]
            print(f"{fam:<14}{o['peak_kib'] / 1024:>14.0f}{n['peak_kib'] / 1024:>14.0f}"
                  f"{n['peak_kib'] / o['peak_kib']:>9.2f}{o['records_out']:>6} /{n['records_out']:>5}"
                  f"  ({o['base_kib'] / 1024:.0f} / {n['base_kib'] / 1024:.0f})", flush=True)
            assert "baseline" in o["code"] and "baseline" not in n["code"], (o["code"], n["code"])
        if "headers" in a.families:
            bench_headers(work, old)
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
