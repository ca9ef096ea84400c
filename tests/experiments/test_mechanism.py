"""Mechanism experiment (experiments/mechanism/mechanism.py): the synthetic grounding task is well-formed and the
`--quick` run produces well-formed results and plots (not that ROI helps)."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.corpus.sample_data.synthetic_grounding import PATTERNS, make_items, write_grounding_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_items_deterministic_and_grounded():
    a, b = make_items(20, seed=3, split="train"), make_items(20, seed=3, split="train")
    assert all(np.array_equal(x["image"], y["image"]) and x["box"] == y["box"] for x, y in zip(a, b))
    test = make_items(20, seed=3, split="test")
    assert not any(np.array_equal(x["image"], y["image"]) for x, y in zip(a, test))  # independent streams
    for it in a:
        x0, y0, x1, y1 = map(int, it["box"])
        img = it["image"].astype(int)
        frame = img[y0, x0:x1]  # top row of the lesion cell: the red frame
        assert (frame[:, 0] > 180).all() and (frame[:, 1] < 80).all()
        for bx in it["distractor_boxes"]:  # distractors: grey frames, no red
            d = img[int(bx[1]), int(bx[0]):int(bx[2])]
            assert (abs(d[:, 0] - d[:, 1]) < 5).all()
        assert it["answer"] == "ABCD"[it["answer_index"]] and it["options"] == list(PATTERNS)


def test_written_formats(tmp_path):
    from medlvr.corpus.shards import QA_SCHEMA
    from medlvr.corpus.evalsets.base import Sample
    from medlvr.corpus.evalsets.synthetic_grounding import load_grounding_task
    from medlvr.training.sft.collate import roi_boxes
    from medlvr.training.vlpo.data import prompt_text
    from medlvr.corpus.qa.export import render_qwen

    summary = write_grounding_task(tmp_path, n_train=12, n_test=6, seed=1)
    assert summary["counts"]["train"] == 12 and summary["counts"]["test"] == 6
    rows = pq.read_table(tmp_path / "shards" / "train" / "part-00000.parquet").to_pylist()
    assert pq.read_schema(tmp_path / "shards" / "train" / "part-00000.parquet").equals(QA_SCHEMA,
                                                                                      check_metadata=False)
    samples = load_grounding_task(tmp_path, "train")
    assert len(rows) == len(samples) == 12
    by_q = {}
    for r in rows:
        assert roi_boxes(r) == [r["boxes"][0]] and len(r["boxes"]) == 1
        q, a = render_qwen(r, 3136, 12544)
        assert a in "ABCD"
        by_q.setdefault(q, []).append(a)
        assert Image.open(__import__("io").BytesIO(r["image_png"])).size == (r["width"], r["height"])
    # SFT prompt == VLPO prompt (the same text in both stages and at evaluation)
    s: Sample = samples[0]
    assert prompt_text(s, summary["instruction"]) in by_q
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 6 and all(Path(h["image"]).is_file() and len(h["distractor_boxes"]) == 3 for h in held)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_experiment(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mechanism", ROOT / "experiments" / "mechanism" / "mechanism.py")
    mechanism = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mechanism)
    out = tmp_path / "results.json"
    rc = mechanism.main(["--config", str(ROOT / "configs" / "mechanism.yaml"), "--quick",
               "--set", f"work_dir={tmp_path / 'work'}", "--set", f"results={out}",
               "--set", f"docs_dir={tmp_path / 'docs'}"])
    assert rc == 0
    res = json.loads(out.read_text())
    variants = res["config"]["variants"]
    assert set(res["runs"]) == set(variants) == {"vanilla_grpo", "noroi_grpo", "roi_grpo", "roi_vlpo"}
    for v in variants:
        a = res["aggregate"][v]
        assert 0 <= a["accuracy"]["mean"] <= 100 and 0 <= a["stage1_accuracy"]["mean"] <= 100
        rec = next(iter(res["runs"][v].values()))
        assert Path(rec["rl"]["model_dir"]).is_dir() and rec["sft"]["curve"]
        if v == "vanilla_grpo":
            assert "cos_roi" not in a
            continue
        for k in ("cos_roi", "cos_distractor", "cos_full"):
            assert -1.0 <= a[k]["mean"] <= 1.0
        for ab in ("zero", "shuffle"):
            assert a[f"drop_{ab}"]["mean"] == pytest.approx(a["accuracy"]["mean"] - a[f"acc_{ab}"]["mean"])
        assert sorted(a["k_sweep"], key=int) == ["2", "4"]
    assert "roi_k2" in res["extra"] and res["k_train_sweep"]
    assert "| roi_vlpo |" in res["table_md"]
    assert len(res["plots"]) == 5
    for p in res["plots"]:
        assert Path(p).is_file() and Path(p).stat().st_size > 1000
