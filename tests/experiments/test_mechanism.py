"""Mechanism experiment (experiments/mechanism/: mechanism.py entry, mechanism_config / _jobs / _report): the
synthetic grounding task is well-formed, every cached job is keyed by what determines it, and the `--quick` run
produces well-formed results, plots and doc sections (not that ROI helps)."""

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
        assert Image.open(__import__("io").BytesIO(r["image"])).size == (r["width"], r["height"])
    # SFT prompt == VLPO prompt (the same text in both stages and at evaluation)
    s: Sample = samples[0]
    assert prompt_text(s, summary["instruction"]) in by_q
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 6 and all(Path(h["image"]).is_file() and len(h["distractor_boxes"]) == 3 for h in held)


@pytest.mark.slow
@pytest.mark.timeout(600)
def _mechanism_module(name="mechanism"):
    """The experiment's entry module (or `mechanism_jobs` / `mechanism_config`), imported as the script does."""
    import importlib
    import sys

    here = str(ROOT / "experiments" / "mechanism")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


@pytest.mark.parametrize("override, line", [
    ("sft.stpes=3", "unknown config key sft.stpes (did you mean sft.steps?)"),
    ("stage1.roi.bottlenek={p: 1}", "unknown config key stage1.roi.bottlenek (did you mean stage1.roi.bottleneck?)"),
    ("tasks.single.lesion_cels=2", "unknown config key tasks.single.lesion_cels (did you mean "
                                   "tasks.single.lesion_cells?)"),
    ("quick.rl.stpes=2", "unknown config key quick.rl.stpes (did you mean quick.rl.steps?)"),
    ("variants.roi_vlpo.rl=vlp", "variants.roi_vlpo.rl: must be one of 'grpo', 'medlvr_grpo', 'vlpo', 'none', "
                                 "got str 'vlp'"),
])
def test_a_typo_below_the_top_level_is_one_line(override, line):
    mechanism = _mechanism_module()
    with pytest.raises(_mechanism_module("mechanism_config").ConfigError) as e:
        mechanism.load_config(ROOT / "configs" / "mechanism.yaml", overrides=[override])
    assert str(e.value) == line
    assert mechanism.load_config(ROOT / "configs" / "mechanism.yaml", quick=True)["sft"]["steps"] == 4


def test_quick_experiment(tmp_path):
    mechanism = _mechanism_module()
    out = tmp_path / "results.json"
    doc = tmp_path / "page.md"  # a copy of docs/mechanism.md, whose generated sections the report fills
    doc.write_text((ROOT / "docs/mechanism.md").read_text())
    rc = mechanism.main(["--config", str(ROOT / "configs" / "mechanism.yaml"), "--quick",
                         "--set", f"work_dir={tmp_path / 'work'}", "--set", f"results={out}",
                         "--set", f"docs_dir={tmp_path / 'docs'}", "--set", f"doc={doc}"])
    assert rc == 0
    res = json.loads(out.read_text())
    tasks = res["config"]["tasks"]
    assert set(res["tasks"]) == {"single", "multi"} and res["main_task"] == "single"
    assert res["task_info"]["multi"]["lesion_cells"] == 4 and res["task_info"]["single"]["lesion_cells"] == 1
    for task, spec in tasks.items():
        runs, agg = res["tasks"][task]["runs"], res["tasks"][task]["aggregate"]
        assert set(runs) == set(spec["variants"])
        for v in spec["variants"]:
            a = agg[v]
            assert 0 <= a["accuracy"]["mean"] <= 100 and 0 <= a["stage1_accuracy"]["mean"] <= 100
            rec = next(iter(runs[v].values()))
            assert Path(rec["model_dir"]).is_dir() and rec["sft"]["curve"]
            latent_info = json.loads((Path(rec["model_dir"]) / "medlvr_latent.json").read_text())
            assert latent_info.get("text_blind", False) == v.startswith("tb_")  # the recipe reached the checkpoint
            if v == "vanilla_grpo":
                assert "cos_roi" not in a and "accuracy_closed" not in a
                continue
            for k in ("cos_roi", "cos_distractor", "cos_full"):
                assert -1.0 <= a[k]["mean"] <= 1.0
            assert a["drop_zero"]["mean"] == pytest.approx(a["accuracy"]["mean"] - a["accuracy_zero"]["mean"])
            assert 0 <= a["accuracy_closed"]["mean"] <= 100 and "probe_accuracy" in a
            assert sorted(a["k_sweep"], key=int) == ["2", "4"]
            assert set(a["k_sweep"]["2"]) == {"accuracy", "accuracy_zero"}
            e = rec["eval"]
            for route in ("segment", "text", "both"):  # the closed route swaps ran
                assert 0 <= e[f"accuracy_swap_{route}"] <= 100 and f"donor_following_{route}" in e
    # the bottleneck schedules reached the trainers: annealed 1 -> 0, constant 1
    curves = {v: next(iter(res["runs"][v].values()))["sft"]["curve"] for v in ("roi_anneal_vlpo", "tb_roi_bn1_vlpo")}
    assert curves["roi_anneal_vlpo"][0]["closed"] == 1.0 and curves["roi_anneal_vlpo"][-1]["closed"] == 0.0
    assert {c["closed"] for c in curves["tb_roi_bn1_vlpo"]} == {1.0}
    goals = res["tasks"]["single"]["goals"]
    assert set(goals["variants"]) == {"roi_anneal_vlpo", "tb_roi_bn1_vlpo", "tb_noroi_bn1_grpo"}
    for g in goals["variants"].values():
        assert set(g["per_seed"]) == {"0"} and g["all_seeds"] == all(x["all"] for x in g["per_seed"].values())
    assert any(k.startswith("tb_roi_bn1_vlpo - tb_noroi_bn1_grpo") for k in goals["pairs"])
    assert "| tb_roi_bn1_vlpo |" in res["table_md"] and "Task `multi`" in res["table_md"]
    assert res["cost"]["jobs_run"] == 5 and res["cost"]["jobs_reused"] == 0 and res["cost"]["cpu_seconds"] > 0
    text = doc.read_text()  # the doc's generated sections now hold this run's tables
    assert res["table_md"] in text and "<!-- /generated:results -->" in text
    assert len(res["plots"]) >= 3
    for p in res["plots"]:
        assert Path(p).is_file() and Path(p).stat().st_size > 1000


