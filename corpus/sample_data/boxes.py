"""Sample writers for the box/polygon/RLE families that are not DICOM: NIH bbox, OCT5k, ChestX-Det, LIVECell,
DSB 2018, BCCD, MoNuSeg. Each writes a miniature in the dataset's native layout, with the quirks of
docs/datasets.md §8, and returns the true boxes (pixel-edge xyxy in original pixels).

Polygons use integer vertices, so the true box is [min x, min y, max x + 1, max y + 1]: the rasteriser
includes the pixels its vertices name. Records the adapters must reject (missing image, degenerate box) are
written too but have no truth entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medlvr.corpus.adapters.rle import encode_standard
from medlvr.corpus.sample_data import register_sample_writers, synth


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _poly_box(pts) -> list[float]:
    a = np.asarray(pts, dtype=float)
    return [float(a[:, 0].min()), float(a[:, 1].min()), float(a[:, 0].max() + 1), float(a[:, 1].max() + 1)]


def _diamond(cx: int, cy: int, rx: int, ry: int) -> list[list[int]]:
    return [[cx, cy - ry], [cx + rx, cy], [cx, cy + ry], [cx - rx, cy]]


def write_nih_bbox(root: Path, rng) -> list[dict]:
    specs = {"00000001_000.png": [("Atelectasis", 20.5, 30.25, 24.0, 18.5), ("Effusion", 70.0, 60.0, 30.0, 40.0)],
             "00000001_001.png": [("Infiltrate", 10.0, 12.0, 40.0, 30.0)],
             "00000002_000.png": [("Nodule", 50.75, 40.5, 12.25, 12.0)]}
    lines = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]  # the real header quirk
    truth = []
    for name, boxes in specs.items():
        img = synth.gray8(128, 128, rng)
        if name == "00000002_000.png":  # a few NIH PNGs are RGBA: the adapter converts them to L
            rgba = np.dstack([img, img, img, np.full_like(img, 255)])
            _png(root / "images" / name, rgba, "RGBA")
        else:
            _png(root / "images" / name, img)
        for label, x, y, w, h in boxes:
            lines.append(f"{name},{label},{x},{y},{w},{h}")
        truth.append({"source_path": f"images/{name}", "suffix": None,
                      "boxes": [[lb, [x, y, x + w, y + h]] for lb, x, y, w, h in boxes]})
    (root / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n")
    return truth


def write_oct5k(root: Path, rng) -> list[dict]:
    # the release's table: Detection/all_bounding_boxes.csv, class names spelled without spaces ("Softdrusen")
    specs = {"CNV-1234-1.jpeg": [("Fluid", 10, 20, 40, 36), ("Softdrusen", 60, 50, 80, 58)],
             "DRUSEN-1234-2.jpeg": [("Harddrusen", 30, 40, 44, 48)],
             "DME-5678-1.jpeg": [("Fluid", 5, 5, 25, 30)]}
    rows = ["image,class,xmin,ymin,xmax,ymax"]
    truth = []
    for name, boxes in specs.items():
        (root / "Images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(synth.gray8(64, 96, rng)).save(root / "Images" / name, quality=90)
        rows += [f"{name},{lb},{x0},{y0},{x1},{y1}" for lb, x0, y0, x1, y1 in boxes]
        truth.append({"source_path": f"Images/{name}", "suffix": None,
                      "boxes": [[lb, [float(x0), float(y0), float(x1), float(y1)]] for lb, x0, y0, x1, y1 in boxes]})
    (root / "Detection").mkdir(parents=True, exist_ok=True)
    (root / "Detection" / "all_bounding_boxes.csv").write_text("\n".join(rows) + "\n")
    return truth


def write_chestx_det(root: Path, rng) -> list[dict]:
    sets = {"train": {"36199.png": [("Effusion", _diamond(30, 70, 14, 10)),
                                    ("Nodule", [[80, 20], [92, 20], [92, 31], [80, 31]])],
                      "36200.png": []},  # a normal image: all three lists empty
            "test": {"40001.png": [("Pneumothorax", [[10, 10], [40, 12], [25, 40]])]}}
    truth = []
    for split, recs in sets.items():
        out = []
        for name, finds in recs.items():
            img = synth.gray8(96, 112, rng)
            boxes = [_poly_box(p) for _, p in finds]
            for b in boxes:
                img[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = 200
            _png(root / f"{split}_data" / name, img)
            out.append({"file_name": name, "syms": [s for s, _ in finds],
                        "boxes": [[int(b[0]), int(b[1]), int(b[2]) - 1, int(b[3]) - 1] for b in boxes],
                        "polygons": [p for _, p in finds]})
            truth.append({"source_path": f"{split}_data/{name}", "suffix": None,
                          "boxes": [[s, b] for (s, _), b in zip(finds, boxes)]})
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(out))
    return truth


def _coco_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major runs, starting with a (possibly empty) background run."""
    counts, cur, run = [], False, 0
    for v in mask.T.ravel():
        if bool(v) != cur:
            counts.append(run)
            cur, run = bool(v), 0
        run += 1
    counts.append(run)
    return counts


