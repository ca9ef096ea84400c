"""A8 json_list_boxes_polys (ChestX-Det) and A9 coco (LIVECell): exact boxes, quirks and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlvr.corpus.adapters.coco import decode_coco_rle, rle_counts
from medlvr.corpus.catalog import load_catalog, patient_of
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample
from tests.corpus.test_adapter_csv_boxes import boxes, run

CFG = IngestConfig(patient_salt="t")


@pytest.mark.parametrize("dataset_id", ["chestx_det", "livecell"])
def test_sample_exact_boxes_through_ingest(tmp_path, dataset_id):
    ing = ingest_sample(tmp_path, dataset_id)
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) > 0


def _png(path: Path, seed: int, shape=(40, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(path)


# ------------------------------------------------------------------ ChestX-Det
def _chestx(root: Path, train: list, test: list | None = None) -> None:
    (root / "ChestX_Det_train.json").write_text(json.dumps(train))
    (root / "ChestX_Det_test.json").write_text(json.dumps(test or []))


def test_chestx_polygon_box_given_box_and_fallback(tmp_path):
    for i, n in enumerate(("1.png", "2.png")):
        _png(tmp_path / "train_data" / n, i)
    _chestx(tmp_path, [
        {"file_name": "1.png", "syms": ["Nodule", "Mass", "Effusion"],
         "boxes": [[5, 6, 12, 15], [20, 20, 30, 30], [1, 1, 4, 4]],
         "polygons": [[[5, 6], [12, 6], [12, 15], [5, 15]],
                      [[20, 20], [40, 20], [40, 35], [20, 35]],   # 10 px off the given box: dropped
                      []]},                                        # no polygon: the given box (inclusive)
        {"file_name": "2.png", "syms": [], "boxes": [], "polygons": []}])
    imgs, rej = run(load_catalog()["chestx_det"], tmp_path)
    assert not rej
    img = imgs["train/1.png"]
    assert boxes(img) == [["Effusion", [1.0, 1.0, 5.0, 5.0]], ["Nodule", [5.0, 6.0, 13.0, 16.0]]]
    assert img.roi_rejects and img.roi_rejects[0][0] == "Mass" and "disagrees" in img.roi_rejects[0][1]
    assert imgs["train/2.png"].rois == [] and imgs["train/2.png"].attributes["negative"]


def test_chestx_bad_records(tmp_path):
    _png(tmp_path / "train_data" / "1.png", 0)
    _png(tmp_path / "test_data" / "5.png", 1)
    _chestx(tmp_path, [
        {"file_name": "1.png", "syms": ["Nodule"], "boxes": [], "polygons": []},     # lists differ
        {"file_name": "9.png", "syms": [], "boxes": [], "polygons": []},             # image missing
        {"file_name": "../../x.png", "syms": [], "boxes": [], "polygons": []},       # escapes
        {"file_name": "5.png", "syms": [], "boxes": [], "polygons": []}], [
        {"file_name": "5.png", "syms": [], "boxes": [], "polygons": []},
        {"file_name": "5.png", "syms": [], "boxes": [], "polygons": []}])            # duplicate
    s = ingest_dataset(load_catalog()["chestx_det"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    assert (s.records_in, s.records_out) == (6, 1)
    text = " ".join(s.reasons)
    for why in ("parallel lists differ", "file referenced but missing", "escapes", "duplicate file_name"):
        assert why in text, (why, text)


def test_chestx_not_a_list_is_dataset_error(tmp_path):
    (tmp_path / "ChestX_Det_train.json").write_text('{"file_name": "1.png"}')
    from medlvr.corpus.adapters import ADAPTERS
    with pytest.raises(RecordError, match="expected a JSON list"):
        list(ADAPTERS["json_list_boxes_polys"].discover(load_catalog()["chestx_det"], tmp_path))


# ------------------------------------------------------------------ COCO / LIVECell
def _compress(counts: list[int]) -> str:
    """pycocotools' rleToString, written out here so the decoder is checked against the reference scheme."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_compressed_rle_matches_uncompressed():
    counts = [5, 3, 40, 7, 1, 2, 100, 12]
    assert rle_counts(_compress(counts)) == counts
    m = decode_coco_rle({"size": [10, 17], "counts": counts}, (10, 17))
    assert m.sum() == 3 + 7 + 2 + 12 and m[5, 0] and m[7, 0] and not m[8, 0]  # column-major from (0, 0)


