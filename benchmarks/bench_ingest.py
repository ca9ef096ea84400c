"""Ingestion throughput and memory, against a plain single-process baseline measured in the same run.

Writes scaled-up data in three native formats (PIL: BUSI PNG pairs; DICOM: RSNA 1024x1024 + CSV; NIfTI: LiTS
uncompressed 512x512x128 volumes by default, `--nifti-size`), then, each in a fresh subprocess so peak RSS
is its own:
  baseline      plain load (PIL / pydicom / nibabel) -> numpy normalise -> PIL resize -> PNG encode, one process
  MONAI         the medical-imaging community's peer: MONAI `LoadImage` -> `ScaleIntensityRange` -> `Resize`
                (longest side 512, bilinear) -> PNG encode on the same files and slices, one process, one torch
                thread; a benchmark-only dependency (`pip install -e .[bench]`), skipped with a note when absent
  medlvr w=1    `ingest_dataset` single process (adds discovery, ROIs, hashing, validation, Parquet)
  medlvr w=2    the same with 2 worker processes
  medlvr 1x     a tenth of the data, to compare peak RSS (memory must stay flat as input grows)
Prints images/s per family and the ratios (ours / MONAI: goal >= 1). The generated data takes about 10 GB (7.8 GB of it the CT volumes;
`--nifti-size 256 48` for toy volumes, 0.7 GB) under --work, default a temporary folder. Usage:
  python benchmarks/bench_ingest.py [--scale 1.0] [--work DIR] [--families pil dicom nifti] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FAMILIES = {"pil": "busi", "dicom": "rsna_pneumonia", "nifti": "lits"}


# ----------------------------------------------------------------------------------------------- data writers
def write_busi(root: Path, n: int, rng) -> None:
    from PIL import Image

    for i in range(1, n + 1):
        cls = ("benign", "malignant")[i % 2]
        d = root / "Dataset_BUSI_with_GT" / cls
        d.mkdir(parents=True, exist_ok=True)
        img = np.clip(60 + 25 * rng.standard_normal((500, 560)), 0, 255).astype(np.uint8)
        mask = np.zeros((500, 560), np.uint8)
        y, x = rng.integers(50, 350), rng.integers(50, 400)
        mask[y:y + 80, x:x + 100] = 255
        img[mask > 0] = 30
        Image.fromarray(img).convert("RGB").save(d / f"{cls} ({i}).png")
        Image.fromarray(mask).save(d / f"{cls} ({i})_mask.png")


def write_rsna(root: Path, n: int, rng) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    d = root / "stage_2_train_images"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pid = f"{i:08x}-0000-4000-8000-{i:012x}"
        arr = np.clip(90 + 40 * rng.standard_normal((1024, 1024)), 0, 255).astype(np.uint8)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.Modality = pid, "CR"
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = arr.tobytes()
        ds.save_as(d / f"{pid}.dcm", enforce_file_format=True)
        x, y = int(rng.integers(100, 700)), int(rng.integers(100, 700))
        rows.append([pid, x, y, 150, 200, 1])
    with open(root / "stage_2_train_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientId", "x", "y", "width", "height", "Target"])
        w.writerows(rows)


def write_lits(root: Path, n_volumes: int, rng, side: int = 512, z: int = 128) -> None:
    """LiTS-layout volumes (int16 CT, uint8 labels: liver with two tumours, scaled with the volume)."""
    import nibabel as nib

    d = root / "Training Batch 1"
    d.mkdir(parents=True, exist_ok=True)
    f, fz = side / 256, z / 48
    for i in range(n_volumes):
        vol = (rng.normal(40, 20, (side, side, z))).astype(np.int16)
        seg = np.zeros((side, side, z), np.uint8)
        seg[int(60 * f):int(200 * f), int(60 * f):int(190 * f), int(8 * fz):int(40 * fz)] = 1
        for k, (cx, cy) in enumerate([(90, 100), (150, 160)]):
            cx, cy = int(cx * f), int(cy * f)
            seg[cx - int(15 * f):cx + int(15 * f), cy - int(12 * f):cy + int(12 * f),
                int((12 + 10 * k) * fz):int((22 + 10 * k) * fz)] = 2
        aff = np.diag([0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(vol, aff), d / f"volume-{i}.nii")
        nib.save(nib.Nifti1Image(seg, aff), d / f"segmentation-{i}.nii")


def write_family(family: str, root: Path, n_images: int, seed: int = 0, nifti_size=(512, 128)) -> None:
    rng = np.random.default_rng(seed)
    if family == "pil":
        write_busi(root, n_images, rng)
    elif family == "dicom":
        write_rsna(root, n_images, rng)
    else:
        write_lits(root, max(1, n_images // 8), rng, *nifti_size)


# ---------------------------------------------------------------------------------------------- the baseline
def _resize_encode(a8: np.ndarray, max_side: int = 512) -> bytes:
    from PIL import Image

    im = Image.fromarray(a8)
    s = max_side / max(im.size)
    if s < 1:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _minmax8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)


def baseline(family: str, root: Path) -> int:
    """Plain loop over the image files; returns the number of PNGs encoded."""
    count = 0
    if family == "pil":
        from PIL import Image

        for p in sorted(root.rglob("*).png")):
            _resize_encode(np.asarray(Image.open(p).convert("L")))
            count += 1
    elif family == "dicom":
        import pydicom

        for p in sorted(root.rglob("*.dcm")):
            _resize_encode(_minmax8(pydicom.dcmread(p).pixel_array))
            count += 1
    else:
        import nibabel as nib

        for p in sorted(root.rglob("volume-*.nii")):
            vol = np.asarray(nib.load(p).dataobj)
            seg = np.asarray(nib.load(p.with_name(p.name.replace("volume", "segmentation"))).dataobj)
            zs = np.flatnonzero(seg.any(axis=(0, 1)))
            for z in zs[:: max(1, len(zs) // 8)][:8]:  # 8 slices, as many as the pipeline keeps here
                win = np.clip(vol[:, :, z].astype(np.float32), -150, 250)
                _resize_encode(((win + 150) * (255 / 400)).astype(np.uint8))
                count += 1
    return count


def monai_available() -> bool:
    return importlib.util.find_spec("monai") is not None


def monai_baseline(family: str, root: Path) -> int:
    """The same files and slices as `baseline`, through MONAI's transforms; returns the number of PNGs encoded.
    Intensity ranges: 0..255 for the 8-bit PNGs and DICOMs, the abdomen window -150..250 HU for the CT slices
    (the plain baseline's)."""
    from monai.data import NibabelReader, PILReader, PydicomReader
    from monai.transforms import LoadImage, Resize, ScaleIntensityRange

    resize = Resize(spatial_size=512, size_mode="longest", mode="bilinear")

    def encode(chw) -> None:  # [1, H, W] in 0..255 -> PNG; shrunk only when larger than 512, as the baseline
        if max(chw.shape[1:]) > 512:
            chw = resize(chw)
        _resize_encode(np.asarray(chw)[0].astype(np.uint8), max_side=10**9)

    count = 0
    if family in ("pil", "dicom"):
        reader = PILReader(converter=lambda im: im.convert("L")) if family == "pil" else PydicomReader()
        load = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        scale = ScaleIntensityRange(a_min=0, a_max=255, b_min=0, b_max=255, clip=True)
        for p in sorted(root.rglob("*).png" if family == "pil" else "*.dcm")):
            encode(scale(load(p)))
            count += 1
    else:
        load = LoadImage(reader=NibabelReader(), image_only=True)
        scale = ScaleIntensityRange(a_min=-150, a_max=250, b_min=0, b_max=255, clip=True)
        for p in sorted(root.rglob("volume-*.nii")):
            vol = load(p)
            seg = np.asarray(load(p.with_name(p.name.replace("volume", "segmentation"))))
            zs = np.flatnonzero(seg.any(axis=(0, 1)))
            for z in zs[:: max(1, len(zs) // 8)][:8]:
                encode(scale(vol[None, :, :, z]))
                count += 1
    return count


# ------------------------------------------------------------------------------------------------ the child
def child(args) -> None:
    # imports before the clock starts, for both sides: we compare per-image work, not interpreter start-up
    # (pandas: pyarrow imports it lazily on the first row conversion, a one-off 0.3 s)
    import nibabel  # noqa: F401
    import pandas  # noqa: F401
    import pydicom  # noqa: F401
    import pyarrow  # noqa: F401
    from PIL import Image  # noqa: F401

    from medlvr.corpus.catalog import load_catalog
    from medlvr.corpus.ingest import IngestConfig, ingest_dataset
    from medlvr.corpus.volumes import SliceConfig

    if args.mode == "monai":
        import monai  # noqa: F401
        import torch

        torch.set_num_threads(1)  # one process, one core: as the plain baseline and `ours, 1 process`
    t0 = time.perf_counter()
    if args.mode == "baseline":
        n = baseline(args.family, Path(args.root))
    elif args.mode == "monai":
        n = monai_baseline(args.family, Path(args.root))
    else:
        spec = load_catalog()[FAMILIES[args.family]]
        # volumes: the same number of slices per volume as the baseline writes (8), so images/s compare like work
        slices = SliceConfig(max_slices_per_volume=8, negatives_per_volume=0)
        s = ingest_dataset(spec, Path(args.root), Path(args.out),
                           IngestConfig(workers=args.workers, patient_salt="b", slices=slices))
        n = s.images_out
        assert s.records_rejected == 0, s
    dt = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"images": n, "seconds": dt, "rss_self_mb": self_kb / 1024, "rss_child_mb": kids_kb / 1024}))


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"] + [f"--{k}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate (the peak RSS of the largest run)."""
    ordered = sorted(runs, key=lambda r: r["images"] / r["seconds"])
    return {**ordered[len(ordered) // 2], "rss_self_mb": max(r["rss_self_mb"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--mode", default="medlvr")
    ap.add_argument("--family")
    ap.add_argument("--root")
    ap.add_argument("--out")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the image counts (1.0: 2,400 images)")
    ap.add_argument("--work", help="folder for the generated data (default: a temporary folder)")
    ap.add_argument("--nifti-size", type=int, nargs=2, default=(512, 128), metavar=("SIDE", "SLICES"),
                    help="NIfTI volume size (default 512 128: a LiTS CT is 512x512 with 75-987 slices; "
                         "256 48 is a quick toy size)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median rate is reported")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = ap.parse_args()
    if args.child:
        return child(args)
    counts = {"pil": int(1000 * args.scale), "dicom": int(800 * args.scale), "nifti": int(600 * args.scale)}
    counts = {f: n for f, n in counts.items() if f in args.families}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    print(f"data under {work}")
    with_monai = monai_available()
    if not with_monai:
        print("MONAI is not installed (pip install -e .[bench]): the MONAI peer baseline is skipped")
    results = {}
    for fam, n in counts.items():
        tag = fam if fam != "nifti" else "nifti_{}x{}".format(*args.nifti_size)  # one folder per volume size
        big, small = work / f"{tag}_10x", work / f"{tag}_1x"
        if not big.exists():
            write_family(fam, big, n, seed=1, nifti_size=args.nifti_size)
            write_family(fam, small, max(1, n // 10), seed=2, nifti_size=args.nifti_size)
        runs = {"base": [], "w1": [], "w2": [], "monai": []}
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every side alike
            runs["base"].append(run_child(mode="baseline", family=fam, root=big))
            if with_monai:
                runs["monai"].append(run_child(mode="monai", family=fam, root=big))
            runs["w1"].append(run_child(mode="medlvr", family=fam, root=big, out=work / "out_w1", workers=1))
            runs["w2"].append(run_child(mode="medlvr", family=fam, root=big, out=work / "out_w2", workers=2))
        base, w1, w2 = (median_run(runs[k]) for k in ("base", "w1", "w2"))
        s1 = run_child(mode="medlvr", family=fam, root=small, out=work / "out_1x", workers=1)
        results[fam] = dict(base=base, w1=w1, w2=w2, small=s1, monai=median_run(runs["monai"]) if with_monai else None)
    print(f"\n{'family':<7} {'images':>6} {'baseline/s':>10} {'w1/s':>7} {'w2/s':>7} {'w1/base':>8} {'w2/w1':>6} "
          f"{'RSS 1x MB':>9} {'RSS 10x MB':>10} {'10x/1x':>6} {'MONAI/s':>8} {'w1/MONAI':>8}")
    for fam, r in results.items():
        rate = {k: r[k]["images"] / r[k]["seconds"] for k in ("base", "w1", "w2")}
        rss_ratio = r["w1"]["rss_self_mb"] / r["small"]["rss_self_mb"]
        peer = "{:>8} {:>8}".format("-", "-")
        if r["monai"]:
            assert r["monai"]["images"] == r["base"]["images"], r  # the same images on both sides
            m = r["monai"]["images"] / r["monai"]["seconds"]
            peer = f"{m:>8.1f} {rate['w1'] / m:>8.2f}"
        print(f"{fam:<7} {r['w1']['images']:>6} {rate['base']:>10.1f} {rate['w1']:>7.1f} {rate['w2']:>7.1f} "
              f"{rate['w1'] / rate['base']:>8.2f} {rate['w2'] / rate['w1']:>6.2f} {r['small']['rss_self_mb']:>9.0f} "
              f"{r['w1']['rss_self_mb']:>10.0f} {rss_ratio:>6.2f} {peer}")
    tot_imgs = sum(r["w1"]["images"] for r in results.values())
    print(f"\ntotal images at 10x: {tot_imgs}; w2 workers' peak RSS (largest child) "
          + ", ".join(f"{f}: {r['w2']['rss_child_mb']:.0f} MB" for f, r in results.items()))


if __name__ == "__main__":
    main()
