"""Issue 15 (4): no silent wrong answers. Mask values a rule does not name reject the record, in every decoder;
a box-table finding without a box is an ROI reject, never a negative image."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medlvr.corpus.adapters.mask_decoders import decode
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError
from medlvr.corpus.sample_data import write_samples
from tests.corpus.test_adapter_csv_boxes import _vindr, run

REFUGE_MASK = "Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp"
REFUGE_IMAGE = "Training400/Glaucoma/g0001.jpg"


def _refuge_with(tmp_path, stray: tuple[slice, slice] | None):
    write_samples(tmp_path / "data", ["refuge"], seed=0)
    root = tmp_path / "data" / "refuge"
    if stray is not None:
        m = np.array(Image.open(root / REFUGE_MASK))
        m[stray] = 77
        Image.fromarray(m).save(root / REFUGE_MASK)
    s = ingest_dataset(load_catalog()["refuge"], root, tmp_path / "out", IngestConfig(patient_salt="t"))
    out = tmp_path / "out" / "refuge"
    images = pq.read_table(out / "images.parquet", columns=["image_id", "source_path"]).to_pylist()
    rois = pq.read_table(out / "rois.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    return s, images, rois, rejects


def test_refuge_clean_masks_keep_their_interpolated_edges(tmp_path):
    s, images, rois, rejects = _refuge_with(tmp_path, None)
    assert s.records_rejected == 0 and REFUGE_IMAGE in {i["source_path"] for i in images}


@pytest.mark.parametrize("stray", [(slice(0, 1), slice(0, 1)), (slice(0, 6), slice(0, 6))],
                         ids=["one pixel", "a patch above the speck size"])
def test_refuge_stray_value_rejects_the_record(tmp_path, stray):
    s, images, rois, rejects = _refuge_with(tmp_path, stray)
    pixels = (stray[0].stop - stray[0].start) * (stray[1].stop - stray[1].start)
    assert REFUGE_IMAGE not in {i["source_path"] for i in images}
    assert not [r for r in rois if r["box_orig"][:2] == [0.0, 0.0]]  # the stretched disc box is never published
    record = [r for r in rejects if r["level"] == "record" and r["source_path"] == REFUGE_IMAGE]
    assert len(record) == 1
    assert f"mask has {pixels} pixels of 1 values the rule does not name" in record[0]["reason"]
    assert "77" not in record[0]["reason"]  # counts, not pixel data
    assert s.records_out == s.records_in - 1


def test_value_coded_needs_named_codes():
    entry = {"decoder": "value_coded", "classes": [{"label": "disc", "max": 150}]}
    with pytest.raises(RecordError, match="names no `values`"):
        decode(entry, np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("decoder", ["binary", "inverted", "outline_fill", "rgb_any"])
def test_threshold_decoders_reject_a_third_value(decoder):
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    m[6:14, 6:14] = 0 if decoder == "outline_fill" else 255  # an outline for outline_fill
    entry = {"decoder": decoder, "label": "x"}
    arr = np.stack([m, np.zeros_like(m), np.zeros_like(m)], axis=2) if decoder == "rgb_any" else m
    assert decode(entry, arr)[0].mask.any()  # two levels: fine
    bad = arr.copy()
    bad[0:3, 0:3] = 77
    with pytest.raises(RecordError, match="9 pixels of 1 values the rule does not name"):
        decode(entry, bad)
    assert decode({**entry, "values": "any"}, bad)[0].mask.any()  # a lossy format opts out (TN3K's JPEG)


def test_threshold_decoder_accepts_anti_aliased_edges():
    m = np.zeros((10, 10), np.uint8)
    m[3:7, 3:7] = 255
    m[2, 3:7] = 100  # a resized edge: between the background and the structure
    assert decode({"decoder": "binary", "label": "x"}, m)[0].mask.sum() == 16


def test_label_map_without_documented_values_rejects_an_unnamed_label():
    entry = {"decoder": "label_map", "label_rules": [{"label": "fluid", "values": [1, 2]}]}
    lab = np.array([[0, 1, 2], [0, 0, 1]], np.uint8)
    assert decode(entry, lab)[0].mask.sum() == 3
    lab[0, 0] = 9
    with pytest.raises(RecordError, match="1 pixels of 1 values the rule does not name"):
        decode(entry, lab)
    lab[0, 0] = 1  # between 0 and 2 but a label map has no interpolated edges: 1 is named, fine
    assert decode(entry, lab)[0].mask.sum() == 4


# ---- box tables: a finding without a box ----

def test_vindr_finding_without_box_is_an_roi_reject_not_a_negative(tmp_path):
    _vindr(tmp_path, ["a1,Nodule/Mass,8,R8,,,,", "a1,Nodule/Mass,8,R9,,,,",
                      "b2,No finding,14,R8,,,,", "b2,No finding,14,R9,,,,"])
    imgs, rej = run(load_catalog()["vindr_cxr"], tmp_path)
    assert not rej
    assert imgs["a1"].rois == [] and "negative" not in imgs["a1"].attributes
    assert imgs["a1"].roi_rejects == [("Nodule/Mass", "finding without a box (its box columns are empty)",
                                       f"train.csv#row={n}") for n in (1, 2)]
    assert imgs["b2"].rois == [] and imgs["b2"].attributes["negative"] is True  # explicit "No finding"
    s = ingest_dataset(load_catalog()["vindr_cxr"], tmp_path, tmp_path / "out", IngestConfig(patient_salt="t"))
    assert s.rois_rejected == 2 and s.rois_out == 0
    assert s.images_rejected == 1  # a1: annotated, every finding rejected: not written as if it were negative
    rows = pq.read_table(tmp_path / "out" / "vindr_cxr" / "images.parquet", columns=["record_key", "attributes"])
    negative = {r["record_key"]: '"negative": true' in r["attributes"] for r in rows.to_pylist()}
    assert negative == {"b2": True}  # a1 is not there: neither a box nor a negative, but rejected


def test_labelmap_rois_rejects_a_value_no_rule_names():
    from medlvr.corpus.masks import LabelRule, labelmap_rois

    lab = np.zeros((30, 30), np.uint8)
    lab[2:20, 2:20] = 1
    rules = [LabelRule("kidney", (1, 2))]
    assert [r.box for r in labelmap_rois(lab, rules)] == [(2.0, 2.0, 20.0, 20.0)]
    lab[25:29, 25:29] = 7
    with pytest.raises(RecordError, match="16 pixels of 1 values no label rule names"):
        labelmap_rois(lab, rules)
