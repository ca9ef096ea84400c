"""The synthetic grounding task as a registered benchmark: its sample, its Samples (with the lesion box as ROI), and
the prompt the evaluation asks with `prompt_style: direct`, byte-identical to the question ROI-SFT trains on."""

import json

import pyarrow.parquet as pq

from medlvr.corpus.evalsets.registry import all_benchmarks, write_benchmark_samples
from medlvr.corpus.evalsets.synthetic_grounding import SAMPLE_TEST_ITEMS, load_grounding_task
from medlvr.corpus.sample_data.synthetic_grounding import write_grounding_task
from medlvr.evaluation.config import BENCHMARKS, EXTERNAL
from medlvr.evaluation.inference import prompt_text
from medlvr.evaluation.attention import sample_rois


def test_registered_after_the_paper_benchmarks_not_external():
    assert BENCHMARKS[-1] == "synthetic_grounding" and "synthetic_grounding" not in EXTERNAL
    assert all_benchmarks()["synthetic_grounding"].efficiency_quota is None


def test_sample_is_the_held_out_split_with_boxes(tmp_path):
    counts = write_benchmark_samples(tmp_path, ["synthetic_grounding"])
    assert counts == {"synthetic_grounding": SAMPLE_TEST_ITEMS}
    root = tmp_path / "synthetic_grounding"
    samples = list(all_benchmarks()["synthetic_grounding"].loader(root))
    assert len(samples) == SAMPLE_TEST_ITEMS and {s.kind for s in samples} == {"mc"}
    task = json.loads((root / "task.json").read_text())
    hist = task["counts"]["test_answer_hist"]
    assert [sum(s.answer == letter for s in samples) for letter in "ABCD"] == hist
    s = samples[0]
    x0, y0, x1, y1 = sample_rois(s)[0]
    assert (x1 - x0, y1 - y0) == (28.0, 28.0)  # one 28-pixel cell: one merged visual token
    assert task["counts"]["train"] == 0  # training data is the trainer's own (the main job writes it)


def test_direct_prompt_is_the_sft_question(tmp_path):
    write_grounding_task(tmp_path, n_train=3, n_test=3, seed=2)
    rows = pq.read_table(tmp_path / "shards" / "test" / "part-00000.parquet").to_pylist()
    samples = load_grounding_task(tmp_path, "test")
    assert [s.sample_id for s in samples] == [r["qa_id"] for r in rows]
    for s, r in zip(samples, rows):
        assert prompt_text(s, "direct") == r["question"] and s.answer == r["answer"]
        assert sample_rois(s) == r["boxes"]
