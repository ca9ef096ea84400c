"""A10 rle_csv: both decoders against known arrays, round trips, out-of-bounds runs, SIIM and DSB layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from medlvr.corpus.adapters.rle import decode_relative, decode_standard, encode_relative, encode_standard
from medlvr.corpus.catalog import load_catalog
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordError
from tests.corpus.helpers import assert_reconciles, assert_truth_recovered, ingest_sample
from tests.corpus.test_adapter_csv_boxes import boxes, run, write_dicom

CFG = IngestConfig(patient_salt="t")
# h=3, w=4; column-major pixel numbers (0-based): 1 -> (row 1, col 0), 2 -> (2, 0), 6 -> (0, 2)
KNOWN = np.array([[0, 0, 1, 0],
                  [1, 0, 0, 0],
                  [1, 0, 0, 0]], dtype=bool)


def test_relative_decoder_known_array():
    # offset 1 from pixel 0, run 2 (pixels 1, 2); then offset 3 from the end (pixel 3) -> pixel 6, run 1
    assert np.array_equal(decode_relative("1 2 3 1", 3, 4), KNOWN)


def test_standard_decoder_known_array():
    assert np.array_equal(decode_standard("2 2 7 1", 3, 4), KNOWN)  # 1-indexed starts


def test_non_square_is_transposed_not_reshaped():
    m = decode_standard("1 2", 2, 5)  # the first column, both rows
    assert m[:, 0].all() and m.sum() == 2


@pytest.mark.parametrize("decode, rle, why", [
    (decode_relative, "10 5", "past the image end"),
    (decode_relative, "0 12 0 1", "past the image end"),
    (decode_standard, "12 2", "past the image end"),
    (decode_standard, "0 2", "start >= 1"),
    (decode_standard, "1 0", "length > 0"),
    (decode_relative, "1 2 3", "odd number"),
    (decode_relative, "1 x", "non-integer"),
])
def test_bad_runs_raise(decode, rle, why):
    with pytest.raises(RecordError, match=why):
        decode(rle, 3, 4)


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_round_trip_both_encodings(mask):
    h, w = mask.shape
    assert np.array_equal(decode_standard(encode_standard(mask), h, w), mask)
    assert np.array_equal(decode_relative(encode_relative(mask), h, w), mask)


@pytest.mark.parametrize("dataset_id", ["siim_acr", "dsb2018"])
def test_sample_exact_boxes_through_ingest(tmp_path, dataset_id):
    ing = ingest_sample(tmp_path, dataset_id)
    assert_reconciles(ing.summary)
    assert assert_truth_recovered(ing) > 0


# ------------------------------------------------------------------ SIIM native layout
def _siim(root: Path, rows: list[str], sops=("1.2.3", "1.2.4", "1.2.5")) -> None:
    for k, sop in enumerate(sops):
        arr = np.random.default_rng(k).integers(0, 255, (32, 32), dtype=np.uint8)
        write_dicom(root / "dicom-images-train" / f"1.9.{k}" / f"1.8.{k}" / f"{sop}.dcm", arr)
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")


def test_siim_rows_or_and_negative(tmp_path):
    a = np.zeros((32, 32), bool)
    a[2:8, 3:9] = True     # component 1
    b = np.zeros((32, 32), bool)
    b[20:30, 15:25] = True  # component 2, in a second row of the same image
    _siim(tmp_path, [f"1.2.3, {encode_relative(a)}", f"1.2.3, {encode_relative(b)}", "1.2.4, -1"])
    imgs, rej = run(load_catalog()["siim_acr"], tmp_path)
    assert not rej
    assert boxes(imgs["1.2.3"]) == [["pneumothorax", [3.0, 2.0, 9.0, 8.0]], ["pneumothorax", [15.0, 20.0, 25.0, 30.0]]]
    assert imgs["1.2.4"].rois == [] and imgs["1.2.4"].attributes["negative"]


def test_siim_bad_records_reject(tmp_path):
    _siim(tmp_path, ["1.2.3, 1000 50", "1.2.4, -1", "9.9.9, -1", "1.2.5, -1"],
          sops=("1.2.3", "1.2.4", "1.2.5", "1.2.5"))
    s = ingest_dataset(load_catalog()["siim_acr"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    # 1.2.3: run past the end; 9.9.9: no such DICOM; 1.2.5: two files with one SOP UID
    assert (s.records_in, s.records_out, s.records_rejected) == (4, 1, 3)
    text = " ".join(s.reasons)
    assert "past the image end" in text and "file referenced but missing" in text and "duplicate image id" in text


# ------------------------------------------------------------------ DSB native layout
def test_dsb_rgba_and_one_roi_per_row(tmp_path):
    iid = "abc123"
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255
    (tmp_path / "stage1_train" / iid / "images").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "stage1_train" / iid / "images" / f"{iid}.png")
    n1 = np.zeros((20, 30), bool)
    n1[1:3, 1:3] = True     # 4 px: below the speck size, still a nucleus
    n2 = np.zeros((20, 30), bool)
    n2[10:15, 20:28] = True
    (tmp_path / "stage1_train_labels.csv").write_text(
        f"ImageId,EncodedPixels\n{iid},{encode_standard(n1)}\n{iid},{encode_standard(n2)}\n")
    imgs, _ = run(load_catalog()["dsb2018"], tmp_path)
    img = imgs[iid]
    assert img.pixels.shape == (20, 30, 3)
    assert boxes(img) == [["nucleus", [1.0, 1.0, 3.0, 3.0]], ["nucleus", [20.0, 10.0, 28.0, 15.0]]]
    assert [r.area_px for r in img.rois] == [4.0, 40.0]


def test_dsb_path_escape_and_truncated_png(tmp_path):
    (tmp_path / "stage1_train" / "good" / "images").mkdir(parents=True)
    png = tmp_path / "stage1_train" / "good" / "images" / "good.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:40])  # truncated
    (tmp_path / "stage1_train_labels.csv").write_text("ImageId,EncodedPixels\ngood,1 3\n../..,1 3\n")
    s = ingest_dataset(load_catalog()["dsb2018"], tmp_path, tmp_path / "out", CFG)
    assert_reconciles(s)
    assert (s.records_in, s.records_rejected) == (2, 2)
    assert any("escapes" in k for k in s.reasons) and any("truncated" in k or "corrupt" in k or "readable" in k
                                                          for k in s.reasons)
