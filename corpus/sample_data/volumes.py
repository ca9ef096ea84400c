"""Sample writers for the volume datasets: NIfTI (KiTS23, LiTS, MSD CT, BraTS, ACDC, MSD Prostate, CAMUS 2023)
and MetaImage (RETOUCH, CAMUS legacy), in each dataset's native layout, with the quirks of docs/datasets.md §8:
KiTS arrays stored (Z,Y,X) with a non-RAS affine, MSD 4-D (X,Y,Z,2) with dataset.json and `._` AppleDouble
twins, two separate components of a child class inside its parent class, MET_UCHAR and MET_USHORT MetaImages.

Truth: for the key (largest-area) slice of every 3-D instance, every box on that slice, computed here from the
synthetic label map (in (Z,Y,X) before it is written in the file's own axis order) with the dataset's own
label coding written out below, independently of the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from medlvr.corpus.sample_data import register_sample_writers, synth

_EIGHT, _CUBE = np.ones((3, 3), bool), np.ones((3, 3, 3), bool)


def ellipsoid(shape_zyx, c, r) -> np.ndarray:
    zz, yy, xx = np.ogrid[0:shape_zyx[0], 0:shape_zyx[1], 0:shape_zyx[2]]
    return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1.0


def display_flips(affine: np.ndarray, disk_order: str = "XYZ") -> tuple[bool, bool]:
    """Whether the display convention (x towards the patient's left, y towards posterior; docs/datasets.md,
    "Orientation") reverses the x and the y axis of a NIfTI written with this affine and on-disk axis order:
    from nibabel's own orientation of the affine, not from the adapter."""
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(affine)  # per on-disk axis, the direction it increases towards: R/L, A/P, S/I
    flip = {disk_order[i]: codes[i] in ("R", "A") for i in range(3)}
    return flip["X"], flip["Y"]


DEFAULT_AFFINE = np.eye(4)  # what _nifti writes without one: on-disk x towards R, y towards A (flipped for display)


def key_truth(labels, rules, source_path, suffix_fmt="z{z:04d}", sequences=None, sources=None,
              flips: tuple[bool, bool] = (False, False)) -> list[dict]:
    """Truth dicts for the key slice of each 3-D instance. rules: [(label, values, instances)]. `flips` (x, y):
    the boxes as displayed, for a NIfTI whose axes the display convention reverses (display_flips)."""
    h, w = labels.shape[1:]

    def shown(b):
        x0, y0, x1, y1 = b
        if flips[0]:
            x0, x1 = w - x1, w - x0
        if flips[1]:
            y0, y1 = h - y1, h - y0
        return [float(x0), float(y0), float(x1), float(y1)]

    keys: set[int] = set()
    for _, values, instances in rules:
        m = np.isin(labels, values)
        lab, n = ndimage.label(m, _CUBE) if instances else (m.astype(int), int(m.any()))
        for i in range(1, n + 1):
            keys.add(int(np.argmax((lab == i).sum(axis=(1, 2)))))
    out = []
    for z in sorted(keys):
        boxes = []
        for label, values, instances in rules:
            lab2, n2 = ndimage.label(np.isin(labels[z], values), _EIGHT)
            comps = [lab2 == i for i in range(1, n2 + 1) if (lab2 == i).sum() >= 16]
            if not instances and comps:  # one structure: one box over its pieces (docs/datasets.md §6.1)
                comps = [np.logical_or.reduce(comps)]
            boxes += [[label, shown(synth.box(comp))] for comp in comps]
        for seq in sequences or [None]:
            sfx = f"{seq}_z{z:04d}" if seq else suffix_fmt.format(z=z)
            out.append({"source_path": (sources or {}).get(seq, source_path), "suffix": sfx, "boxes": boxes})
    return out


