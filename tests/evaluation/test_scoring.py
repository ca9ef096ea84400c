"""Scoring on fixed predictions: per-sample correctness and the Table 1 / Table 2 numbers, computed by hand."""

import json

import pytest

from medlvr.corpus.evalsets.base import BenchmarkError, Sample
from medlvr.evaluation.scoring import (make_record, read_records, score_file, score_records, summarize, table1, table2,
                                write_records)

OPTS = (("A", "liver"), ("B", "kidney"), ("C", "spleen"), ("D", "lung"))


def mc(bench, sid, gold, out, **tags):
    return make_record(Sample(bench, sid, "q?", "mc", gold, OPTS, (), tags), out, n_tokens=4, model="m", k_latent=8)


def yn(bench, sid, gold, out, closed=True):
    s = Sample(bench, sid, "q?", "yesno" if closed else "open", gold, (), (), {"closed": closed})
    return make_record(s, out, n_tokens=2, model="m", k_latent=8)


def omni():
    return [
        mc("omnimedvqa", "o1", "A", "<answer>A</answer>", modality="CT"),
        mc("omnimedvqa", "o2", "B", "B", modality="CT(Computed Tomography)"),
        mc("omnimedvqa", "o3", "C", "no idea", modality="CT"),  # parse failure
        mc("omnimedvqa", "o4", "D", "The answer is D", modality="MRI"),
        mc("omnimedvqa", "o5", "A", "C", modality="X-Ray"),  # wrong
        mc("omnimedvqa", "o6", "A", "", modality="X-Ray"),  # parse failure
    ]


def external():
    return [
        yn("slake", "s1", "yes", "Yes"), yn("slake", "s2", "no", "No, there is a nodule."),
        yn("slake", "s3", "no", "yes"), yn("slake", "s4", "Kidney", "<answer>kidney</answer>", closed=False),
        yn("vqa_rad", "v1", "yes", "I do not know"), yn("vqa_rad", "v2", "no", "no"),
        mc("pmc_vqa", "p1", "A", "A"), mc("pmc_vqa", "p2", "B", "(B)"), mc("pmc_vqa", "p3", "C", "spleen"),
        mc("pmc_vqa", "p4", "D", "A"),
        mc("mmmu_hm", "m1", "A", "A"), mc("mmmu_hm", "m2", "B", "C"),
        make_record(Sample("mmmu_hm", "m3", "q?", "open", "4.5"), "<answer>4.5</answer>"),
        mc("medxpertqa_mm", "x1", "A", "B"), mc("medxpertqa_mm", "x2", "B", "B or C"),
    ]


def test_per_sample_fields():
    s = score_records(omni())
    assert [r["correct"] for r in s] == [True, True, False, True, False, False]
    assert [r["parse_failed"] for r in s] == [False, False, True, False, False, True]
    assert [r["parsed"] for r in s] == ["A", "B", None, "D", "C", None]
    assert s[0]["model"] == "m" and s[0]["k_latent"] == 8 and s[0]["n_tokens"] == 4


def test_table1_hand_computed():
    t = table1(score_records(omni()))
    assert t["modalities"]["CT"]["accuracy"] == pytest.approx(2 / 3)
    assert t["modalities"]["MRI"]["accuracy"] == 1.0
    assert t["modalities"]["X-Ray"]["accuracy"] == 0.0
    assert t["modalities"]["X-Ray"]["parse_fail_rate"] == 0.5
    assert t["pooled"] == pytest.approx(3 / 6)  # micro
    assert t["mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # macro
    assert t["missing"] == ["Ultrasound", "Dermoscopy", "Fundus", "OCT", "Microscopy"]
    extra = omni() + [mc("omnimedvqa", "o7", "A", "A", modality="unknown")]
    t = table1(score_records(extra))
    assert t["pooled"] == pytest.approx(4 / 7) and t["mean"] == pytest.approx(5 / 9)
    assert t["other"]["unknown"]["n"] == 1


def test_table2_hand_computed():
    t = table2(score_records(external()))
    accs = {k: v["accuracy"] for k, v in t["benchmarks"].items()}
    assert accs == pytest.approx({"slake": 2 / 3, "vqa_rad": 1 / 2, "pmc_vqa": 3 / 4, "mmmu_hm": 1 / 2,
                                  "medxpertqa_mm": 0.0})
    assert t["benchmarks"]["slake"]["n"] == 3 and t["benchmarks"]["mmmu_hm"]["n"] == 2
    assert t["average"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1 / 2 + 0) / 5)
    assert t["missing"] == []
    partial = table2(score_records([r for r in external() if r["benchmark"] != "medxpertqa_mm"]))
    assert partial["missing"] == ["medxpertqa_mm"]
    assert partial["average"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1 / 2) / 4)


