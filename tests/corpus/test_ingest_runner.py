"""The ingest runner on a fake adapter: rejects with reasons, reconciliation, atomic publish, workers."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.adapters import ADAPTERS, Adapter
from medlvr.corpus.catalog import parse_spec
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.normalize import NormaliseConfig
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, SourceROI

SPEC = parse_spec({
    "id": "fake", "name": "Fake", "modality": "CT", "body_region": "abdomen", "adapter": "fake_adapter",
    "labels": {"lesion": "kg:lesion"}, "layout": ["*.txt"], "patient_key": {"source": "record"},
    "licence": "none", "citation": "none", "homepage": "none", "attributes": ["allowed_fact"],
})


def _img(seed, h=40, w=60):
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def _discover(spec, root):
    for key in ["good", "load_err", "boom", "nan", "dup", "boxes", "empty", "good"]:
        yield RecordRef(key, {"image": f"{key}.png"}, patient=f"P-{key}",
                        attributes={"allowed_fact": 1, "PatientName": "DOE^JOHN"})
    yield Reject(spec.id, "../escape.png", "discover", "path escapes the dataset root: '../escape.png'", "escape")


def _load(spec, root, ref):
    k = ref.key
    if k == "load_err":
        raise RecordError("corrupt or truncated image x.png: broken")
    if k == "boom":
        raise ValueError("something nobody foresaw")
    if k == "nan":
        a = np.ones((10, 10), np.float32)
        a[3, 3] = np.nan
        return [SourceImage("nan.png", a, "percentile")]
    if k == "empty":
        return []
    if k == "interrupt":
        raise KeyboardInterrupt
    rois = [SourceROI("lesion", (10, 5, 30, 25), "box")]
    if k == "boxes":
        rois += [SourceROI("lesion", (float("nan"), 1, 2, 3), "box"), SourceROI("lesion", (5, 5, 5, 9), "box"),
                 SourceROI("lesion", (100, 100, 120, 130), "box"), SourceROI("lesion", (-5, 30, 20, 50), "box"),
                 SourceROI("tumour?", (1, 1, 9, 9), "box")]
        return [SourceImage("boxes.png", _img(2), "uint8", rois, roi_rejects=[("lesion", "mask file unreadable")])]
    return [SourceImage(f"{k}.png", _img(1), "uint8", rois, attributes={"slice_role": "key"})]


@pytest.fixture
def fake_adapter(monkeypatch):
    monkeypatch.setitem(ADAPTERS, "fake_adapter", Adapter("fake_adapter", _discover, _load, "test"))


def _rejects(out):
    return pq.read_table(out / "fake" / "rejects.parquet").to_pylist()


def test_every_record_is_out_or_rejected_with_reason(tmp_path, fake_adapter):
    (tmp_path / "ds").mkdir()
    s = ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig(patient_salt="s"))
    assert s.records_in == 9 and s.records_out == 2 and s.records_rejected == 7
    assert s.layout_missing == ["*.txt"]
    rej = _rejects(tmp_path / "out")
    rec = {r["record_key"]: r for r in rej if r["level"] == "record"}
    assert "escapes" in rec["escape"]["reason"]
    assert "corrupt or truncated" in rec["load_err"]["reason"]
    assert "unexpected ValueError: something nobody foresaw" in rec["boom"]["reason"]
    assert "NaN" in rec["nan"]["reason"]
    assert "duplicate image id" in rec["dup"]["reason"]
    assert "no images" in rec["empty"]["reason"]
    assert "duplicate record id 'good'" in rec["good"]["reason"]
    roi_reasons = sorted(r["reason"] for r in rej if r["level"] == "roi")
    # (the duplicate image's box is a reject row too: every object of every image is accounted for)
    assert len(roi_reasons) == 6 and s.rois_rejected == 6
    for frag in ["NaN", "degenerate", "outside", "not in the catalog label map", "mask file unreadable",
                 "on a duplicate image"]:
        assert any(frag in r for r in roi_reasons), frag
    rois = pq.read_table(tmp_path / "out" / "fake" / "rois.parquet").to_pylist()
    assert s.rois_out == len(rois) == 3
    clipped = [r for r in rois if r["clipped"]]
    assert len(clipped) == 1 and clipped[0]["box_orig"] == [0.0, 30.0, 20.0, 40.0]


def test_outputs_carry_no_identifier_and_only_whitelisted_attributes(tmp_path, fake_adapter):
    (tmp_path / "ds").mkdir()
    ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig(patient_salt="s"))
    imgs = pq.read_table(tmp_path / "out" / "fake" / "images.parquet").to_pylist()
    attrs = {im["record_key"]: json.loads(im["attributes"]) for im in imgs}
    assert attrs == {"good": {"allowed_fact": 1, "slice_role": "key"}, "boxes": {"allowed_fact": 1}}
    for im in imgs:
        assert "P-good" not in im["patient_key"] and len(im["patient_key"]) == 20
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert b"DOE^JOHN" not in blob and b"P-good" not in blob and b"P-boxes" not in blob


def test_salt_changes_patient_keys_and_is_stable(tmp_path, fake_adapter):
    (tmp_path / "ds").mkdir()
    keys = []
    for salt, out in [("a", "o1"), ("a", "o2"), ("b", "o3")]:
        ingest_dataset(SPEC, tmp_path / "ds", tmp_path / out, IngestConfig(patient_salt=salt))
        keys.append(pq.read_table(tmp_path / out / "fake" / "images.parquet").column("patient_key").to_pylist())
    assert keys[0] == keys[1] and keys[0] != keys[2]


def test_generated_salt_is_kept_private_and_reused(tmp_path, fake_adapter, monkeypatch):
    monkeypatch.delenv("MEDLVR_PATIENT_SALT", raising=False)
    (tmp_path / "ds").mkdir()
    ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig())
    salt_file = tmp_path / "out" / ".patient_salt"
    assert (salt_file.stat().st_mode & 0o777) == 0o600
    k1 = pq.read_table(tmp_path / "out" / "fake" / "images.parquet").column("patient_key").to_pylist()
    ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig())
    assert pq.read_table(tmp_path / "out" / "fake" / "images.parquet").column("patient_key").to_pylist() == k1


def test_failed_rebuild_keeps_previous_version(tmp_path, fake_adapter, monkeypatch):
    (tmp_path / "ds").mkdir()
    ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig(patient_salt="s"))
    before = (tmp_path / "out" / "fake" / "summary.json").read_text()

    def discover_then_interrupt(spec, root):
        yield from _discover(spec, root)
        yield RecordRef("interrupt", {"image": "i.png"}, patient="x")

    monkeypatch.setitem(ADAPTERS, "fake_adapter", Adapter("fake_adapter", discover_then_interrupt, _load, "t"))
    with pytest.raises(KeyboardInterrupt):
        ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", IngestConfig(patient_salt="s"))
    assert (tmp_path / "out" / "fake" / "summary.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".patient_salt") == ["fake"]


def test_workers_give_identical_tables(tmp_path, fake_adapter):
    (tmp_path / "ds").mkdir()
    outs = []
    for w, per_task in ((1, 1), (2, 1), (2, 4)):  # 4 records a task: the last task is a partial one
        out = tmp_path / f"w{w}-{per_task}"
        summary = ingest_dataset(SPEC, tmp_path / "ds", out, IngestConfig(patient_salt="s", workers=w,
                                                                          records_per_task=per_task))
        outs.append([pq.read_table(out / "fake" / f"{t}.parquet").to_pylist() for t in ("images", "rois", "rejects")])
    assert summary.records_in % 4 != 0
    assert outs[0] == outs[1] == outs[2]


def test_png_encoder_and_heap_setting_change_no_pixel(tmp_path, fake_adapter):
    import io

    from PIL import Image

    (tmp_path / "ds").mkdir()
    tables = {}
    for name, cfg in {"fast": IngestConfig(patient_salt="s"),
                      "pil": IngestConfig(patient_salt="s", keep_heap=False,
                                          normalise=NormaliseConfig(png_encoder="pil", png_compress_level=6))}.items():
        ingest_dataset(SPEC, tmp_path / "ds", tmp_path / name, cfg)
        tables[name] = pq.read_table(tmp_path / name / "fake" / "images.parquet").to_pylist()
    assert len(tables["fast"]) == len(tables["pil"]) > 0
    for a, b in zip(tables["fast"], tables["pil"]):
        fast, pil = (np.asarray(Image.open(io.BytesIO(row.pop("png")))) for row in (a, b))
        assert np.array_equal(fast, pil)  # two encoders, the same pixels ...
        assert a == b  # ... and every other column, the content-hash image id included, is the same


def test_resize_budget_applies_and_boxes_scale(tmp_path, fake_adapter):
    (tmp_path / "ds").mkdir()
    cfg = IngestConfig(patient_salt="s", normalise=NormaliseConfig(max_side=30, pad_to_square=True))
    ingest_dataset(SPEC, tmp_path / "ds", tmp_path / "out", cfg)
    im = pq.read_table(tmp_path / "out" / "fake" / "images.parquet").to_pylist()[0]
    assert (im["width"], im["height"], im["pad"]) == (30, 30, [0, 5, 0, 5])
    roi = pq.read_table(tmp_path / "out" / "fake" / "rois.parquet").to_pylist()[0]
    assert roi["box"] == [5.0, 7.5, 15.0, 17.5]


def test_missing_dataset_root_is_a_clear_error(tmp_path, fake_adapter):
    from medlvr.corpus.ingest import DatasetMissing

    with pytest.raises(DatasetMissing, match="does not exist"):
        ingest_dataset(SPEC, tmp_path / "nope", tmp_path / "out")


def test_first_salt_is_shared_by_concurrent_processes(tmp_path, monkeypatch):
    import multiprocessing as mp

    from medlvr.corpus.ingest import resolve_salt

    monkeypatch.delenv("MEDLVR_PATIENT_SALT", raising=False)
    with mp.get_context("fork").Pool(4) as pool:
        salts = pool.starmap(resolve_salt, [(tmp_path, None)] * 8)
    assert len(set(salts)) == 1 and len(salts[0]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == [".patient_salt"]  # no temporary files left


def test_task_size_follows_the_measured_cost_of_a_record():
    from medlvr.corpus.ingest import _chunks, _TaskSizer

    sizer = _TaskSizer(max_records=4, target_s=0.05)
    assert sizer.size == 1  # nothing measured yet
    sizer.observe(0.012)  # 2-D images: ~12 ms a record -> 4 a task (50 ms // 12 ms, capped at 4)
    assert sizer.size == 4
    sizer.observe(0.2)  # a CT volume: the running mean 0.8 * 12 + 0.2 * 200 ms = 49.6 ms -> 1 a task
    assert sizer.size == 1
    sizer = _TaskSizer(max_records=4, target_s=0.05)
    sizer.observe(0.02)
    assert sizer.size == 2
    assert [len(c) for c in _chunks(range(5), sizer)] == [2, 2, 1]


def _missing_files(root, n):
    def discover(spec, _root):
        for i in range(n):  # each reason names its own file, as adapters write them, once with the absolute path
            path = f"{root}/images/case_{i:03d}.png" if i % 2 else f"images/case_{i:03d}.png"
            yield Reject(spec.id, path, "discover", f"file referenced but missing: {path}", f"k{i}")
        yield RecordRef("ok", {"image": "ok.png"}, patient="P")

    def load(spec, _root, ref):  # a library error naming the absolute path of a file inside and one outside the root
        return [SourceImage("ok.png", _img(5), "uint8", [SourceROI("lesion", (1, 1, 9, 9), "box")], roi_rejects=[
            ("lesion", f"cannot read {root}/masks/ok_mask.png: no such file /elsewhere/tmp/ok_mask.img")])]
    return discover, load


def test_reasons_group_by_kind_and_carry_no_absolute_path(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    root.mkdir()
    discover, load = _missing_files(root, 20)
    monkeypatch.setitem(ADAPTERS, "fake_adapter", Adapter("fake_adapter", discover, load, "test"))
    s = ingest_dataset(SPEC, root, tmp_path / "out", IngestConfig(patient_salt="s"))
    kind = "discover: file referenced but missing: <path>"
    assert s.reasons[kind] == 20 and len(s.reasons) == 2, s.reasons  # 20 files: one kind, not 20 at count 1
    examples = s.reason_examples[kind]
    assert len(examples) == 3 and examples[1] == {"path": "images/case_001.png",
                                                  "reason": "file referenced but missing: images/case_001.png"}
    assert all(r["source_path"].startswith("images/") for r in _rejects(tmp_path / "out") if r["level"] == "record")
    roi = [r["reason"] for r in _rejects(tmp_path / "out") if r["level"] == "roi"]
    assert roi == ["lesion: cannot read masks/ok_mask.png: no such file ok_mask.img"]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "summary.json")
    blob += json.dumps({k: v for k, v in s.as_dict().items() if k != "out_dir"}).encode()
    assert str(tmp_path).encode() not in blob and b"/elsewhere" not in blob


def test_an_ignored_label_is_a_reject_with_the_catalogs_reason_and_an_unknown_one_a_finding(tmp_path, fake_adapter):
    """`ignored_labels` turns an ROI of a deliberately unused label into a reject that says why; a label the
    catalog neither maps nor ignores keeps the 'not in the catalog label map' reason (something to report)."""
    spec = parse_spec({**{k: getattr(SPEC, k) for k in ("id", "name", "modality", "body_region", "adapter",
                                                         "labels", "licence", "citation", "homepage")},
                       "layout": ["*.txt"], "patient_key": {"source": "record"},
                       "ignored_labels": {"tumour?": "an uncertain reading, not a finding"}})
    (tmp_path / "ds").mkdir()
    s = ingest_dataset(spec, tmp_path / "ds", tmp_path / "out", IngestConfig(patient_salt="s"))
    roi_reasons = [r["reason"] for r in _rejects(tmp_path / "out") if r["level"] == "roi"]
    assert "label 'tumour?' is ignored by the catalog: an uncertain reading, not a finding" in roi_reasons
    assert not any("not in the catalog label map" in r for r in roi_reasons)
    assert s.rois_rejected == 6
    (tmp_path / "ds2").mkdir()
    ingest_dataset(SPEC, tmp_path / "ds2", tmp_path / "out2", IngestConfig(patient_salt="s"))
    reasons2 = [r["reason"] for r in _rejects(tmp_path / "out2") if r["level"] == "roi"]
    assert "label 'tumour?' is not in the catalog label map" in reasons2