def test_rle_longer_than_image_rejected():
    with pytest.raises(ValueError, match="more than the image"):
        decode_coco_rle({"size": [4, 4], "counts": [10, 10]}, (4, 4))


def _livecell(root: Path, anns, images=None) -> None:
    name = "A172_Phase_A7_1_00d00h00m_1.tif"
    d = root / "images" / "livecell_train_val_images"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)).save(d / name)
    imgs = images if images is not None else [{"id": 7, "file_name": name, "width": 60, "height": 40}]
    (root / "livecell_coco_train.json").write_text(json.dumps(
        {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}))


def test_coco_annotations_as_list_rle_and_bbox(tmp_path):
    spec = dataclasses.replace(load_catalog()["livecell"], options={
        **load_catalog()["livecell"].options, "files": {"train": "livecell_coco_train.json"}})
    anns = [  # a LIST this time; a compressed RLE; a box-only annotation; a broken polygon
        {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[10, 10, 20, 10, 20, 18, 10, 18]]},
        {"id": 2, "image_id": 7, "category_id": 1,
         "segmentation": {"size": [40, 60], "counts": _compress([40 * 30 + 5, 4, 36, 4])}},
        {"id": 3, "image_id": 7, "category_id": 1, "segmentation": [], "bbox": [1, 2, 3, 4]},
        {"id": 4, "image_id": 7, "category_id": 1, "segmentation": [[1, 2, 3]]},
        {"id": 5, "image_id": 99, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}]  # unknown image
    _livecell(tmp_path, anns)
    imgs, rej = run(spec, tmp_path)
    img = imgs["train/A172_Phase_A7_1_00d00h00m_1.tif"]
    assert boxes(img) == [["cell", [1.0, 2.0, 4.0, 6.0]], ["cell", [10.0, 10.0, 21.0, 19.0]],
                          ["cell", [30.0, 5.0, 32.0, 9.0]]]
    assert [r.origin for r in img.rois] == ["polygon", "mask", "box"]
    assert len(img.roi_rejects) == 1 and "3 finite" in img.roi_rejects[0][1]
    assert img.attributes["cell_line"] == "A172"
    assert len(rej) == 1 and "unknown image ids" in rej[0].reason


def test_coco_duplicates_missing_and_group(tmp_path):
    spec = dataclasses.replace(load_catalog()["livecell"], options={
        **load_catalog()["livecell"].options, "files": {"train": "livecell_coco_train.json"}})
    name = "A172_Phase_A7_1_00d00h00m_1.tif"
    _livecell(tmp_path, {}, images=[{"id": 1, "file_name": name}, {"id": 1, "file_name": "other.tif"},
                                    {"id": 2, "file_name": "missing.tif"}])
    s = ingest_dataset(spec, tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    assert (s.records_in, s.records_out, s.records_rejected) == (3, 1, 2)
    assert patient_of(spec, f"images/livecell_train_val_images/{name}", None, "k") == "A172_Phase_A7_1"


def test_livecell_release_bucket_layout(tmp_path):
    """The release's bucket keeps the COCO files under LIVECell_dataset_2021/annotations/LIVECell/ and the images
    (images.zip) under LIVECell_dataset_2021/images/: the catalog finds both there, and the layout globs match."""
    from medlvr.corpus.ingest import check_layout

    spec = dataclasses.replace(load_catalog()["livecell"], options={
        **load_catalog()["livecell"].options, "files": {
            k: v for k, v in load_catalog()["livecell"].options["files"].items() if k == "train"}})
    bucket = tmp_path / "LIVECell_dataset_2021"
    _livecell(bucket, [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[10, 10, 20, 10, 20, 18]]}])
    (bucket / "annotations" / "LIVECell").mkdir(parents=True)
    (bucket / "livecell_coco_train.json").rename(bucket / "annotations" / "LIVECell" / "livecell_coco_train.json")
    imgs, rej = run(spec, tmp_path)
    assert not rej
    img = imgs["train/A172_Phase_A7_1_00d00h00m_1.tif"]
    assert img.source_path == "LIVECell_dataset_2021/images/livecell_train_val_images/A172_Phase_A7_1_00d00h00m_1.tif"
    assert boxes(img) == [["cell", [10.0, 10.0, 21.0, 19.0]]]
    assert check_layout(load_catalog()["livecell"], tmp_path) == [
        "**/livecell_coco_val.json", "**/livecell_coco_test.json", "**/livecell_test_images/*.tif"]
