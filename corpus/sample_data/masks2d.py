"""Sample writers for the paired-mask datasets (docs/datasets.md §8 "Paired masks"), native layouts and quirks:
BUSI `(1)_mask.png` + `(1)_mask_1.png` with spaces and parentheses and a normal image with an empty mask;
TN3K JPEG masks with compression noise; HC18 thin ellipse outlines (two cut off by the image edge) and the
pixel-size CSV; ISIC Task 1 and (partly empty) Task 2 masks; PH2 BMPs and its '||' table; HAM10000 two parts + metadata CSV; IDRiD red RGB
TIFFs with a missing SE file; REFUGE 0/128/255 BMPs with interpolated edge values; ADAM inverted BMPs and the
fovea xlsx; AROI value-coded label maps.

Truth boxes are the boxes of the masks as drawn (synth.box), before they are encoded. The only lossy
encoding is TN3K's JPEG mask; its writer decodes the file again and fails loudly if the >127 threshold
would not give back the drawn box, so the truth it states is the truth of the file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medlvr.corpus.sample_data import register_sample_writers
from medlvr.corpus.sample_data.synth import box, ellipse, gray8, rect, rgb8


def _save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, **kw)


def _m255(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def _shade(img: np.ndarray, mask: np.ndarray, delta: int) -> np.ndarray:
    out = img.astype(np.int16)
    out[mask] += delta
    return np.clip(out, 0, 255).astype(np.uint8)


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------------------------- ultrasound
def write_busi(root: Path, rng) -> list[dict]:
    base = root / "Dataset_BUSI_with_GT"
    h, w = 80, 96
    truth = []
    # benign (1): one lesion, one mask file
    a = ellipse(h, w, 40, 30, 12, 16)
    benign1 = _shade(gray8(h, w, rng), a, -40)
    _save(base / "benign" / "benign (1).png", benign1)
    _save(base / "benign" / "benign (1)_mask.png", _m255(a))
    truth.append({"source_path": "Dataset_BUSI_with_GT/benign/benign (1).png", "suffix": None,
                  "boxes": [["benign lesion", box(a)]]})
    # benign (2): a second lesion in "_mask_1.png" (missed by a `*)_mask.png` glob)
    b1 = ellipse(h, w, 22, 24, 9, 12)
    b2 = ellipse(h, w, 58, 70, 10, 14)
    _save(base / "benign" / "benign (2).png", _shade(gray8(h, w, rng), b1 | b2, -40))
    _save(base / "benign" / "benign (2)_mask.png", _m255(b1))
    _save(base / "benign" / "benign (2)_mask_1.png", _m255(b2))
    truth.append({"source_path": "Dataset_BUSI_with_GT/benign/benign (2).png", "suffix": None,
                  "boxes": [["benign lesion", box(b1)], ["benign lesion", box(b2)]]})
    # malignant (1): image and mask stored as RGB, as some BUSI files are
    m = ellipse(h, w, 44, 50, 18, 22) & ~rect(h, w, 50, 20, 80, 34)  # irregular margin
    img = _shade(gray8(h, w, rng), m, -35)
    _save(base / "malignant" / "malignant (1).png", np.stack([img] * 3, axis=2))
    _save(base / "malignant" / "malignant (1)_mask.png", np.stack([_m255(m)] * 3, axis=2))
    truth.append({"source_path": "Dataset_BUSI_with_GT/malignant/malignant (1).png", "suffix": None,
                  "boxes": [["malignant lesion", box(m)]]})
    # normal (1): empty mask, a valid negative
    _save(base / "normal" / "normal (1).png", gray8(h, w, rng))
    _save(base / "normal" / "normal (1)_mask.png", np.zeros((h, w), np.uint8))
    truth.append({"source_path": "Dataset_BUSI_with_GT/normal/normal (1).png", "suffix": None, "boxes": []})
    # a quirk of the real release: malignant (2) is pixel-identical to benign (1) but filed as malignant with
    # another mask. A conflicting duplicate: the one found first in path order (benign (1)) is kept, this one is
    # rejected with its object, so it has no truth
    _save(base / "malignant" / "malignant (2).png", benign1)
    _save(base / "malignant" / "malignant (2)_mask.png", _m255(ellipse(h, w, 30, 60, 10, 12)))
    return truth


def write_tn3k(root: Path, rng) -> list[dict]:
    base = root / "tn3k"
    h, w = 96, 112
    truth = []
    shapes = {("trainval", "0000"): ellipse(h, w, 48, 50, 20, 26), ("trainval", "0001"): ellipse(h, w, 40, 62, 16, 22),
              ("test", "0000"): ellipse(h, w, 52, 44, 22, 18)}
    for (part, stem), m in shapes.items():
        img = _shade(gray8(h, w, rng), m, -30)
        _save(base / f"{part}-image" / f"{stem}.jpg", np.stack([img] * 3, axis=2), quality=90)
        mpath = base / f"{part}-mask" / f"{stem}.jpg"
        _save(mpath, _m255(m), quality=75)  # lossy: ringing around the edge
        back = np.asarray(Image.open(mpath).convert("L"))
        noisy = int(((back > 0) & (back < 255)).sum())
        if noisy == 0 or box(back > 127) != box(m):
            raise AssertionError(f"TN3K fixture: JPEG mask {part}/{stem} has no noise or its box moved")
        truth.append({"source_path": f"tn3k/{part}-image/{stem}.jpg", "suffix": None,
                      "boxes": [["thyroid nodule", box(m)]]})
    _csv(base / "label4trainval.csv", ["name", "label"], [["0000.jpg", 1], ["0001.jpg", 0]])
    for k in range(2):
        (base / f"tn3k-trainval-fold{k}.json").write_text(json.dumps({"train": [1 - k], "val": [k]}))
    return truth


def write_hc18(root: Path, rng) -> list[dict]:
    h, w = 72, 108
    truth, rows = [], []
    heads = {"000_HC.png": (36, 54, 26, 40, 0.125), "001_HC.png": (34, 50, 22, 30, 0.171),
             "001_2HC.png": (38, 56, 24, 34, 0.171),
             # heads cut off by the image edge (4 of the 999 real ones): the outline stops at the top / bottom row
             "002_HC.png": (8, 50, 22, 34, 0.152), "003_HC.png": (64, 60, 20, 32, 0.152)}
    pad = 32  # the whole head is drawn on a taller canvas, then cropped: no line runs along the image border
    for name, (cy, cx, ry, rx, ps) in heads.items():
        whole = ellipse(h + 2 * pad, w, cy + pad, cx, ry, rx)
        filled = whole[pad:pad + h]  # the head inside the image: its box is the truth
        outline = (whole & ~ndimage.binary_erosion(whole))[pad:pad + h]  # the 1-px ring the annotators drew
        _save(root / "training_set" / name, _shade(gray8(h, w, rng), outline, 90))
        _save(root / "training_set" / name.replace(".png", "_Annotation.png"), _m255(outline))
        rows.append([name, ps, round(float(np.pi * (ry + rx) * ps * 2), 2)])
        truth.append({"source_path": f"training_set/{name}", "suffix": None, "boxes": [["fetal head", box(filled)]]})
    _csv(root / "training_set_pixel_size_and_HC.csv", ["filename", "pixel size(mm)", "head circumference (mm)"], rows)
    _save(root / "test_set" / "002_HC.png", gray8(h, w, rng))  # unannotated test image: not ingested
    _csv(root / "test_set_pixel_size.csv", ["filename", "pixel size(mm)"], [["002_HC.png", 0.15]])
    return truth


# ---------------------------------------------------------------------------------------------- dermoscopy
def _skin(h, w, rng, lesion):
    img = rgb8(h, w, rng, tint=(205, 160, 140))
    img[lesion] = (img[lesion] * 0.45).astype(np.uint8)
    return img


def write_isic2018(root: Path, rng) -> list[dict]:
    h, w = 72, 96
    truth = []
    les = ellipse(h, w, 36, 46, 24, 30)
    glob1, glob2 = ellipse(h, w, 28, 36, 4, 5), ellipse(h, w, 44, 58, 4, 5)
    net = ellipse(h, w, 36, 46, 14, 18) & ~(glob1 | glob2)
    _save(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg", _skin(h, w, rng, les), quality=92)
    (root / "ISIC2018_Task1-2_Training_Input" / "ATTRIBUTION.txt").write_text("sample attribution file\n")
    _save(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", _m255(les))
    t2 = root / "ISIC2018_Task2_Training_GroundTruth_v3"
    for attr, m in {"globules": glob1 | glob2, "pigment_network": net, "streaks": None,
                    "milia_like_cyst": None, "negative_network": None}.items():
        _save(t2 / f"ISIC_0000000_attribute_{attr}.png", _m255(m) if m is not None else np.zeros((h, w), np.uint8))
    truth.append({"source_path": "ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg", "suffix": None,
                  "boxes": [["skin lesion", box(les)], ["globules", box(glob1)], ["globules", box(glob2)],
                            ["pigment network", box(net)]]})
    les2 = ellipse(h, w, 30, 40, 16, 22)
    _save(root / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0012255.jpg", _skin(h, w, rng, les2), quality=92)
    _save(root / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0012255_segmentation.png", _m255(les2))
    truth.append({"source_path": "ISIC2018_Task1-2_Validation_Input/ISIC_0012255.jpg", "suffix": None,
                  "boxes": [["skin lesion", box(les2)]]})
    return truth


def write_ph2(root: Path, rng) -> list[dict]:
    h, w = 70, 96  # real PH2 images are 768x560 RGB BMP
    base = root / "PH2Dataset" / "PH2 Dataset images"
    truth = []
    lines = ["||   Name ||	 Histological Diagnosis ||	Clinical Diagnosis	||	Asymmetry | Pigment Network | "
             "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||	Colors ||"]
    rows = {"IMD002": "||                 ||        0 ||  0  |  T  |  A  |  A  |  A  |  A  ||  3 4  ||",
            "IMD058": "|| Melanoma ||  2 ||  2  | AT | AT |  P  |  P  |  P  ||  4 5 6  ||"}
    for case, (cy, cx, ry, rx) in (("IMD002", (35, 45, 20, 28)), ("IMD058", (30, 52, 18, 24))):
        les = ellipse(h, w, cy, cx, ry, rx)
        _save(base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", _skin(h, w, rng, les))
        _save(base / case / f"{case}_lesion" / f"{case}_lesion.bmp", _m255(les))
        # colour-region masks exist but are not lesion annotations; the adapter ignores them
        _save(base / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", _m255(ellipse(h, w, cy, cx, ry // 2, rx // 2)))
        lines.append(f"|| {case} {rows[case]}")
        truth.append({"source_path": f"PH2Dataset/PH2 Dataset images/{case}/{case}_Dermoscopic_Image/{case}.bmp",
                      "suffix": None, "boxes": [["skin lesion", box(les)]]})
    legend = "\n\n Legends:\n Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma.\n"
    (root / "PH2Dataset" / "PH2_dataset.txt").write_text("\n".join(lines) + legend)
    return truth


def write_ham10000(root: Path, rng) -> list[dict]:
    h, w = 60, 80  # real: 600x450
    truth, rows = [], []
    items = (("HAM10000_images_part_1", "ISIC_0024306", "HAM_0000118", "nv", (30, 40, 16, 22)),
             ("HAM10000_images_part_1", "ISIC_0024307", "HAM_0000118", "nv", (28, 42, 14, 20)),
             ("HAM10000_images_part_2", "ISIC_0029306", "HAM_0002730", "mel", (32, 36, 18, 24)))
    for part, iid, lesion_id, dx, (cy, cx, ry, rx) in items:
        les = ellipse(h, w, cy, cx, ry, rx)
        _save(root / part / f"{iid}.jpg", _skin(h, w, rng, les), quality=92)
        _save(root / "HAM10000_segmentations_lesion_tschandl" / f"{iid}_segmentation.png", _m255(les))
        rows.append([lesion_id, iid, dx, "histo", 55.0, "male", "back", "vidir_modern"])
        truth.append({"source_path": f"{part}/{iid}.jpg", "suffix": None, "boxes": [["skin lesion", box(les)]]})
    _csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization",
                                          "dataset"], rows)
    return truth


# ------------------------------------------------------------------------------------------------- fundus
def _fundus(h, w, rng, marks: dict) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    eye = ellipse(h, w, h / 2, w / 2, h * 0.49, w * 0.49)
    img[eye] = rgb8(h, w, rng, tint=(170, 70, 30))[eye]
    for m, colour in marks.values():
        img[m] = colour
    return img


def write_idrid(root: Path, rng) -> list[dict]:
    h, w = 96, 144  # real: 4288x2848
    seg = root / "A. Segmentation"
    gt = seg / "2. All Segmentation Groundtruths"
    folders = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates", "SE": "4. Soft Exudates",
               "OD": "5. Optic Disc"}
    names = {"MA": "microaneurysm", "HE": "haemorrhage", "EX": "hard exudate", "SE": "soft exudate", "OD": "optic disc"}
    cases = {
        ("a. Training Set", "IDRiD_01"): {  # no SE file: soft exudates absent
            "MA": [ellipse(h, w, 30, 40, 2.5, 2.5), ellipse(h, w, 70, 90, 2.5, 2.5)],
            "HE": [ellipse(h, w, 60, 50, 5, 7)], "EX": [rect(h, w, 80, 30, 86, 36), rect(h, w, 96, 60, 101, 66)],
            "OD": [ellipse(h, w, 48, 115, 12, 11)]},
        ("b. Testing Set", "IDRiD_55"): {
            "SE": [ellipse(h, w, 40, 60, 6, 8)], "OD": [ellipse(h, w, 46, 28, 13, 11)]},
    }
    truth = []
    for (split, iid), lesions in cases.items():
        unions = {k: np.logical_or.reduce(v) for k, v in lesions.items()}
        _save(seg / "1. Original Images" / split / f"{iid}.jpg",
              _fundus(h, w, rng, {k: (m, (250, 220, 120)) for k, m in unions.items()}), quality=95)
        boxes = []
        for k, m in unions.items():
            red = np.zeros((h, w, 3), np.uint8)
            red[m] = (255, 0, 0)  # lesion painted pure red on black
            _save(gt / split / folders[k] / f"{iid}_{k}.tif", red)
            parts = lesions[k] if k != "OD" else [m]
            boxes += [[names[k], box(p)] for p in parts]
        truth.append({"source_path": f"A. Segmentation/1. Original Images/{split}/{iid}.jpg", "suffix": None,
                      "boxes": boxes})
    return truth


def _disc_cup(h, w, cy, cx, rd, rc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    disc = ellipse(h, w, cy, cx, rd * 1.05, rd)
    cup = ellipse(h, w, cy, cx, rc * 1.1, rc)
    m = np.full((h, w), 255, np.uint8)
    m[disc] = 128
    m[cup] = 0
    # interpolated edges, as after a resize: still inside their class under the <=150 / <=100 thresholds
    m[disc & ~ndimage.binary_erosion(disc)] = 140
    m[cup & ~ndimage.binary_erosion(cup)] = 90
    return m, disc, cup


def write_refuge(root: Path, rng) -> list[dict]:
    h, w = 88, 84
    cases = (("Training400/Glaucoma/g0001.jpg", "Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp", 16, 11),
             ("Training400/Non-Glaucoma/n0001.jpg",
              "Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma/n0001.bmp", 15, 6),
             ("REFUGE-Validation400/V0001.jpg", "REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp", 14, 7),
             ("Test400/T0001.jpg", "REFUGE-Test-GT/Disc_Cup_Masks/G/T0001.bmp", 17, 12))
    truth = []
    for i, (img_rel, mask_rel, rd, rc) in enumerate(cases):
        m, disc, cup = _disc_cup(h, w, 40 + i, 44 - i, rd, rc)
        _save(root / img_rel, _fundus(h, w, rng, {"disc": (disc, (250, 200, 150)), "cup": (cup, (255, 240, 210))}),
              quality=95)
        _save(root / mask_rel, m)  # 8-bit greyscale BMP
        truth.append({"source_path": img_rel, "suffix": None,
                      "boxes": [["optic disc", box(disc)], ["optic cup", box(cup)]]})
    return truth


def write_adam(root: Path, rng) -> list[dict]:
    import openpyxl

    h, w = 80, 80
    inv = lambda m: np.where(m, 0, 255).astype(np.uint8)  # noqa: E731  ADAM: structure black on white
    truth = []
    a_disc, n_disc = ellipse(h, w, 40, 60, 10, 9), ellipse(h, w, 38, 18, 11, 10)
    dr1, dr2 = ellipse(h, w, 30, 30, 4, 5), ellipse(h, w, 52, 36, 4, 4)
    hem = ellipse(h, w, 60, 58, 5, 6)
    _save(root / "Training400" / "AMD" / "A0001.jpg",
          _fundus(h, w, rng, {"d": (a_disc, (250, 200, 150)), "l": (dr1 | dr2, (240, 230, 90)),
                              "h": (hem, (90, 10, 10))}),
          quality=95)
    _save(root / "Training400" / "Non-AMD" / "N0001.jpg", _fundus(h, w, rng, {"d": (n_disc, (250, 200, 150))}),
          quality=95)
    _save(root / "Disc_Masks" / "A0001.bmp", inv(a_disc))
    _save(root / "Disc_Masks" / "N0001.bmp", inv(n_disc))
    les = root / "Training400-Lesion" / "Lesion_Masks"
    _save(les / "drusen" / "A0001.bmp", inv(dr1 | dr2))
    _save(les / "hemorrhage" / "A0001.bmp", inv(hem))  # no exudate/others/scar files: absent
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["ID", "imgName", "Fovea_X", "Fovea_Y"])
    ws.append([1, "A0001.jpg", 41.5, 39.25])
    ws.append([2, "N0001.jpg", 50.0, 40.0])
    (root / "Training400").mkdir(parents=True, exist_ok=True)
    wb.save(root / "Training400" / "Fovea_location.xlsx")
    truth.append({"source_path": "Training400/AMD/A0001.jpg", "suffix": None,
                  "boxes": [["optic disc", box(a_disc)], ["drusen", box(dr1)], ["drusen", box(dr2)],
                            ["hemorrhage", box(hem)]]})
    truth.append({"source_path": "Training400/Non-AMD/N0001.jpg", "suffix": None,
                  "boxes": [["optic disc", box(n_disc)]]})
    return truth


# ---------------------------------------------------------------------------------------------------- OCT
def _aroi_map(h: int, w: int, fluids: dict[int, list[np.ndarray]]) -> np.ndarray:
    x = np.arange(w)
    ilm = (20 + 4 * np.sin(x / 9.0)).astype(int)  # undulating layer boundaries
    lab = np.zeros((h, w), np.uint8)
    yy = np.arange(h)[:, None]
    lab[yy >= ilm] = 1
    lab[yy >= ilm + 10] = 2
    lab[yy >= ilm + 24] = 3
    lab[yy >= ilm + 28] = 4
    for v, ms in fluids.items():
        for m in ms:
            lab[m] = v
    return lab


def write_aroi(root: Path, rng) -> list[dict]:
    h, w = 72, 96  # real: 1024x512 B-scans
    names = {1: "inner retina", 2: "outer retina", 3: "retinal pigment epithelium", 5: "pigment epithelial detachment",
             6: "subretinal fluid", 7: "intraretinal fluid"}
    scans = {
        ("patient1", "patient1_raw0040.png"): {7: [ellipse(h, w, 30, 30, 3, 5), ellipse(h, w, 30, 70, 3, 6)],
                                                6: [ellipse(h, w, 44, 50, 3, 8)], 5: [ellipse(h, w, 50, 82, 3, 6)]},
        ("patient2", "patient2_raw0012.png"): {},  # no fluid: a negative for the fluid classes
    }
    truth = []
    for (pid, name), fluids in scans.items():
        lab = _aroi_map(h, w, fluids)
        img = np.clip(30 + 30 * lab + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
        _save(root / "24 patient" / pid / "raw" / "labeled" / name, img)
        _save(root / "24 patient" / pid / "mask" / "number" / name, lab)
        boxes = [["retina", box(np.isin(lab, [1, 2, 3, 5, 6, 7]))]]
        boxes += [[names[v], box(lab == v)] for v in (1, 2, 3) if (lab == v).any()]
        boxes += [[names[v], box(m)] for v, ms in fluids.items() for m in ms]
        truth.append({"source_path": f"24 patient/{pid}/raw/labeled/{name}", "suffix": None, "boxes": boxes})
    return truth


WRITERS = {"busi": write_busi, "tn3k": write_tn3k, "hc18": write_hc18, "isic2018": write_isic2018,
           "ph2": write_ph2, "ham10000": write_ham10000, "idrid": write_idrid, "refuge": write_refuge,
           "adam": write_adam, "aroi": write_aroi}
register_sample_writers(WRITERS)
