"""`medlvr evaluate --config FILE` end to end on the sample benchmarks with tiny models, its config format, and
the Dagster evaluation assets."""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from medlvr.evaluation.config import ConfigError, load_eval_config  # noqa: E402

CONFIG = {
    "title": "tiny evaluation",
    "out_dir": "out",  # relative paths: against the working directory (each test runs in its tmp_path)
    "data_root": "bench",
    "sample_data": True,
    "limit": 2,
    "benchmarks": {"omnimedvqa": {}, "slake": {}, "mmmu_hm": {}},
    "models": [{"name": "base", "path": "tiny", "k_latent": 0, "prompt_style": "direct"},
               {"name": "medlvr", "path": "tiny", "tiny_seed": 1, "k_latent": 2, "variant": "ROI-SFT + VLPO"}],
    "decode": {"batch_size": 2, "max_new_tokens": 6, "max_pixels": 12544, "threads": 1},
    "efficiency": {"seed": 0, "models": ["base", "medlvr"]},
    "table4": {"models": ["base", "medlvr"]},
    "fig5": {"model": "medlvr", "k_values": [1, 2]},
    "fig3": {"models": ["base", "medlvr"], "benchmark": "slake", "n_samples": 1, "max_new_tokens": 4},
    "ablation": {"model": "medlvr", "kinds": ["zero", "shuffle", "noise"], "benchmarks": ["slake"]},
}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(tmp_path, cfg=CONFIG):
    p = tmp_path / "eval.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def test_config_format_and_errors(tmp_path):
    cfg = load_eval_config(_write(tmp_path))
    assert cfg.out_dir == (tmp_path / "out").absolute()
    assert cfg.benchmarks["mmmu_hm"]["path"] == str((tmp_path / "bench" / "mmmu").absolute())
    assert cfg.model("medlvr").label == "ROI-SFT + VLPO" and cfg.main_benchmarks == ("omnimedvqa", "slake", "mmmu_hm")
    assert load_eval_config(_write(tmp_path), ["out_dir=elsewhere", "decode.batch_size=4"]).decode.batch_size == 4
    for bad, msg in [({"bogus": 1}, "unknown config key bogus"), ({"models": []}, "non-empty"),
                     ({"fig5": {"model": "nope"}}, "unknown model"),
                     ({"ablation": {"model": "medlvr", "kinds": ["flip"]}}, "unknown"),
                     ({"main_benchmarks": ["vqa_rad"]}, "not configured")]:
        with pytest.raises(ConfigError, match=msg):
            load_eval_config(_write(tmp_path, {**CONFIG, **bad}))


def test_k_latent_comes_from_the_checkpoint(tmp_path):
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    b = build_tiny(seed=0)
    save_checkpoint(b.model, b.processor, tmp_path / "ck", k_latent=3)
    save_checkpoint(b.model, b.processor, tmp_path / "base")  # no K recorded (a base model)
    plain = {**CONFIG, "fig5": None, "ablation": None, "efficiency": None, "table4": None, "fig3": None}
    models = [{"name": "ck", "path": "ck"}, {"name": "ck8", "path": "ck", "k_latent": 8}]
    cfg = load_eval_config(_write(tmp_path, {**plain, "models": models}))
    assert cfg.model("ck").k_latent == 3 and cfg.model("ck").path == str(tmp_path / "ck")
    assert cfg.model("ck8").k_latent == 8  # an explicit value wins
    assert load_eval_config(_write(tmp_path), model_paths={"medlvr": "ck"}).model("medlvr").k_latent == 2
    unset = {**plain, "models": [{"name": "medlvr", "path": "tiny"}]}
    with pytest.raises(ConfigError, match=r"models\[0\].k_latent is required for path: tiny"):
        load_eval_config(_write(tmp_path, unset))
    with pytest.raises(ConfigError, match="records no K"):
        load_eval_config(_write(tmp_path, {**unset, "models": [{"name": "medlvr", "path": "base"}]}))


def test_evaluate_cli_end_to_end_and_resume(tmp_path, capsys):
    from medlvr.pipelines.cli import main
    from medlvr.evaluation.runs import evaluate

    assert main(["evaluate", "--config", str(_write(tmp_path)), "--quiet"]) == 0
    out = tmp_path / "out"
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 5", "Fig. 3", "Latent ablation"):
        assert heading in md and heading in html
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 3  # Fig. 5, Fig. 3 share, Fig. 3 heatmaps
    manifest = json.loads((out / "manifests" / "efficiency_subset.json").read_text())
    assert set(manifest["ids"]) == {"slake", "mmmu_hm"} and manifest["seed"] == 0
    recs = [json.loads(line) for line in (out / "predictions/medlvr/k2/ablate_zero/slake.jsonl").open()]
    assert len(recs) == 2 and {r["ablation"] for r in recs} == {"zero"}
    assert (out / "predictions/medlvr/k1/main/omnimedvqa.jsonl").is_file()  # the K sweep of Fig. 5
    # a rerun generates nothing: every id is already in its prediction file
    res = evaluate(load_eval_config(_write(tmp_path)), progress=None)
    done = [v["done"] for v in res["timings"].values() if isinstance(v, dict)]
    assert done and sum(done) == 0