def test_cached_jobs_rerun_exactly_when_their_key_changes(tmp_path, monkeypatch):
    """A job (and its init checkpoint) is reused while its key holds; one changed field of the model shape
    (rms_norm_eps) gives new keys, a new init with that eps, and reruns the job."""
    jobs = _mechanism_module("mechanism_jobs")
    config = _mechanism_module("mechanism_config")
    ran = []
    monkeypatch.setattr(jobs, "run_job", lambda cfg, task, seed, stage1, extra=None: ran.append(stage1) or
                        {"v": {"seed": seed}})

    def load(*sets):
        return config.load_config(ROOT / "configs" / "mechanism.yaml", quick=True,
                                  overrides=[f"work_dir={tmp_path}", "seeds=[0]", *sets])

    cfg = load()
    job = (cfg, "single", 0, "vanilla", None)
    assert jobs.job_entry(job)[6] is False and ran == ["vanilla"]
    assert jobs.job_entry(job)[6] is True and ran == ["vanilla"]  # unchanged: reused
    assert jobs.job_entry((load(), "single", 0, "vanilla", None))[6] is True  # a fresh load, same key
    eps = load("model.rms_norm_eps=1.0e-5")
    assert jobs.job_file(eps, "single", 0, "vanilla", None) != jobs.job_file(cfg, "single", 0, "vanilla", None)
    assert jobs.job_entry((eps, "single", 0, "vanilla", None))[6] is False and ran == ["vanilla", "vanilla"]
    a, b = jobs.init_checkpoint(cfg, 0), jobs.init_checkpoint(eps, 0)
    assert a != b and jobs.init_checkpoint(cfg, 0) == a
    assert json.loads((a / "config.json").read_text())["text_config"]["rms_norm_eps"] == 1e-6
    assert json.loads((b / "config.json").read_text())["text_config"]["rms_norm_eps"] == 1e-5
    stored = json.loads(jobs.job_file(eps, "single", 0, "vanilla", None).read_text())
    assert stored["key"]["model"]["rms_norm_eps"] == 1e-5
    # another budget or another stage-1 recipe is another key; the code version is part of every key
    assert jobs.job_file(load("sft.steps=5"), "single", 0, "vanilla", None) != jobs.job_file(cfg, "single", 0,
                                                                                              "vanilla", None)
    assert stored["key"]["code"] == jobs.code_version()


def test_multi_cell_lesion_spans_a_block():
    for it in make_items(10, seed=2, split="train", lesion_cells=4):
        x0, y0, x1, y1 = it["box"]
        assert (x1 - x0, y1 - y0) == (56.0, 56.0)
        for b in it["distractor_boxes"]:  # distractors are single cells outside the lesion block
            assert b[2] - b[0] == 28.0 and (b[2] <= x0 or b[0] >= x1 or b[3] <= y0 or b[1] >= y1)
        assert (it["image"][int(y0), int(x0):int(x1), 0] > 180).all()  # red frame along the whole block
    with pytest.raises(ValueError, match="lesion_cells"):
        make_items(1, seed=0, split="train", lesion_cells=3)


def test_a_config_typo_as_run_from_the_command_line_is_one_line_and_exit_2():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "experiments/mechanism/mechanism.py", "--config", "configs/mechanism.yaml",
                        "--set", "eval.k_swep=[2]"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.splitlines() == ["mechanism: error: unknown config key eval.k_swep (did you mean eval.k_sweep?)"]