def test_summarize_subsets_and_failures():
    recs = external()
    recs[0]["finish_reason"] = "length"
    s = summarize(score_records(recs + omni()), by_tags=("closed",))
    assert s["slake"]["all"]["accuracy"] == pytest.approx(3 / 4)
    assert s["slake"]["closed"]["accuracy"] == pytest.approx(2 / 3)
    assert s["slake"]["all"]["truncated"] == 1
    assert s["vqa_rad"]["all"]["parse_fail_rate"] == 0.5
    assert s["medxpertqa_mm"]["all"]["parse_failed"] == 1
    assert s["mmmu_hm"]["by_kind"]["open"]["accuracy"] == 1.0
    assert s["mmmu_hm"]["all"]["mean_tokens"] == pytest.approx((4 + 4) / 2)  # open record has no n_tokens
    assert s["omnimedvqa"]["by_modality"]["pooled"] == 0.5
    assert s["slake"]["by_closed"]["True"]["n"] == 3
    assert "closed" not in s["pmc_vqa"]


def test_gold_from_samples_overrides_record():
    rec = {"benchmark": "pmc_vqa", "sample_id": "p1", "output": "kidney"}
    sample = Sample("pmc_vqa", "p1", "q?", "mc", "B", OPTS)
    (r,) = score_records([rec], {("pmc_vqa", "p1"): sample})
    assert r["correct"] and r["parsed"] == "B"
    with pytest.raises(ValueError, match="gold"):
        score_records([rec])
    with pytest.raises(BenchmarkError, match="no sample"):
        score_records([rec], {})


def test_jsonl_roundtrip_truncated_tail_and_duplicates(tmp_path):
    path = tmp_path / "preds.jsonl"
    recs = omni()
    write_records(path, recs)
    with path.open("a") as f:
        f.write(json.dumps({**recs[2], "output": "C"}) + "\n")  # rerun of o3: the last record wins
        f.write('{"benchmark": "omnimedvqa", "sample_id": "o9", "outp')  # crash mid-append
    got = read_records(path)
    assert [r["sample_id"] for r in got] == ["o1", "o2", "o3", "o4", "o5", "o6"]
    scored = score_file(path, tmp_path / "scored.jsonl")
    assert table1(scored)["pooled"] == pytest.approx(4 / 6)
    assert read_records(tmp_path / "scored.jsonl")[2]["correct"] is True
    assert read_records(tmp_path / "missing.jsonl") == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n" + json.dumps(recs[0]) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_records(bad)
    bad.write_text(json.dumps({"benchmark": "x", "output": ""}) + "\n")
    with pytest.raises(ValueError, match="sample_id"):
        read_records(bad)


def test_end_to_end_on_sample_benchmarks(tmp_path):
    """Gold answers written as outputs score 100% on every sample benchmark, through the JSONL file."""
    import importlib

    from medlvr.corpus.evalsets.registry import get_benchmark
    from medlvr.corpus.evalsets.registry import write_benchmark_samples

    dirs = {"slake": "slake", "vqa_rad": "vqa_rad", "pmc_vqa": "pmc_vqa", "mmmu_hm": "mmmu",
            "medxpertqa_mm": "medxpertqa"}
    for mod in ("slake", "vqa_rad", "pmc_vqa", "mmmu", "medxpertqa"):
        importlib.import_module(f"medlvr.corpus.evalsets.{mod}")
    write_benchmark_samples(tmp_path / "data", list(dirs.values()))
    records = []
    for bench, d in dirs.items():
        for s in get_benchmark(bench).loader(tmp_path / "data" / d):
            records.append(make_record(s, f"<Medlvr_Start><Medlvr_Latent><Medlvr_End><answer>{s.answer}</answer>",
                                       n_tokens=5, model="gold", k_latent=1))
    write_records(tmp_path / "p.jsonl", records)
    scored = score_file(tmp_path / "p.jsonl")
    assert all(r["correct"] for r in scored)
    t = table2(scored)
    assert t["average"] == 1.0 and t["missing"] == []
    assert t["benchmarks"]["slake"]["n"] == 3 and t["benchmarks"]["vqa_rad"]["n"] == 3
    assert t["benchmarks"]["mmmu_hm"]["n"] == 5