def _nifti(path: Path, arr: np.ndarray, zooms=(1.0, 1.0, 1.0), affine=None) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*(tuple(zooms[:3]) + (1.0,) * (3 - len(zooms[:3]))), 1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def write_mhd(mhd: Path, arr_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), etype="MET_UCHAR",
              compressed=False, msb=False, data_name: str | None = None, dims=None) -> None:
    """A MetaImage header + raw file; `dims` overrides DimSize (to write a wrong one in tests)."""
    mhd.parent.mkdir(parents=True, exist_ok=True)
    dt = {"MET_UCHAR": "u1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_FLOAT": "f4"}[etype]
    raw = np.ascontiguousarray(arr_zyx.astype(np.dtype(dt).newbyteorder(">" if msb else "<"))).tobytes()
    if compressed:
        import zlib

        raw = zlib.compress(raw)
    data_name = data_name or mhd.with_suffix(".raw").name
    d = dims or list(arr_zyx.shape[::-1])
    hdr = ["ObjectType = Image", f"NDims = {len(d)}", "BinaryData = True",
           f"BinaryDataByteOrderMSB = {'True' if msb else 'False'}",
           f"CompressedData = {'True' if compressed else 'False'}",
           f"DimSize = {' '.join(str(v) for v in d)}", f"ElementType = {etype}",
           f"ElementSpacing = {' '.join(str(v) for v in spacing_xyz[:len(d)])}", f"ElementDataFile = {data_name}"]
    if compressed:
        hdr.insert(5, f"CompressedDataSize = {len(raw)}")
    mhd.write_text("\n".join(hdr) + "\n")
    (mhd.parent / data_name).write_bytes(raw)


def _ct(shape_zyx, rng) -> np.ndarray:
    vol = np.stack([synth.body_ct(shape_zyx[1], shape_zyx[2], rng) for _ in range(shape_zyx[0])])
    return np.clip(vol, -1000, 400)


def _mri(shape_zyx, rng, scale) -> np.ndarray:
    return np.stack([synth.body_mri(shape_zyx[1], shape_zyx[2], rng, scale) for _ in range(shape_zyx[0])])


def _xyz(a_zyx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(a_zyx, (2, 1, 0)))


# ----------------------------------------------------------------------------------------------- CT
KITS_RULES = [("kidney", [1, 2, 3], True), ("kidney mass", [2, 3], True), ("kidney tumor", [2], True),
              ("kidney cyst", [3], True)]


