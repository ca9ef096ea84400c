"""Sample writers for the DICOM / 16-bit PNG / HDF5 datasets: LIDC-IDRI, DeepLesion, fastMRI+, and the DICOM
image files (plus their label tables) of VinDr-CXR, RSNA Pneumonia and SIIM-ACR, each in its native layout
(docs/datasets.md §2.1–2.3) with the quirks of §8. True boxes are computed here from the drawn shapes, independently
of the adapters' code.
"""

from __future__ import annotations

import csv
import hashlib
import uuid
from pathlib import Path

import numpy as np

from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.sample_data import register_sample_writers, synth

# Header values written into every sample DICOM: anonymised-looking, as in the public releases. The privacy
# test overwrites them with distinctive strings and checks that none reaches the output.
HEADER = {"PatientName": "ANON", "PatientID": "ANON", "StudyDate": "20000101"}


def _sample_opt(ds_id: str, key: str, default):
    """The catalog's `sample` option, else its adapter option of that name (e.g. the raw label the adapter
    reports), else the default: the truth labels follow whatever the other engineer's catalog names."""
    try:
        spec = load_catalog().get(ds_id)
    except Exception:  # catalog not importable or another entry broken: the default is still right
        spec = None
    return spec.sample.get(key, spec.options.get(key, default)) if spec else default


def uid(rng) -> str:
    """A DICOM UID drawn from the writer's generator, so that samples are byte-for-byte reproducible."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(int(rng.integers(1 << 62)))])


def write_dicom(path: Path, pixels: np.ndarray, *, modality: str = "DX", photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, signed: bool = False, slope: float | None = None,
                intercept: float | None = None, window: tuple[float, float] | None = None,
                uids: dict | None = None, extra: dict | None = None) -> None:
    """An uncompressed single-frame DICOM (explicit VR little endian) with the given stored values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
                 "CR": "1.2.840.10008.5.1.4.1.1.1"}.get(modality, "1.2.840.10008.5.1.4.1.1.7")
    uids = uids or {}
    # UIDs not given are derived from the pixels: reproducible, and distinct for distinct images
    seed = np.random.default_rng(int.from_bytes(hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).digest()[:8],
                                                "little"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids.get("sop") or uid(seed)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uids.get("study") or uid(seed)
    ds.SeriesInstanceUID = uids.get("series") or uid(seed)
    ds.Modality = modality
    for k, v in HEADER.items():
        setattr(ds, k, v)
    arr = np.asarray(pixels)
    itemsize = 1 if arr.dtype.itemsize == 1 else 2
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * itemsize
    ds.BitsStored = bits_stored or 8 * itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = f"{slope if slope is not None else 1:g}"
        ds.RescaleIntercept = f"{intercept if intercept is not None else 0:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    dtype = {(1, False): "<u1", (1, True): "<i1", (2, False): "<u2", (2, True): "<i2"}[(itemsize, signed)]
    ds.PixelData = arr.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ---------------------------------------------------------------------------------------------- LIDC-IDRI
def _rect_mask(h, w, r):  # inclusive pixel rectangle (x0, y0, x1, y1), as an LIDC edgeMap outline covers it
    x0, y0, x1, y1 = r
    return synth.rect(h, w, x0, y0, x1 + 1, y1 + 1)


def _edge_xml(r) -> str:
    x0, y0, x1, y1 = r
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pts)


def _roi_xml(sop: str, z: float, rects, inclusion: bool = True) -> str:
    return (f"<roi><imageZposition>{z:g}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{_edge_xml(rects)}</roi>")