def test_dagster_assets(tmp_path, monkeypatch):
    import dagster as dg

    from medlvr.pipelines.evaluation import evaluation_defs
    from medlvr.pipelines.evaluation.assets import EvaluationSettings, evaluation_predictions, evaluation_report

    cfg = {**CONFIG, "benchmarks": {"slake": {}}, "fig5": None, "fig3": None, "efficiency": None}
    res = {"evaluation": EvaluationSettings(config_path=str(_write(tmp_path, cfg)),
                                            overrides=[f"out_dir={tmp_path / 'dg'}"])}
    graph = evaluation_defs.resolve_asset_graph()
    report_key = dg.AssetKey("evaluation_report")
    assert graph.get(report_key).group_name == "evaluation"
    assert {dg.AssetKey("roi_sft_checkpoint"), dg.AssetKey("vlpo_checkpoint"),
            dg.AssetKey("evaluation_predictions")} <= set(graph.get(report_key).parent_keys)
    r = dg.materialize([evaluation_predictions], partition_key="slake", resources=res)
    assert r.success
    meta = r.asset_materializations_for_node("evaluation_predictions")[0].metadata
    assert meta["records"].value == 2 * 2 + 3 * 2  # 2 models on slake + 3 ablations
    assert dg.materialize([evaluation_predictions], partition_key="pmc_vqa", resources=res).success  # not configured
    rep = dg.materialize([evaluation_report], resources=res)
    assert rep.success
    assert "Latent ablation" in (tmp_path / "dg" / "report.md").read_text()
    # the UI shows the report's result tables as Markdown: whole tables with every row of results.json, within the
    # stated size, and no link to a file next to the report (the UI cannot open those); no cut Markdown preview
    from medlvr.pipelines.corpus.metadata import MARKDOWN_MAX_CHARS

    meta = rep.asset_materializations_for_node("evaluation_report")[0].metadata
    assert "preview" not in meta
    tables_md = meta["tables"].value
    assert isinstance(meta["tables"], dg.MarkdownMetadataValue) and len(tables_md) <= MARKDOWN_MAX_CHARS
    assert not re.search(r"\]\((?!https?:|data:)[^)]*\)", tables_md), "a relative link in the UI's Markdown"
    doc = json.loads((tmp_path / "dg" / "results.json").read_text())
    shown = [t for t in doc["tables"] if f"**{t['caption']}**" in tables_md]
    assert {t["section"] for t in shown} >= {"Main results (Tables 1 and 2)", "Latent ablation"}
    for t in shown:  # a table is shown whole: its header and every row
        assert "| " + " | ".join(t["columns"]) + " |" in tables_md
        for row in t["rows"]:
            assert "| " + " | ".join("–" if c is None else str(c) for c in row) + " |" in tables_md, (t["caption"], row)


def test_evaluate_merge_as_printed(tmp_path):
    """`medlvr evaluate-merge --config FILE --world-size N [--out DIR]` (the README's line) through the installed
    console script, after two ranks' inference wrote their rank files: every job's predictions are merged to one
    record per sample, equal to a one-process run's, and the rank files are gone."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from medlvr.evaluation.config import load_eval_config
    from medlvr.evaluation.inference import rank_path, read_records
    from medlvr.evaluation.predictions import pred_path
    from medlvr.evaluation.runs import efficiency_manifest, load_all, plan_jobs, run_jobs

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "configs", tmp_path / "configs")
    sets = ["limit=3", "fig3=null", "fig5=null", "ablation=null"]

    def plan(out: str):
        cfg = load_eval_config(tmp_path / "configs" / "eval_sample.yaml", [*sets, f"out_dir={tmp_path / out}",
                                                                          f"data_root={tmp_path / 'bench'}"])
        samples = load_all(cfg)
        return cfg, samples, plan_jobs(cfg, efficiency_manifest(cfg, samples))

    cfg, samples, jobs = plan("sharded")
    for rank in (0, 1):  # what each torchrun rank does before the merge
        run_jobs(cfg, jobs, samples, rank=rank, world_size=2)
    assert all(rank_path(pred_path(cfg.out_dir, j), r, 2).is_file() for j in jobs for r in (0, 1))
    argv = [str(Path(sys.executable).parent / "medlvr"), "evaluate-merge", "--config", "configs/eval_sample.yaml",
            "--world-size", "2", "--out", str(cfg.out_dir)]
    for s in [*sets, f"data_root={tmp_path / 'bench'}"]:
        argv += ["--set", s]
    p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and f"merged {len(jobs)} prediction files from 2 ranks" in p.stdout, p.stdout + p.stderr
    one_cfg, _, one_jobs = plan("single")
    run_jobs(one_cfg, one_jobs, samples)
    keep = ("sample_id", "output", "n_tokens", "n_latent", "finish_reason", "prompt_hash")
    for j in jobs:
        merged = read_records(pred_path(cfg.out_dir, j))
        single = read_records(pred_path(one_cfg.out_dir, j))
        assert [r["sample_id"] for r in merged] == sorted({r["sample_id"] for r in merged})  # one each, sorted
        assert [{k: r.get(k) for k in keep} for r in merged] == [{k: r.get(k) for k in keep} for r in single]
        assert not any(rank_path(pred_path(cfg.out_dir, j), r, 2).exists() for r in (0, 1))