def write_kits23(root: Path, rng) -> list[dict]:
    shape = (10, 48, 48)
    truth, meta = [], []
    for case, with_masses in (("case_00000", True), ("case_00001", False)):
        lab = np.zeros(shape, np.uint8)
        lab[ellipsoid(shape, (5, 24, 13), (4, 10, 7))] = 1  # right kidney
        lab[ellipsoid(shape, (4, 24, 35), (3.5, 9, 6))] = 1  # left kidney
        if with_masses:  # two separate tumours (class 2) inside one kidney (class 1), a cyst in the other
            lab[ellipsoid(shape, (5, 19, 13), (2, 3, 3))] = 2
            lab[ellipsoid(shape, (5, 29, 13), (2, 3, 3))] = 2
            lab[ellipsoid(shape, (4, 24, 35), (2, 3, 3))] = 3
        else:  # a quirk of real label maps: a 19-voxel cyst of 9, 6 and 4 px a slice, under the 2-D speck size
            # (16 px) on every slice: its mass and cyst objects are rejects with their size (they used to vanish)
            lab[3, 23:26, 34:37], lab[4, 23:26, 34:36], lab[5, 23:25, 34:36] = 3, 3, 3
        vol = _ct(shape, rng)
        vol[lab == 1], vol[lab == 2], vol[lab == 3] = 160.0, 60.0, 10.0
        d = root / "dataset" / case
        # KiTS stores (num_slices, H, W): axial is axis 0, and the affine is a permuted, non-RAS one.
        aff = np.array([[0, 0, -0.78, 0], [0, -0.78, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
        _nifti(d / "imaging.nii.gz", vol.astype(np.int16), affine=aff)
        _nifti(d / "segmentation.nii.gz", lab, affine=aff)
        truth += key_truth(lab, KITS_RULES, f"dataset/{case}/imaging.nii.gz", flips=display_flips(aff, "ZYX"))
        meta.append({"case_id": case, "tumor_histologic_subtype": "clear_cell_rcc" if with_masses else None})
    (root / "dataset" / "kits23.json").write_text(json.dumps(meta))
    return truth


def write_lits(root: Path, rng) -> list[dict]:
    shape = (8, 48, 48)
    rules = [("liver", [1, 2], False), ("liver tumor", [2], True)]
    truth = []
    for batch, n in (("Training Batch 1", 0), ("Training Batch 2", 28)):
        lab = np.zeros(shape, np.uint8)
        lab[ellipsoid(shape, (4, 22, 20), (4, 12, 14))] = 1
        lab[ellipsoid(shape, (4, 17, 14), (2, 3, 3))] = 2  # two separate tumours inside the liver
        lab[ellipsoid(shape, (3, 26, 27), (2, 3, 4))] = 2
        vol = _ct(shape, rng)
        vol[lab == 1], vol[lab == 2] = 110.0, 30.0
        _nifti(root / batch / f"volume-{n}.nii", _xyz(vol).astype(np.int16), (0.7, 0.7, 2.5))
        _nifti(root / batch / f"segmentation-{n}.nii", _xyz(lab), (0.7, 0.7, 2.5))
        truth += key_truth(lab, rules, f"{batch}/volume-{n}.nii", flips=display_flips(DEFAULT_AFFINE))
    return truth


# task folder -> (dataset.json labels, structures [(value, centre zyx, radii zyx)], HU per value)
MSD_CT_TASKS = {
    "Task06_Lung": ({"0": "background", "1": "cancer"}, [(1, (4, 16, 14), (2, 4, 4))], {1: 20.0}),
    "Task07_Pancreas": ({"0": "background", "1": "pancreas", "2": "cancer"},
                        [(1, (4, 20, 20), (3, 6, 14)), (2, (4, 20, 12), (2, 3, 3)), (2, (4, 20, 28), (2, 3, 3))],
                        {1: 90.0, 2: 40.0}),
    "Task08_HepaticVessel": ({"0": "background", "1": "Vessel", "2": "Tumour"},
                             [(1, (4, 14, 20), (3, 2, 12)), (2, (4, 28, 24), (2, 4, 5))], {1: 200.0, 2: 50.0}),
    "Task09_Spleen": ({"0": "background", "1": "spleen"}, [(1, (4, 20, 26), (3, 8, 6))], {1: 120.0}),
    "Task10_Colon": ({"0": "background", "1": "colon cancer primaries"}, [(1, (4, 24, 16), (2, 4, 5))],
                     {1: 70.0}),
}
MSD_CT_QUALIFY = {"Task07_Pancreas/pancreas": [1, 2]}  # pancreas ⊇ cancer
MSD_CT_ORGANS = {"Task07_Pancreas/pancreas", "Task09_Spleen/spleen", "Task08_HepaticVessel/Vessel"}


def _msd_json(d: Path, labels: dict, cases: list[str], modality: dict, tensor: str) -> None:
    js = {"name": d.name.split("_", 1)[1], "description": "sample", "reference": "", "licence": "CC-BY-SA 4.0",
          "release": "1.0", "tensorImageSize": tensor, "modality": modality, "labels": labels,
          "numTraining": len(cases), "numTest": 0,
          "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
          "test": []}
    (d / "dataset.json").write_text(json.dumps(js, indent=1))


def _apple_double(path: Path) -> None:
    """The `._name` resource-fork twin macOS tar leaves next to every file: not a NIfTI at all."""
    (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\0" * 40)


def write_msd_ct(root: Path, rng) -> list[dict]:
    shape = (8, 40, 40)
    truth = []
    for task, (labels, structs, hu) in MSD_CT_TASKS.items():
        d = root / task
        case = f"{task.split('_', 1)[1].lower()}_001"
        lab = np.zeros(shape, np.uint8)
        for v, c, r in structs:
            lab[ellipsoid(shape, c, r)] = v
        vol = _ct(shape, rng)
        for v, h in hu.items():
            vol[lab == v] = h
        img = d / "imagesTr" / f"{case}.nii.gz"
        _nifti(img, _xyz(vol).astype(np.int16), (0.8, 0.8, 2.5))
        _nifti(d / "labelsTr" / f"{case}.nii.gz", _xyz(lab), (0.8, 0.8, 2.5))
        _apple_double(img)
        _msd_json(d, labels, [case], {"0": "CT"}, "3D")
        rules = []
        for code, name in labels.items():
            if code != "0":
                raw = f"{task}/{name}"
                rules.append((raw, MSD_CT_QUALIFY.get(raw, [int(code)]), raw not in MSD_CT_ORGANS))
        truth += key_truth(lab, rules, f"{task}/imagesTr/{case}.nii.gz", flips=display_flips(DEFAULT_AFFINE))
    return truth


# ----------------------------------------------------------------------------------------------- MRI
def write_brats2021(root: Path, rng, release: str = "2021") -> list[dict]:
    shape = (8, 48, 48)
    et = 4 if release == "2021" else 3  # BraTS 2023 GLI codes enhancing tumour as 3
    lab = np.zeros(shape, np.uint8)
    lab[ellipsoid(shape, (4, 24, 22), (3, 10, 9))] = 2  # oedema
    lab[ellipsoid(shape, (4, 20, 18), (1.5, 3, 3))] = et  # enhancing tumour
    lab[ellipsoid(shape, (4, 28, 27), (1.5, 3, 3))] = 1  # necrotic core, a second tumour-core component
    rules = [("whole tumor", [1, 2, et], True), ("tumor core", [1, et], True), ("enhancing tumor", [et], True)]
    if release == "2021":
        case, sep, names = "BraTS2021_00000", "_", {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
    else:
        case, sep, names = "BraTS-GLI-00000-000", "-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    sources = {}
    for seq, scale in (("flair", 900.0), ("t1", 500.0), ("t1ce", 700.0), ("t2", 1200.0)):
        vol = _mri(shape, rng, scale)
        vol[lab > 0] = scale * (0.8 if seq in ("flair", "t2") else 0.4)
        vol[lab == et] = scale * 0.95
        rel = f"{case}/{case}{sep}{names[seq]}.nii.gz"
        _nifti(root / rel, _xyz(vol).astype(np.int16))
        sources[seq] = rel
    _nifti(root / case / f"{case}{sep}seg.nii.gz", _xyz(lab))
    return key_truth(lab, rules, "", sequences=list(sources), sources=sources, flips=display_flips(DEFAULT_AFFINE))


def _heart(shape, lv_r: float) -> np.ndarray:
    """Short-axis-like label slices: RV 1, myocardium ring 2, LV cavity 3; shrinking towards the apex."""
    lab = np.zeros(shape, np.uint8)
    for z in range(shape[0]):
        f = 1.0 - 0.08 * z
        yy, xx = np.ogrid[0:shape[1], 0:shape[2]]
        d2 = (yy - 20) ** 2 + (xx - 26) ** 2
        lab[z][d2 <= (lv_r * f + 3.5) ** 2] = 2
        lab[z][d2 <= (lv_r * f) ** 2] = 3
        lab[z][((yy - 20) / (8 * f)) ** 2 + ((xx - 8) / (4.5 * f)) ** 2 <= 1] = 1
    return lab


def write_acdc(root: Path, rng) -> list[dict]:
    shape = (6, 40, 48)
    rules = [("right ventricle", [1], False), ("left ventricular myocardium", [2], False), ("left ventricle", [3], False)]
    truth = []
    for split, pid, ed, es in (("training", "patient001", 1, 12), ("testing", "patient101", 1, 9)):
        d = root / "database" / split / pid
        d.mkdir(parents=True, exist_ok=True)
        (d / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 14\nWeight: 95.0\n")
        _nifti(d / f"{pid}_4d.nii.gz", np.zeros((48, 40, 6, 3), np.int16), (1.5, 1.5, 10.0))  # not read
        for frame, lv_r in ((ed, 7.0), (es, 4.5)):
            lab = _heart(shape, lv_r)
            vol = _mri(shape, rng, 300.0)
            vol[lab == 3], vol[lab == 1], vol[lab == 2] = 600.0, 500.0, 120.0
            stem = f"{pid}_frame{frame:02d}"
            _nifti(d / f"{stem}.nii.gz", _xyz(vol).astype(np.uint16), (1.5, 1.5, 10.0))
            _nifti(d / f"{stem}_gt.nii.gz", _xyz(lab), (1.5, 1.5, 10.0))
            truth += key_truth(lab, rules, f"database/{split}/{pid}/{stem}.nii.gz",
                               flips=display_flips(DEFAULT_AFFINE))
    return truth


def write_msd_prostate(root: Path, rng) -> list[dict]:
    shape = (8, 40, 40)
    d = root / "Task05_Prostate"
    labels = {"0": "background", "1": "PZ", "2": "TZ"}
    lab = np.zeros(shape, np.uint8)
    pz = ellipsoid(shape, (4, 26, 20), (3, 4, 10))
    pz[:, :, 19:22] = False  # a quirk of real PZ labels: the zone split in two pieces (still ONE box a slice)
    lab[pz] = 1
    lab[ellipsoid(shape, (4, 17, 20), (3, 5, 7))] = 2
    t2, adc = _mri(shape, rng, 400.0), _mri(shape, rng, 2000.0)  # very different ranges: normalised apart
    t2[lab == 1], t2[lab == 2], adc[lab == 1], adc[lab == 2] = 380.0, 150.0, 1900.0, 900.0
    vol4 = np.stack([_xyz(t2), _xyz(adc)], axis=-1).astype(np.float32)  # (X, Y, Z, 2)
    img = d / "imagesTr" / "prostate_00.nii.gz"
    _nifti(img, vol4, (0.6, 0.6, 3.6))
    _nifti(d / "labelsTr" / "prostate_00.nii.gz", _xyz(lab), (0.6, 0.6, 3.6))
    _apple_double(img)
    _apple_double(d / "labelsTr" / "prostate_00.nii.gz")
    _msd_json(d, labels, ["prostate_00"], {"0": "T2", "1": "ADC"}, "4D")
    rules = [("PZ", [1], False), ("TZ", [2], False)]
    return key_truth(lab, rules, "Task05_Prostate/imagesTr/prostate_00.nii.gz", sequences=["T2", "ADC"],
                     flips=display_flips(DEFAULT_AFFINE))


# ----------------------------------------------------------------------------------------------- US / OCT
CAMUS_RULES = [("left ventricle", [1], False), ("left ventricular myocardium", [2], False), ("left atrium", [3], False)]


def _echo(rng, lv_ry: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = 64, 48
    lab = np.zeros((h, w), np.uint8)
    lab[synth.ellipse(h, w, 24, 24, lv_ry + 3, 10)] = 2
    lab[synth.ellipse(h, w, 24, 24, lv_ry, 7)] = 1
    lab[synth.ellipse(h, w, 51, 24, 6, 8)] = 3
    img = synth.gray8(h, w, rng)
    img[lab == 2] = 200
    img[lab == 1] = 15
    img[lab == 3] = 20
    return img, lab


def write_camus(root: Path, rng, release: str = "2023-nifti") -> list[dict]:
    truth = []
    pid = "patient0001"
    d = root / ("database_nifti" if release == "2023-nifti" else "training") / pid
    d.mkdir(parents=True, exist_ok=True)
    for view in ("2CH", "4CH"):
        (d / f"Info_{view}.cfg").write_text(
            "ED: 1\nES: 14\nNbFrame: 20\nSex: F\nAge: 63\nImageQuality: Good\nEF: 55\nFrameRate: 30\n")
        for phase, ry in (("ED", 13.0), ("ES", 9.0)):
            img, lab = _echo(rng, ry)
            stem = f"{pid}_{view}_{phase}"
            if release == "2023-nifti":
                _nifti(d / f"{stem}.nii.gz", img.T.copy(), (0.3, 0.15))  # 2-D, stored (width, height)
                _nifti(d / f"{stem}_gt.nii.gz", lab.T.copy(), (0.3, 0.15))
                src = f"database_nifti/{pid}/{stem}.nii.gz"
            else:
                write_mhd(d / f"{stem}.mhd", img[None], (0.3, 0.15, 1.0))
                write_mhd(d / f"{stem}_gt.mhd", lab[None], (0.3, 0.15, 1.0))
                src = f"training/{pid}/{stem}.mhd"
            truth += key_truth(lab[None], CAMUS_RULES, src)
        if release == "2023-nifti":  # the half sequences exist in the layout but are not records
            _nifti(d / f"{pid}_{view}_half_sequence.nii.gz", np.zeros((48, 64, 3), np.uint8), (0.3, 0.15, 1.0))
            _nifti(d / f"{pid}_{view}_half_sequence_gt.nii.gz", np.zeros((48, 64, 3), np.uint8), (0.3, 0.15, 1.0))
    return truth


RETOUCH_RULES = [("intraretinal fluid", [1], True), ("subretinal fluid", [2], True),
                 ("pigment epithelial detachment", [3], True)]


def retouch_volume(rng, etype: str) -> tuple[np.ndarray, np.ndarray]:
    shape = (6, 40, 48)  # (B-scans, depth, A-scans)
    lab = np.zeros(shape, np.uint8)
    lab[ellipsoid(shape, (2, 15, 12), (1.2, 4, 5))] = 1  # two separate IRF cysts
    lab[ellipsoid(shape, (2, 15, 34), (1.2, 4, 5))] = 1
    lab[ellipsoid(shape, (3, 24, 22), (1.5, 3, 7))] = 2
    lab[ellipsoid(shape, (3, 31, 22), (1.5, 2.5, 8))] = 3
    vol = np.stack([synth.gray8(40, 48, rng) for _ in range(6)]).astype(np.float32)
    vol[:, 10:34, :] += 70
    vol[lab > 0] = 5
    vol = np.clip(vol, 0, 255)
    if etype == "MET_USHORT":
        vol = vol * 180.0  # Spectralis: 16-bit
    return vol, lab


def write_retouch(root: Path, rng) -> list[dict]:
    truth = []
    for vendor, case, etype in (("Cirrus", "TRAIN001", "MET_UCHAR"), ("Spectralis", "TRAIN025", "MET_USHORT")):
        vol, lab = retouch_volume(rng, etype)
        d = root / f"RETOUCH-TrainingSet-{vendor}" / case
        write_mhd(d / "oct.mhd", vol, (0.0117, 0.0039, 0.047), etype)
        write_mhd(d / "reference.mhd", lab, (0.0117, 0.0039, 0.047), "MET_UCHAR")
        truth += key_truth(lab, RETOUCH_RULES, f"RETOUCH-TrainingSet-{vendor}/{case}/oct.mhd")
    return truth


WRITERS = {
    "kits23": write_kits23, "lits": write_lits, "msd_ct": write_msd_ct, "brats2021": write_brats2021,
    "acdc": write_acdc, "msd_prostate": write_msd_prostate, "camus": write_camus, "retouch": write_retouch,
}
register_sample_writers(WRITERS)