def write_livecell(root: Path, rng) -> list[dict]:
    sets = {"train": ("livecell_train_val_images", ["A172_Phase_A7_1_00d00h00m_1.tif"]),
            "val": ("livecell_train_val_images", ["BT474_Phase_B3_2_01d04h00m_3.tif"]),
            "test": ("livecell_test_images", ["SHSY5Y_Phase_C4_1_02d00h00m_2.tif"])}
    truth, ann_id, img_id = [], 1, 1
    for split, (folder, names) in sets.items():
        images, anns = [], {}
        for name in names:
            h, w = 72, 96
            img = synth.gray8(h, w, rng, base=110)
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "images" / folder / name)
            images.append({"id": img_id, "file_name": name, "width": w, "height": h})
            boxes = []
            for k, (cx, cy) in enumerate([(15, 15), (45, 20), (75, 50)]):
                pts = _diamond(cx, cy, 8, 6)
                anns[str(ann_id)] = {"id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                                     "segmentation": [[v for p in pts for v in p]],
                                     "bbox": [cx - 8, cy - 6, 16, 12], "area": 100.0}
                boxes.append(["cell", _poly_box(pts)])
                ann_id += 1
            # one instance as uncompressed COCO RLE (column-major, background run first)
            m = synth.rect(h, w, 20, 50, 32, 62)
            counts = _coco_counts(m)
            anns[str(ann_id)] = {"id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                                 "segmentation": {"size": [h, w], "counts": counts},
                                 "bbox": [20, 50, 12, 12], "area": 144.0}
            boxes.append(["cell", synth.box(m)])
            ann_id += 1
            img_id += 1
            truth.append({"source_path": f"images/{folder}/{name}", "suffix": None, "boxes": boxes})
        # the released LIVECell files store `annotations` as a DICT keyed by id (pycocotools chokes on it)
        doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
        (root / f"livecell_coco_{split}.json").write_text(json.dumps(doc))
    return truth


def write_dsb2018(root: Path, rng) -> list[dict]:
    rows = ["ImageId,EncodedPixels"]
    truth = []
    for i, (h, w) in enumerate([(64, 80), (72, 72)]):
        image_id = f"{i:02d}ab{int(rng.integers(1e6)):06d}" + "f" * 50
        base = root / "stage1_train" / image_id
        rgb = synth.rgb8(h, w, rng, tint=(30, 30, 30))
        boxes = []
        for k, (cy, cx, ry, rx) in enumerate([(15, 15, 6, 8), (40, 50, 9, 7), (h - 10, 20, 4, 5)]):
            m = synth.ellipse(h, w, cy, cx, ry, rx)
            rgb[m] = 220
            _png(base / "masks" / f"mask{k:03d}.png", (m * 255).astype(np.uint8))
            rows.append(f"{image_id},{encode_standard(m)}")
            boxes.append(["nucleus", synth.box(m)])
        # RGBA PNG (the DSB quirk): the adapter drops alpha
        _png(base / "images" / f"{image_id}.png", np.dstack([rgb, np.full((h, w), 255, np.uint8)]), "RGBA")
        truth.append({"source_path": f"stage1_train/{image_id}/images/{image_id}.png", "suffix": None,
                      "boxes": boxes})
    (root / "stage1_train_labels.csv").write_text("\n".join(rows) + "\n")
    return truth


