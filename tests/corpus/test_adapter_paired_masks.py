"""A11 paired_masks: decoders on known arrays, exact box recovery for the 10 paired-mask datasets, bad inputs."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlvr.corpus.adapters import ADAPTERS
from medlvr.corpus.adapters.mask_decoders import decode, grey
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.masks import box_of
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.paths import take_escapes
from medlvr.corpus.records import RecordError, RecordRef, Reject
from medlvr.corpus.sample_data import load_truth, write_samples
from medlvr.corpus.sample_data.synth import box, ellipse
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample

IDS = ["busi", "tn3k", "hc18", "isic2018", "ph2", "ham10000", "idrid", "refuge", "adam", "aroi"]
AD = ADAPTERS["paired_masks"]


# ------------------------------------------------------------------------------------------------ helpers
def sample(tmp_path: Path, ds: str) -> Path:
    write_samples(tmp_path, [ds], seed=0)
    return tmp_path / ds


def run(ds: str, root: Path, spec=None):
    """discover + load directly: ({source_path: Counter((label, box))}, {source_path: SourceImage}, rejects)."""
    spec = spec or load_catalog()[ds]
    boxes, images, rejects = {}, {}, []
    for item in AD.discover(spec, root):
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        try:
            for src in AD.load(spec, root, item):
                images[src.source_path] = (item, src)
                boxes[src.source_path] = Counter((r.label, tuple(r.box)) for r in src.rois)
        except RecordError as e:
            rejects.append(Reject(ds, item.paths["image"], e.stage, e.reason, item.key))
    return boxes, images, rejects


def reasons(rejects) -> str:
    return " | ".join(r.reason for r in rejects)


def ingest(tmp_path: Path, ds: str, root: Path):
    s = ingest_dataset(load_catalog()[ds], root, tmp_path / "out", IngestConfig(patient_salt="t"))
    assert_reconciles(s)
    return s


# ----------------------------------------------------------------------------------------------- decoders
def test_binary_threshold_tolerates_jpeg_noise():
    arr = np.array([[0, 30, 127, 128, 200, 255]], np.uint8)
    (d,) = decode({"decoder": "binary", "label": "x"}, arr)
    assert d.mask.tolist() == [[False, False, False, True, True, True]]


def test_inverted_decoder_makes_black_the_structure():
    arr = np.array([[0, 10, 127, 128, 255]], np.uint8)
    (d,) = decode({"decoder": "inverted", "label": "disc"}, arr)
    assert d.mask.tolist() == [[True, True, True, False, False]]


def test_rgb_any_keeps_pure_red_that_grey_conversion_would_lose():
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 1] = (255, 0, 0)
    arr[1, 2] = (0, 0, 1)
    (d,) = decode({"decoder": "rgb_any", "label": "ma"}, arr)
    assert d.mask.tolist() == [[False, True, False], [False, False, True]]
    # the same red through a grey conversion is 76, which a >127 binary threshold drops
    grey_l = np.asarray(Image.fromarray(arr).convert("L"))
    assert grey_l[0, 1] == 76 and not decode({"decoder": "binary", "label": "ma"}, grey_l)[0].mask.any()


def test_grey_of_colour_mask_uses_strongest_channel():
    arr = np.zeros((1, 2, 3), np.uint8)
    arr[0, 0] = (0, 200, 0)
    assert grey(arr).tolist() == [[200, 0]]
    same = np.stack([np.array([[5, 9]], np.uint8)] * 3, axis=2)
    assert grey(same).tolist() == [[5, 9]]


def test_outline_fill_recovers_filled_ellipse_and_rejects_open_outline():
    from scipy import ndimage

    filled = ellipse(40, 50, 20, 25, 12, 18)
    outline = filled & ~ndimage.binary_erosion(filled)
    (d,) = decode({"decoder": "outline_fill", "label": "head"}, np.where(outline, 255, 0).astype(np.uint8))
    assert np.array_equal(d.mask, filled)
    opened = outline.copy()
    opened[:, 25:27] = False  # cut the ring: nothing is enclosed any more
    with pytest.raises(RecordError, match="encloses no area"):
        decode({"decoder": "outline_fill", "label": "head"}, np.where(opened, 255, 0).astype(np.uint8))


def _clipped_ellipse_box(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> list[float]:
    """The pixel-edge box of the pixels whose centres' grid coordinates lie in the ellipse, from its parameters:
    row by row, the half-width rx * sqrt(1 - ((y - cy) / ry)^2), clipped to the image."""
    rows = [y for y in range(h) if abs(y - cy) <= ry]
    half = [rx * np.sqrt(1.0 - ((y - cy) / ry) ** 2) for y in rows]
    x0 = min(max(int(np.ceil(cx - hw)), 0) for hw in half)
    x1 = max(min(int(np.floor(cx + hw)), w - 1) for hw in half) + 1
    return [float(x0), float(rows[0]), float(x1), float(rows[-1] + 1)]


def _hc18_png_outline(tmp_path: Path, h: int, w: int, cy, cx, ry, rx) -> np.ndarray:
    """A 1-px annotation outline of the WHOLE ellipse, cut where it leaves the image, through a PNG file."""
    from scipy import ndimage

    pad = 60
    yy, xx = np.mgrid[-pad:h + pad, -pad:w + pad]
    whole = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    ring = (whole & ~ndimage.binary_erosion(whole))[pad:pad + h, pad:pad + w]
    path = tmp_path / "cut_Annotation.png"
    Image.fromarray(np.where(ring, 255, 0).astype(np.uint8)).save(path)
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("where, params", [
    ("top", (6, 50, 22, 34)), ("bottom", (66, 44, 20, 30)), ("top and bottom", (36, 54, 44, 30)),
    ("left", (36, 5, 20, 26)), ("top-left corner", (4, 6, 22, 30))])
def test_outline_cut_by_the_image_edge_is_closed_against_the_border(tmp_path, where, params):
    h, w = 72, 108
    arr = _hc18_png_outline(tmp_path, h, w, *params)
    (d,) = decode({"decoder": "outline_fill", "label": "head"}, arr)
    assert box_of(d.mask) == tuple(_clipped_ellipse_box(h, w, *params)), where
    cy, cx, ry, rx = params
    yy, xx = np.mgrid[0:h, 0:w]
    assert np.array_equal(d.mask, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0), where


def test_hc18_sample_has_heads_cut_off_by_the_top_and_bottom_edge(tmp_path):
    root = sample(tmp_path, "hc18")
    rows = {"top": 0, "bottom": -1}
    cut = {edge: [p.name for p in sorted((root / "training_set").glob("*_Annotation.png"))
                  if np.asarray(Image.open(p))[row].any()] for edge, row in rows.items()}
    assert cut["top"] and cut["bottom"], cut
    truth = {t["source_path"]: t["boxes"][0][1] for t in load_truth(tmp_path, "hc18")}
    _, images, rejects = run("hc18", root)
    assert not rejects
    got = {path: list(src.rois[0].box) for path, (_, src) in images.items()}
    for name in cut["top"] + cut["bottom"]:
        src = "training_set/" + name.replace("_Annotation", "")
        assert got[src] == truth[src]
        assert truth[src][1] == 0.0 or truth[src][3] == 72.0  # the box reaches the edge it was cut by


def test_value_coded_refuge_hierarchy_with_interpolated_values():
    arr = np.array([[255, 200, 151, 150, 140, 128, 101, 100, 90, 0]], np.uint8)
    entry = {"decoder": "value_coded", "values": [0, 128, 255], "classes": [{"label": "optic disc", "max": 150},
                                                   {"label": "optic cup", "max": 100, "parent": "optic disc"}]}
    disc, cup = decode(entry, arr)
    assert disc.mask.tolist() == [[False, False, False, True, True, True, True, True, True, True]]
    assert cup.mask.tolist() == [[False] * 7 + [True] * 3]
    assert cup.parent == "optic disc" and not (cup.mask & ~disc.mask).any()  # disc ⊇ cup


def test_label_map_rules_colour_map_and_bad_values():
    lab = np.array([[0, 1, 5], [6, 7, 2]], np.uint8)
    entry = {"decoder": "label_map", "values": list(range(8)),
             "label_rules": [{"label": "fluid", "values": [6, 7]}, {"label": "layer", "values": [1, 2],
                                                                   "instances": False}]}
    fluid, layer = decode(entry, lab)
    assert fluid.mask.tolist() == [[False, False, False], [True, True, False]] and fluid.instances
    assert layer.mask.tolist() == [[False, True, False], [False, False, True]] and not layer.instances
    with pytest.raises(RecordError, match="outside the documented"):
        decode(entry, np.array([[0, 9]], np.uint8))
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    cm = dict(entry, colour_map=[[0, 0, 0, 0], [255, 0, 0, 7]])
    assert decode(cm, rgb)[0].mask.tolist() == [[False, True]]
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(RecordError, match="unknown colour"):
        decode(cm, rgb)
    with pytest.raises(RecordError, match="NaN"):
        decode(entry, np.array([[0.0, np.nan]], np.float32))


def test_unknown_decoder_is_a_record_error():
    with pytest.raises(RecordError, match="unknown mask decoder"):
        decode({"decoder": "nope", "label": "x"}, np.zeros((2, 2), np.uint8))


# ------------------------------------------------------------------------------- exact recovery, per dataset
# the samples' conflicting duplicates (same pixels as an earlier image, other annotations): rejected by ingest
CONFLICTING = {"busi": ["Dataset_BUSI_with_GT/malignant/malignant (2).png"]}


@pytest.mark.parametrize("ds", IDS)
def test_discover_load_recovers_exact_boxes(tmp_path, ds):
    root = sample(tmp_path, ds)
    boxes, _, rejects = run(ds, root)
    assert not rejects, reasons(rejects)
    truth = load_truth(tmp_path, ds)
    # the sample's conflicting duplicate loads like any image (ingest rejects it): it has no truth
    assert sorted(set(boxes) - set(CONFLICTING.get(ds, ()))) == sorted(t["source_path"] for t in truth)
    for t in truth:  # exactly the true boxes: nothing missing, nothing extra
        assert boxes[t["source_path"]] == Counter((lab, tuple(b)) for lab, b in t["boxes"]), t["source_path"]


@pytest.mark.parametrize("ds", IDS)
def test_ingest_recovers_truth_through_normalisation(tmp_path, ds):
    ing = ingest_sample(tmp_path, ds)
    assert_reconciles(ing.summary)
    assert ing.summary.records_rejected == len(CONFLICTING.get(ds, ())), ing.summary.reasons
    assert assert_truth_recovered(ing) > 0


def test_sidecar_facts_spacing_patients_splits(tmp_path):
    _, im, _ = run("hc18", sample(tmp_path / "h", "hc18"))
    ref, src = im["training_set/000_HC.png"]
    assert src.spacing_mm == (0.125, 0.125) and src.attributes["head_circumference_mm"] > 0
    _, im, _ = run("ham10000", sample(tmp_path / "m", "ham10000"))
    pats = {p: ref.patient for p, (ref, _) in im.items()}
    assert pats["HAM10000_images_part_1/ISIC_0024306.jpg"] == pats["HAM10000_images_part_1/ISIC_0024307.jpg"]
    assert all("vidir" not in str(src.attributes) for _, src in im.values())  # institution column not mapped
    _, im, _ = run("refuge", sample(tmp_path / "r", "refuge"))
    glaucoma = {p: src.attributes.get("glaucoma") for p, (_, src) in im.items()}
    assert glaucoma == {"Training400/Glaucoma/g0001.jpg": "glaucoma", "Training400/Non-Glaucoma/n0001.jpg":
                        "non-glaucoma", "REFUGE-Validation400/V0001.jpg": None, "Test400/T0001.jpg": "glaucoma"}
    assert {ref.split for ref, _ in im.values()} == {"train", "val", "test"}
    _, im, _ = run("adam", sample(tmp_path / "a", "adam"))
    ref, src = im["Training400/AMD/A0001.jpg"]
    assert src.attributes == {"amd": "amd", "fovea_x": 41.5, "fovea_y": 39.25}
    assert all(r.label != "fovea" for r in src.rois)  # a point fact, never a box
    _, im, _ = run("tn3k", sample(tmp_path / "t", "tn3k"))
    assert im["tn3k/trainval-image/0000.jpg"][1].attributes == {"malignancy": 1, "cv_val_fold": 0}
    assert im["tn3k/test-image/0000.jpg"][1].attributes == {}  # label4trainval.csv does not cover test
    _, im, _ = run("ph2", sample(tmp_path / "p", "ph2"))
    assert im["PH2Dataset/PH2 Dataset images/IMD058/IMD058_Dermoscopic_Image/IMD058.bmp"][1].attributes[
        "blue_whitish_veil"] == "P"


def test_fixture_quirks_are_present(tmp_path):
    tn = sample(tmp_path, "tn3k")
    m = np.asarray(Image.open(tn / "tn3k/trainval-mask/0000.jpg").convert("L"))
    assert ((m > 0) & (m < 255)).sum() > 0  # real JPEG noise in the mask
    rf = sample(tmp_path, "refuge")
    assert set(np.unique(np.asarray(Image.open(rf / "REFUGE-Test-GT/Disc_Cup_Masks/G/T0001.bmp")))) \
        == {0, 90, 128, 140, 255}
    idr = sample(tmp_path, "idrid")
    tif = np.asarray(Image.open(idr / "A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/"
                                      "2. Haemorrhages/IDRiD_01_HE.tif"))
    assert tif.ndim == 3 and set(map(tuple, tif.reshape(-1, 3))) == {(0, 0, 0), (255, 0, 0)}
    assert not list(idr.rglob("IDRiD_01_SE.tif"))
    adam = sample(tmp_path, "adam")
    assert np.asarray(Image.open(adam / "Disc_Masks/A0001.bmp")).mean() > 200  # inverted: mostly white
    busi = sample(tmp_path, "busi")
    assert (busi / "Dataset_BUSI_with_GT/benign/benign (2)_mask_1.png").is_file()


# ------------------------------------------------------------------------------------------------ bad input
def test_busi_normal_empty_mask_is_negative_but_empty_lesion_mask_is_rejected(tmp_path):
    root = sample(tmp_path, "busi")
    p = root / "Dataset_BUSI_with_GT/benign/benign (1)_mask.png"
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(p)
    boxes, _, rejects = run("busi", root)
    assert boxes["Dataset_BUSI_with_GT/normal/normal (1).png"] == Counter()
    assert [r.source_path for r in rejects] == ["Dataset_BUSI_with_GT/benign/benign (1).png"]
    assert "empty" in rejects[0].reason
    s = ingest(tmp_path, "busi", root)
    # (benign (1) is rejected, so its pixel twin malignant (2) is no longer a duplicate of a written image)
    assert (s.records_in, s.records_out, s.records_rejected) == (5, 4, 1)


def test_corrupt_truncated_and_wrong_size_masks_are_rejected(tmp_path):
    root = sample(tmp_path, "isic2018")
    gt = root / "ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png"
    data = gt.read_bytes()
    gt.write_bytes(data[: len(data) // 2])  # truncated PNG: header fine, pixel stream cut
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(
        root / "ISIC2018_Task1_Validation_GroundTruth/ISIC_0012255_segmentation.png")
    _, _, rejects = run("isic2018", root)
    msg = reasons(rejects)
    assert len(rejects) == 2 and "truncated" in msg and "is 12x10 but the image is 96x72" in msg
    s = ingest(tmp_path, "isic2018", root)
    assert (s.records_out, s.records_rejected) == (0, 2)


def test_corrupt_image_is_rejected(tmp_path):
    root = sample(tmp_path, "ham10000")
    (root / "HAM10000_images_part_2/ISIC_0029306.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _, _, rejects = run("ham10000", root)
    assert len(rejects) == 1 and "ISIC_0029306" in rejects[0].reason


def test_missing_mask_error_vs_absent(tmp_path):
    root = sample(tmp_path / "i", "isic2018")
    (root / "ISIC2018_Task1_Validation_GroundTruth/ISIC_0012255_segmentation.png").unlink()
    _, _, rejects = run("isic2018", root)
    assert len(rejects) == 1 and "missing" in rejects[0].reason and rejects[0].stage == "discover"
    root = sample(tmp_path / "a", "adam")
    (root / "Training400-Lesion/Lesion_Masks/hemorrhage/A0001.bmp").unlink()
    boxes, _, rejects = run("adam", root)
    assert not rejects and {lab for lab, _ in boxes["Training400/AMD/A0001.jpg"]} == {"optic disc", "drusen"}


def test_paths_escaping_the_root_are_rejected(tmp_path):
    root = sample(tmp_path / "s", "isic2018")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((72, 96), 255, np.uint8)).save(outside)
    gt = root / "ISIC2018_Task1_Validation_GroundTruth/ISIC_0012255_segmentation.png"
    gt.unlink()
    os.symlink(outside, gt)
    _, _, rejects = run("isic2018", root)
    assert len(rejects) == 1 and "outside the dataset root" in rejects[0].reason
    img = root / "ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg"  # an image that is a symlink out
    os.symlink(outside, img)
    take_escapes()
    _, _, rejects = run("isic2018", root)
    # walk does not yield the image that leaves the root; it keeps it for the runner's rejects
    assert take_escapes() == ["ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg"]
    assert [r.source_path for r in rejects] == ["ISIC2018_Task1-2_Validation_Input/ISIC_0012255.jpg"]
    assert "outside the dataset root" in rejects[0].reason
    img.unlink()
    spec = load_catalog()["isic2018"]
    bad = dataclasses.replace(spec, options={**spec.options, "sets": [
        dict(spec.options["sets"][0], masks={"lesion": "../{stem}_segmentation.png"}),
        dict(spec.options["sets"][1], masks={"lesion": "/etc/{stem}.png"})]})
    _, _, rejects = run("isic2018", root, bad)
    assert len(rejects) == 2 and "escapes" in rejects[0].reason and "absolute" in rejects[1].reason


def test_duplicate_ids_and_missing_metadata_rows(tmp_path):
    root = sample(tmp_path, "ham10000")
    shutil.copy(root / "HAM10000_images_part_1/ISIC_0024306.jpg", root / "HAM10000_images_part_2/ISIC_0024306.jpg")
    (root / "HAM10000_images_part_2/ISIC_0099999.jpg").write_bytes(
        (root / "HAM10000_images_part_2/ISIC_0029306.jpg").read_bytes())
    shutil.copy(root / "HAM10000_segmentations_lesion_tschandl/ISIC_0029306_segmentation.png",
                root / "HAM10000_segmentations_lesion_tschandl/ISIC_0099999_segmentation.png")
    _, _, rejects = run("ham10000", root)
    msg = reasons(rejects)
    assert len(rejects) == 2 and "duplicate record id 'ISIC_0024306'" in msg and "no row for 'ISIC_0099999'" in msg
    s = ingest(tmp_path, "ham10000", root)
    assert (s.records_in, s.records_out, s.records_rejected) == (5, 3, 2)


def test_hc18_open_outline_and_bad_pixel_size(tmp_path):
    root = sample(tmp_path, "hc18")
    ann = root / "training_set/000_HC_Annotation.png"
    a = np.asarray(Image.open(ann)).copy()
    a[:, 50:58] = 0  # break the ellipse outline
    Image.fromarray(a).save(ann)
    csv = root / "training_set_pixel_size_and_HC.csv"
    csv.write_text(csv.read_text().replace("001_2HC.png,0.171", "001_2HC.png,nan"))
    _, _, rejects = run("hc18", root)
    msg = reasons(rejects)
    assert len(rejects) == 2 and "encloses no area" in msg and "invalid pixel size" in msg
    csv.unlink()  # the sidecar the whole dataset depends on
    with pytest.raises(RecordError, match="missing"):
        list(AD.discover(load_catalog()["hc18"], root))


def test_ambiguous_mask_and_naming_rule(tmp_path):
    root = sample(tmp_path / "r", "refuge")
    g = root / "REFUGE-Test-GT/Disc_Cup_Masks"
    (g / "N").mkdir()
    shutil.copy(g / "G/T0001.bmp", g / "N/T0001.bmp")  # the test mask in both G/ and N/
    _, _, rejects = run("refuge", root)
    assert len(rejects) == 1 and "2 files match" in rejects[0].reason
    root = sample(tmp_path / "b", "busi")
    shutil.copy(root / "Dataset_BUSI_with_GT/normal/normal (1).png", root / "Dataset_BUSI_with_GT/normal/copy 3.png")
    _, _, rejects = run("busi", root)
    assert len(rejects) == 1 and "naming rule" in rejects[0].reason


def test_label_map_with_undocumented_value_and_malformed_ph2_row(tmp_path):
    root = sample(tmp_path / "a", "aroi")
    p = root / "24 patient/patient2/mask/number/patient2_raw0012.png"
    lab = np.asarray(Image.open(p)).copy()
    lab[0, 0] = 9
    Image.fromarray(lab).save(p)
    _, _, rejects = run("aroi", root)
    assert len(rejects) == 1 and "outside the documented" in rejects[0].reason
    root = sample(tmp_path / "p", "ph2")
    txt = root / "PH2Dataset/PH2_dataset.txt"
    txt.write_text(txt.read_text().replace("|  T  |  A  |  A  |  A  |  A  ||", "|  T  ||"))
    _, _, rejects = run("ph2", root)
    assert len(rejects) == 1 and "malformed row" in rejects[0].reason


def test_specks_are_reported_not_boxed(tmp_path):
    root = sample(tmp_path, "busi")
    m = np.zeros((80, 96), np.uint8)
    m[10:13, 10:13] = 255  # 9 px, below the 16 px speck threshold
    Image.fromarray(m).save(root / "Dataset_BUSI_with_GT/benign/benign (1)_mask.png")
    _, im, rejects = run("busi", root)
    src = im["Dataset_BUSI_with_GT/benign/benign (1).png"][1]
    # the reason gives the size and the threshold, and names the object (mask file, label, component)
    assert not rejects and src.rois == [] and src.roi_rejects == [
        ("benign lesion", "component of 9 px below the minimum size 16 px",
         "Dataset_BUSI_with_GT/benign/benign (1)_mask.png#label=benign lesion/component=1")]


def test_load_of_a_mask_deleted_after_discovery_is_a_record_error(tmp_path):
    root = sample(tmp_path, "refuge")
    spec = load_catalog()["refuge"]
    refs = [r for r in AD.discover(spec, root) if isinstance(r, RecordRef)]
    (root / refs[0].paths["mask:disc_cup"]).unlink()
    with pytest.raises(RecordError, match="missing"):
        AD.load(spec, root, refs[0])


def test_truth_boxes_are_not_trivially_whole_image(tmp_path):
    # guards the fixtures themselves: every true box lies strictly inside its image
    for ds in IDS:
        write_samples(tmp_path, [ds], seed=0)
        for t in load_truth(tmp_path, ds):
            w, h = Image.open(tmp_path / ds / t["source_path"]).size
            for _, b in t["boxes"]:
                assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h and (b[2] - b[0]) * (b[3] - b[1]) < w * h


def test_synth_box_matches_masks_box_of():
    from medlvr.corpus.masks import box_of

    m = ellipse(30, 40, 15, 20, 6, 9)
    assert tuple(box(m)) == box_of(m)