def write_lidc_idri(root: Path, rng) -> list[dict]:
    h = w = 64
    nz = 8
    zpos = [-150.0 + 2.5 * k for k in range(nz)]  # sorted index k has z = zpos[k]
    study, series = uid(rng), uid(rng)
    sdir = "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-CT CHEST-30178/3000566.000000-NA-03192"
    sops = [uid(rng) for _ in range(nz)]
    # readers' outlines per nodule: {reader: {z index: inclusive rect}}
    a = {1: {2: (22, 22, 27, 26), 3: (20, 20, 29, 28), 4: (22, 22, 27, 26)},
         2: {2: (22, 21, 27, 26), 3: (21, 19, 30, 28), 4: (22, 22, 28, 26)},
         3: {2: (21, 22, 27, 27), 3: (20, 21, 29, 29), 4: (23, 22, 27, 26)}}
    b = {2: {5: (40, 38, 49, 47), 6: (43, 41, 47, 45)}, 4: {5: (42, 40, 51, 49), 6: (43, 41, 48, 46)}}
    # a quirk of the real archive: an outlined nodule of ~3 mm, 9 px a slice, under the 2-D speck size (16 px
    # here, 52.43 at 512²); readers outline nodules >= 3 mm, so it must still be a box (it used to vanish)
    c = {1: {1: (8, 8, 10, 10)}}
    hole = (24, 23, 26, 25)  # reader 1's inclusion=FALSE hole in nodule A on z index 3
    vol = np.stack([synth.body_ct(h, w, rng) for _ in range(nz)])
    for nod in (a, b, c):
        for rects in nod.values():
            for z, r in rects.items():
                vol[z][_rect_mask(h, w, r)] = 60.0
    # files are numbered from the top of the scan (highest z first), so name order is not z order
    for k in range(nz):
        stored = np.clip(np.round(vol[k]) + 1024, 0, 4095).astype(np.uint16)
        write_dicom(root / sdir / f"1-{nz - k:03d}.dcm", stored, modality="CT", bits_stored=12, slope=1.0,
                    intercept=-1024.0, uids={"sop": sops[k], "study": study, "series": series},
                    extra={"ImagePositionPatient": [-160.0, -160.0, zpos[k]], "PixelSpacing": [0.7, 0.7],
                           "SliceThickness": "2.5", "InstanceNumber": nz - k})

    def nodule_xml(nid, rects, extra_rois=""):
        rois = "".join(_roi_xml(sops[z], zpos[z], r) for z, r in sorted(rects.items()))
        return (f"<unblindedReadNodule><noduleID>{nid}</noduleID><characteristics><subtlety>4</subtlety>"
                f"<malignancy>{3 + len(nid) % 2}</malignancy></characteristics>{rois}{extra_rois}"
                f"</unblindedReadNodule>")

    sessions = {1: nodule_xml("Nodule 001", a[1], _roi_xml(sops[3], zpos[3], hole, inclusion=False))
                + nodule_xml("Nodule 002", c[1]),
                2: nodule_xml("IL057_127364", a[2]) + nodule_xml("IL057_127365", b[2]),
                3: nodule_xml("Nodule 1", a[3])
                + (f"<unblindedReadNodule><noduleID>small-1</noduleID><roi><imageZposition>{zpos[1]:g}"
                   f"</imageZposition><imageSOP_UID>{sops[1]}</imageSOP_UID><inclusion>TRUE</inclusion>"
                   f"<edgeMap><xCoord>10</xCoord><yCoord>50</yCoord></edgeMap></roi></unblindedReadNodule>"),
                # reader 4's z=6 outline names an unknown SOP UID: the slice is found by its z position
                4: nodule_xml("5", {5: b[4][5]}, _roi_xml("1.2.3.999.unknown", zpos[6], b[4][6]))
                + (f"<nonNodule><nonNoduleID>nn-1</nonNoduleID><imageZposition>{zpos[7]:g}</imageZposition>"
                   f"<imageSOP_UID>{sops[7]}</imageSOP_UID><locus><xCoord>50</xCoord><yCoord>12</yCoord>"
                   f"</locus></nonNodule>")}
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage xmlns="http://www.nih.gov" '
           f'uid="1.3.6.1.4.1.14519.5.2.1.6279.6001.1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f"<ResponseHeader><Version>1.8.1</Version><DateRequest>2000-01-01</DateRequest>"
           f"<SeriesInstanceUid>{series}</SeriesInstanceUid><StudyInstanceUID>{study}</StudyInstanceUID>"
           f"</ResponseHeader>"
           + "".join(f"<readingSession><annotationVersion>3.12</annotationVersion><servicingRadiologistID>"
                     f"reader-{r}</servicingRadiologistID>{body}</readingSession>" for r, body in sessions.items())
           + "</LidcReadMessage>\n")
    (root / sdir / "069.xml").write_text(xml)
    # a radiograph series of another patient, annotated in the IdriReadMessage schema: skipped
    cdir = root / "LIDC-IDRI/LIDC-IDRI-0002/01-01-2000-NA-CHEST XRAY-5555/1.000000-NA-88888"
    write_dicom(cdir / "1-1.dcm", synth.gray8(32, 32, rng), modality="CR")
    (cdir / "071.xml").write_text('<?xml version="1.0"?>\n<IdriReadMessage xmlns="http://www.nih.gov">'
                                  "<ResponseHeader/></IdriReadMessage>\n")

    def consensus_box(nod, z):
        votes = sum(_rect_mask(h, w, rects[z]).astype(int) for rects in nod.values() if z in rects)
        return synth.box(votes * 2 >= len(nod))

    return [{"source_path": sdir, "suffix": "z0003", "boxes": [["nodule", consensus_box(a, 3)]]},
            {"source_path": sdir, "suffix": "z0005", "boxes": [["nodule", consensus_box(b, 5)]]},
            {"source_path": sdir, "suffix": "z0001", "boxes": [["nodule", consensus_box(c, 1)]]}]