def _voc_xml(filename: str, w: int, h: int, objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, (a, b, c, d) in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def write_bccd(root: Path, rng) -> list[dict]:
    w, h = 96, 72
    # 1-based inclusive coordinates: pixel-edge box = [xmin-1, ymin-1, xmax, ymax]
    specs = {"BloodImage_00000": [("RBC", (11, 21, 40, 50)), ("WBC", (50, 10, 80, 40)),
                                  ("Platelets", (30, 30, 29, 40))],          # degenerate: xmax < xmin
             "BloodImage_00003": [("RBC", (61, 41, 110, 72))],              # reaches past the right edge
             "BloodImage_00007": []}                                         # numbering has gaps; no objects
    ann, jpg = root / "BCCD" / "Annotations", root / "BCCD" / "JPEGImages"
    ann.mkdir(parents=True, exist_ok=True)
    jpg.mkdir(parents=True, exist_ok=True)
    truth = []
    for stem, objs in specs.items():
        Image.fromarray(synth.rgb8(h, w, rng)).save(jpg / f"{stem}.jpg", quality=90)
        (ann / f"{stem}.xml").write_text(_voc_xml(f"{stem}.jpg", w, h, objs))
        boxes = []
        for n, (a, b, c, d) in objs:
            if c > a and d > b:  # xmax <= xmin is degenerate in the file (rejected): no truth
                boxes.append([n, [float(a - 1), float(b - 1), float(min(c, w)), float(min(d, h))]])
        truth.append({"source_path": f"BCCD/JPEGImages/{stem}.jpg", "suffix": None, "boxes": boxes})
    # an XML whose image is missing (a known BCCD issue): rejected in discovery
    (ann / "BloodImage_00002.xml").write_text(_voc_xml("BloodImage_00002.jpg", w, h, [("RBC", (1, 1, 9, 9))]))
    sets = root / "BCCD" / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("BloodImage_00000\nBloodImage_00002\n")
    (sets / "val.txt").write_text("BloodImage_00003\n")
    (sets / "test.txt").write_text("BloodImage_00007\n")
    (sets / "trainval.txt").write_text("BloodImage_00000\nBloodImage_00002\nBloodImage_00003\n")
    return truth


def aperio_xml(regions: list[list[list[float]]]) -> str:
    regs = "".join(
        f'<Region Id="{i + 1}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x:.6f}" Y="{y:.6f}" Z="0"/>' for x, y in pts)
        + "</Vertices></Region>" for i, pts in enumerate(regions))
    return ('<?xml version="1.0"?><Annotations MicronsPerPixel="0.252000"><Annotation Id="1" Type="4">'
            '<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes><Regions>'
            f'<RegionAttributeHeaders/>{regs}</Regions><Plots/></Annotation></Annotations>')


def write_monuseg(root: Path, rng) -> list[dict]:
    files = {"MoNuSeg 2018 Training Data/Tissue Images/TCGA-18-5592-01Z-00-DX1.tif":
             "MoNuSeg 2018 Training Data/Annotations/TCGA-18-5592-01Z-00-DX1.xml",
             "MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif": "MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.xml"}
    truth = []
    for tif, xml in files.items():
        img = synth.rgb8(96, 96, rng, tint=(210, 160, 200))
        regions = [_diamond(20, 20, 7, 6), [[50, 10], [62, 12], [60, 24], [48, 22]], _diamond(70, 70, 9, 8)]
        for pts in regions:
            b = _poly_box(pts)
            img[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = (90, 40, 140)
        (root / tif).parent.mkdir(parents=True, exist_ok=True)
        (root / xml).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / tif)
        (root / xml).write_text(aperio_xml(regions))
        truth.append({"source_path": tif, "suffix": None, "boxes": [["nucleus", _poly_box(p)] for p in regions]})
    return truth


WRITERS = {"nih_bbox": write_nih_bbox, "oct5k": write_oct5k, "chestx_det": write_chestx_det,
           "livecell": write_livecell, "dsb2018": write_dsb2018, "bccd": write_bccd, "monuseg": write_monuseg}
register_sample_writers(WRITERS)