# --------------------------------------------------------------------------------------------- DeepLesion
_DL_HEADER = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index", "Measurement_coordinates",
              "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location", "Coarse_lesion_type",
              "Possibly_noisy", "Slice_range", "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender",
              "Patient_age", "Train_Val_Test"]


def _j(vals) -> str:  # DeepLesion's multi-value fields: one quoted string, values separated by ", "
    return ", ".join(f"{v:g}" for v in vals)


def write_deeplesion(root: Path, rng) -> list[dict]:
    h = w = 64
    # (patient, study, series, key slice, neighbours, split, lesions [(type, xyxy box, window)])
    cases = [(1, 1, 1, 109, (108, 110), 1, [(4, (12.5, 14.25, 30.75, 28.0), (-175, 275)),
                                            (2, (38.0, 36.5, 55.25, 50.0), (-160, 240))]),
             (2, 1, 1, 23, (22, 24), 2, [(-1, (20.0, 20.0, 40.5, 35.5), (-1350, 150))]),
             (3, 2, 1, 51, (50,), 3, [(5, (30.25, 10.0, 44.0, 22.75), (-1350, 150))])]
    rows, truth = [], []
    for pat, st, se, key, neigh, split, lesions in cases:
        folder = f"{pat:06d}_{st:02d}_{se:02d}"
        for s in sorted((key,) + neigh):
            hu = synth.body_ct(h, w, rng)
            if s == key:
                for _, bx, _ in lesions:
                    x0, y0, x1, y1 = (int(round(v)) for v in bx)
                    hu[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 80.0
            if pat == 2:
                hu[:4, :4] = -32768.0  # a wrong intensity offset on some slices: clipped to -1024 HU
            png = np.clip(np.round(hu) + 32768, 0, 65535).astype(np.uint16)
            p = root / "Images_png" / folder / f"{s:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(png).save(p)  # uint16 array -> 16-bit greyscale PNG
        for t, bx, win in lesions:
            x0, y0, x1, y1 = bx
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            rows.append([f"{folder}_{key:03d}.png", pat, st, se, key,
                         _j([x0 + 5, cy, x1 - 5, cy, cx, y0 + 5, cx, y1 - 5]), _j(bx),
                         _j([x1 - x0 - 10, y1 - y0 - 10]), _j([0.5, 0.5, 0.5]), t, 0,
                         _j([min(neigh + (key,)), max(neigh + (key,))]), _j([0.7, 0.7, 5.0]), _j([h, w]),
                         _j(win), "MF"[pat % 2], 40 + pat, split])
        truth.append({"source_path": f"Images_png/{folder}/{key:03d}.png", "suffix": None,
                      "boxes": [[_dl_label(t), list(bx)] for t, bx, _ in lesions]})
    with open(root / "DL_info.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(_DL_HEADER)
        wr.writerows(rows)
    return truth


DL_TYPES = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney", 7: "soft tissue",
            8: "pelvis", -1: "unlabelled"}


def _dl_label(t: int) -> str:
    return f"{DL_TYPES[t]} lesion"


# ---------------------------------------------------------------------------------------------- fastMRI+
def _write_h5(path: Path, display: np.ndarray, key: str) -> None:
    """fastMRI stores the reconstruction upside down relative to the annotated view: flip before writing."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=display[:, ::-1, :].astype(np.float32), track_times=False)
        f.create_dataset("kspace", data=np.zeros((display.shape[0], 2, 4), dtype=np.complex64), track_times=False)
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(display.max())


def write_fastmri_plus(root: Path, rng) -> list[dict]:
    scale = 1e-4  # rss magnitudes are tiny floats; the adapter scales by the volume's 99.5th percentile
    knee = np.stack([synth.body_mri(320, 320, rng, scale) for _ in range(4)])
    boxes = [(1, "Meniscus Tear", (100, 150, 30, 20)), (1, "Joint Effusion ", (200, 60, 40, 30)),
             (2, "Bone- Subchondral edema", (150, 200, 25, 25))]
    for z, _, (x, y, bw, bh) in boxes:
        knee[z, y:y + bh, x:x + bw] = 2.5 * scale  # bright in the annotated (flipped) view
    _write_h5(root / "knee_multicoil_val/file1000001.h5", knee, "reconstruction_rss")
    _write_h5(root / "knee_singlecoil_val/file1000002.h5",
              np.stack([synth.body_mri(64, 64, rng, scale) for _ in range(4)]), "reconstruction_esc")
    _write_h5(root / "brain_multicoil_val/file_brain_AXFLAIR_200_6002425.h5",
              np.stack([synth.body_mri(64, 64, rng, scale) for _ in range(3)]), "reconstruction_rss")
    # a file nobody reviewed (in no file list): not a record
    _write_h5(root / "knee_multicoil_val/file1000003.h5",
              np.stack([synth.body_mri(16, 16, rng, scale) for _ in range(2)]), "reconstruction_rss")
    ann = root / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    header = ["file", "slice", "study_level", "x", "y", "width", "height", "label"]
    with open(ann / "knee.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(header)
        for z, lab, (x, y, bw, bh) in boxes:
            wr.writerow(["file1000001", z, "No", x, y, bw, bh, lab])
        # a box of a label the catalog ignores on purpose (as the real tables have): an ROI reject with its reason
        wr.writerow(["file1000001", 1, "No", 20, 20, 30, 20, "Possible artifact"])
        wr.writerow(["file1000001", 0, "Yes", "", "", "", "", "Periarticular cysts "])
        # a label the catalog neither maps nor ignores (a new release's label; the published tables once had 24),
        # alone on its slice: an ROI reject naming the label, and the slice becomes no image (it used to be an
        # `annotated` image with 0 ROIs); `medlvr catalog check` reports it as a finding
        wr.writerow(["file1000001", 3, "No", 40, 40, 20, 20, "Unlisted finding"])
    with open(ann / "brain.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(header)
        wr.writerow(["file_brain_AXFLAIR_200_6002425", 1, "Yes", "", "", "", "", "Normal for age"])
    (ann / "knee_file_list.csv").write_text("file1000001\nfile1000002\n")
    (ann / "brain_file_list.csv").write_text("file_brain_AXFLAIR_200_6002425\n")
    truth: dict[int, list] = {}
    for z, lab, (x, y, bw, bh) in boxes:
        truth.setdefault(z, []).append([lab.strip(), [float(x), float(y), float(x + bw), float(y + bh)]])
    return [{"source_path": "knee_multicoil_val/file1000001.h5", "suffix": f"z{z:04d}", "boxes": b}
            for z, b in sorted(truth.items())]


# -------------------------------------------------------------------------------- X-ray DICOM datasets
def _xray(h, w, rng, boxes, bits=8) -> np.ndarray:
    img = synth.gray8(h, w, rng).astype(np.float32) * ((1 << bits) - 1) / 255.0
    for x0, y0, x1, y1 in boxes:
        img[int(y0):int(y1), int(x0):int(x1)] *= 1.4
    return np.clip(img, 0, (1 << bits) - 1).astype(np.uint16 if bits > 8 else np.uint8)


def write_vindr_cxr(root: Path, rng) -> list[dict]:
    """Kaggle layout: train/<image_id>.dicom + train.csv, three readers per image."""
    ids = [uuid.UUID(int=int(rng.integers(1 << 62)) << 64).hex for _ in range(3)]
    findings = {ids[0]: [("Aortic enlargement", 0, (40.0, 20.0, 60.0, 36.0)),
                         ("Pleural effusion", 10, (8.0, 60.0, 30.0, 88.0))],
                ids[2]: [("Cardiomegaly", 3, (30.0, 50.0, 70.0, 80.0))]}
    rows = []
    for iid in ids:
        f = findings.get(iid, [])
        for rad in ("R8", "R9", "R10"):  # identical boxes: any multi-reader fusion gives the true box
            if not f:
                rows.append([iid, "No finding", 14, rad, "", "", "", ""])
            for name, cid, b in f:
                rows.append([iid, name, cid, rad, *[f"{v:.1f}" for v in b]])
        boxes = [b for _, _, b in f]
        if iid == ids[2]:  # MONOCHROME1, 12 bits stored, rescale and a VOI window in the header
            write_dicom(root / "train" / f"{iid}.dicom", _xray(96, 96, rng, boxes, bits=12),
                        photometric="MONOCHROME1", bits_stored=12, slope=2.0, intercept=-100.0,
                        window=(4000.0, 7000.0))
        else:
            write_dicom(root / "train" / f"{iid}.dicom", _xray(96, 96, rng, boxes, bits=14), bits_stored=14)
    rows.append([ids[0], "Nodule/Mass", 8, "R9", "70.0", "70.0", "80.0", "82.0"])  # one reader only: dropped
    with open(root / "train.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        wr.writerows(rows)
    return [{"source_path": f"train/{iid}.dicom", "suffix": None, "boxes": [[n, list(b)] for n, _, b in f]}
            for iid, f in findings.items()]


def write_rsna_pneumonia(root: Path, rng) -> list[dict]:
    """stage_2_train_images/<patientId>.dcm + stage_2_train_labels.csv (xywh, Target=0 rows empty)."""
    label = _sample_opt("rsna_pneumonia", "label", "Lung Opacity")
    ids = [str(uuid.UUID(int=int(rng.integers(1 << 62)))) for _ in range(3)]
    boxes = {ids[0]: [(10.0, 20.0, 30.0, 50.0), (70.0, 24.0, 34.0, 48.0)], ids[1]: [],
             ids[2]: [(60.0, 60.0, 40.5, 30.25)]}
    rows, detail, truth = [], [], []
    for pid, bs in boxes.items():
        xyxy = [(x, y, x + bw, y + bh) for x, y, bw, bh in bs]
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", _xray(128, 128, rng, xyxy), modality="CR")
        if not bs:
            rows.append([pid, "", "", "", "", 0])
            detail.append([pid, "No Lung Opacity / Not Normal"])
        for x, y, bw, bh in bs:
            rows.append([pid, x, y, bw, bh, 1])
            detail.append([pid, "Lung Opacity"])
        if bs:
            truth.append({"source_path": f"stage_2_train_images/{pid}.dcm", "suffix": None,
                          "boxes": [[label, list(b)] for b in xyxy]})
    for name, header, data in (("stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
                                rows), ("stage_2_detailed_class_info.csv", ["patientId", "class"], detail)):
        with open(root / name, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(header)
            wr.writerows(data)
    return truth


def relative_rle(mask: np.ndarray) -> str:
    """SIIM stage-1 RLE: column-major runs as (offset from the end of the previous run, length)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()  # column-major: the decoder reshapes (W, H) and transposes
    out, pos, i, n = [], 0, 0, flat.size
    while i < n:
        if flat[i]:
            j = i
            while j < n and flat[j]:
                j += 1
            out += [i - pos, j - i]
            pos, i = j, j
        else:
            i += 1
    return " ".join(str(v) for v in out)


def write_siim_acr(root: Path, rng) -> list[dict]:
    """dicom-images-train/<Study>/<Series>/<SOP>.dcm + train-rle.csv (`ImageId, EncodedPixels`)."""
    label = _sample_opt("siim_acr", "label", "Pneumothorax")
    h = w = 96
    shapes = [[synth.ellipse(h, w, 30, 20, 12, 6)], [],
              [synth.ellipse(h, w, 25, 70, 10, 8), synth.rect(h, w, 10, 60, 30, 90)]]
    rows, truth = [], []
    for comps in shapes:
        study, series, sop = uid(rng), uid(rng), uid(rng)
        rel = f"dicom-images-train/{study}/{series}/{sop}.dcm"
        img = synth.gray8(h, w, rng)
        for m in comps:
            img[m] = np.clip(img[m].astype(int) + 50, 0, 255)
        write_dicom(root / rel, img, modality="CR", uids={"study": study, "series": series, "sop": sop})
        if not comps:
            rows.append(f"{sop}, -1")
        for m in comps:  # several rows of one image: one component each, OR'ed by the reader
            rows.append(f"{sop}, {relative_rle(m)}")
        if comps:
            truth.append({"source_path": rel, "suffix": None, "boxes": [[label, synth.box(m)] for m in comps]})
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")
    return truth


WRITERS = {"lidc_idri": write_lidc_idri, "deeplesion": write_deeplesion, "fastmri_plus": write_fastmri_plus,
           "vindr_cxr": write_vindr_cxr, "rsna_pneumonia": write_rsna_pneumonia, "siim_acr": write_siim_acr}
register_sample_writers(WRITERS)
