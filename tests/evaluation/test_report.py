"""Tables 3 / 4 and Fig. 5 data on fixed predictions equal hand-computed values; the report renders with its
plots (Markdown + one self-contained HTML page); Fig. 3 attention analysis and heatmaps with an ROI box."""

import base64
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.evaluation import tables as T  # noqa: E402
from medlvr.corpus.evalsets.base import Sample, file_uri  # noqa: E402
from medlvr.evaluation.report import Section, Table, write_report  # noqa: E402

MC = (("A", "liver"), ("B", "lung"))


def _samples():
    return {
        "y1": Sample("slake", "y1", "Is it normal?", "yesno", "yes", tags={"closed": True}),
        "y2": Sample("slake", "y2", "Is it normal?", "yesno", "no", tags={"closed": True}),
        "m1": Sample("slake", "m1", "Which organ?", "mc", "B", options=MC),
        "m2": Sample("slake", "m2", "Which organ?", "mc", "A", options=MC),
    }


def _rec(sid, output, n_tokens, latency, model="m", k=8):
    return {"benchmark": "slake", "sample_id": sid, "output": output, "n_tokens": n_tokens, "latency_s": latency,
            "model": model, "k_latent": k, "variant": "main", "finish_reason": "stop"}


def test_table3_on_fixed_predictions():
    s = _samples()
    base = T.score_records([_rec("y1", "Yes.", 3, 0.5), _rec("y2", "yes", 2, 0.25),
                            _rec("m1", "B", 1, 0.125), _rec("m2", "I cannot tell", 10, 1.0)], s)
    lvr = T.score_records([_rec("y1", "<Medlvr_Start><Medlvr_Latent><Medlvr_End><answer>yes</answer>", 8, 1.0),
                           _rec("y2", "<answer>no</answer>", 6, 1.0), _rec("m1", "The answer is B", 7, 1.0),
                           _rec("m2", "<answer>A. liver</answer>", 9, 1.0), _rec("zz", "yes", 1, 9.0)], s)
    rows = {r["model"]: r for r in T.table3({"base": base, "medlvr": lvr})}
    b, m = rows["base"], rows["medlvr"]
    assert (b["n"], b["avg_tokens"], b["total_time_s"], b["accuracy"], b["parse_fail_rate"]) == \
        (4, 4.0, 1.875, 50.0, 25.0)  # y1, m1 right; y2 wrong; m2 unparseable (counts as wrong)
    assert (m["n"], m["avg_tokens"], m["total_time_s"], m["accuracy"], m["parse_fail_rate"]) == \
        (4, 7.5, 4.0, 100.0, 0.0)  # "zz" has no sample: dropped


def test_table4_and_fig5_on_fixed_predictions():
    s = _samples()
    rows = {
        "SFT": T.score_records([_rec("y1", "yes", 1, 0), _rec("y2", "yes", 1, 0), _rec("m1", "A", 1, 0)], s),
        "VLPO": T.score_records([_rec("y1", "yes", 1, 0), _rec("y2", "no", 1, 0), _rec("m1", "B", 1, 0)], s),
    }
    other = Sample("vqa_rad", "v1", "Is it?", "yesno", "no", tags={"closed": True})
    rows["VLPO"] += T.score_records([{**_rec("v1", "no", 1, 0), "benchmark": "vqa_rad"}], {"v1": other})
    t4 = {r["variant"]: r for r in T.table4(rows, ["slake", "vqa_rad"])}
    assert t4["SFT"]["slake"] == pytest.approx(100 / 3) and np.isnan(t4["SFT"]["vqa_rad"])
    assert t4["SFT"]["avg"] == pytest.approx(100 / 3)
    assert (t4["VLPO"]["slake"], t4["VLPO"]["vqa_rad"], t4["VLPO"]["avg"]) == (100.0, 100.0, 100.0)
    closed = {r["variant"]: r for r in T.table4(rows, ["slake"], {"slake": "closed"})}  # m1 is not closed
    assert closed["SFT"]["slake"] == 50.0
    mods = [dict(r, modality=mod, k_latent=k) for r, mod, k in
            zip([{"correct": c} for c in (1, 0, 1, 1, 0, 0)], ["CT", "CT", "MRI", "CT", "CT", "MRI"],
                [2, 2, 2, 8, 8, 8])]
    f5 = T.accuracy_by_modality_and_k(mods)
    assert f5 == {"CT": {2: 50.0, 8: 50.0}, "MRI": {2: 100.0, 8: 0.0},
                  "overall": {2: pytest.approx(200 / 3), 8: pytest.approx(100 / 3)}}


def test_efficiency_subset_quota_cap_kind_and_seed():
    mk = lambda b, n, kind: [Sample(b, f"{b}{i:03d}", "q", kind, "yes") for i in range(n)]  # noqa: E731
    samples = {"slake": mk("slake", 150, "yesno") + mk("slakeo", 30, "open"), "vqa_rad": mk("vqa_rad", 40, "yesno"),
               "pmc_vqa": mk("pmc_vqa", 120, "mc"), "medxpertqa_mm": mk("mx", 90, "mc")}
    m = T.efficiency_subset(samples, seed=0)
    assert {b: len(v) for b, v in m.items()} == {"slake": 100, "vqa_rad": 40, "pmc_vqa": 100, "medxpertqa_mm": 85}
    assert all(i.startswith("slake0") or i.startswith("slake1") for i in m["slake"])  # yes/no items only
    assert T.efficiency_subset(samples, seed=0) == m
    assert T.efficiency_subset(samples, seed=1)["slake"] != m["slake"]
    shuffled = {b: list(reversed(v)) for b, v in samples.items()}
    assert T.efficiency_subset(shuffled, seed=0) == m


def test_report_renders_with_plots(tmp_path):
    from medlvr.evaluation.figures import plot_accuracy_vs_k, plot_visual_share

    f5 = plot_accuracy_vs_k({"CT": {2: 40.0, 4: 55.0}, "overall": {2: 45.0, 4: 50.0}}, tmp_path / "f" / "f5.png")
    f3 = plot_visual_share({"base": np.array([0.2, 0.1]), "medlvr": np.array([0.4, 0.3])}, tmp_path / "f" / "f3.png")
    secs = [Section("Table 3", "Two models.\n\nSecond <para> & more.",
                    [Table("Table 3", ["model", "acc"], [["base", "35.9"], ["a|b", "45.2"]])], [f5, f3])]
    md, page = write_report(tmp_path, "Report <x>", secs)
    text = md.read_text()
    assert "| model | acc |" in text and "a\\|b" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / link).is_file()
    html = page.read_text()
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(imgs) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "&lt;para&gt; &amp; more" in html and "Report &lt;x&gt;" in html
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # self-contained: nothing loaded from outside


def test_attention_profile_and_heatmap_with_roi(tmp_path):
    from medlvr.evaluation.attention import attention_profile
    from medlvr.evaluation.config import ModelSpec
    from medlvr.evaluation.figures import plot_heatmaps
    from medlvr.evaluation.inference import LoadedModel
    from medlvr.training.model import set_pixel_budget
    from medlvr.training.tiny import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = build_tiny(seed=0)  # sdpa: attention_profile switches to eager and back
        set_pixel_budget(b.processor, 56 * 56, 112 * 112)
        lm = LoadedModel(ModelSpec("tiny", "tiny", k_latent=2), b.model, b.processor, b.ids)
        p = tmp_path / "img.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(p)
        s = Sample("slake", "x1", "Where is the lesion?", "open", "left", images=(file_uri(p),),
                   tags={"roi": [10, 20, 60, 70]})
        r = attention_profile(lm, s, max_new_tokens=6)
        assert b.model.config._attn_implementation == "sdpa"
    finally:
        torch.set_num_threads(threads)
    assert r.visual_share.shape == (2,) and np.all((r.visual_share > 0) & (r.visual_share < 1))
    assert r.heatmap.ndim == 2 and r.heatmap.min() == 0 and r.heatmap.max() == pytest.approx(1)
    assert r.roi == [[10.0, 20.0, 60.0, 70.0]] and r.image_size == (120, 90)
    png = plot_heatmaps({"base": [r], "trained": [r]}, {"x1": s.images[0]}, tmp_path / "heat.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eager_attention_switches_and_restores_even_on_error():
    from medlvr.evaluation.attention import eager_attention
    from medlvr.training.tiny import build_tiny

    model = build_tiny(seed=0).model
    assert model.config._attn_implementation == "sdpa"
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"):
        with eager_attention(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")  # already eager: left eager
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


# --------------------------------------------------------------------------- what the report's words and layout say


def test_report_tables_align_text_left_and_numbers_right(tmp_path):
    """Markdown (rendered by markdown-it, as a viewer would) and HTML: text columns left, number columns right."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    secs = [Section("Main", "", [Table("Accuracy", ["model", "benchmark", "N", "accuracy %", "delta", "vqa_rad"],
                                       [["base", "slake", "4", "35.9", "–", "–"],
                                        ["roi_sft", "vqa_rad", "12", "–", "-2.5", "–"]])])]
    md, page = write_report(tmp_path, "R", secs)
    rendered = MarkdownIt("commonmark").enable("table").render(md.read_text())
    heads = re.findall(r"<th style=\"text-align:(\w+)\">([^<]*)</th>", rendered)
    assert heads == [("left", "model"), ("left", "benchmark"), ("right", "N"), ("right", "accuracy %"),
                     ("right", "delta"), ("right", "vqa_rad")]  # no value at all: still a column of numbers

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.css = [], ""

        def handle_starttag(self, tag, attrs):
            if tag in ("td", "th"):
                self.cells.append(dict(attrs).get("class"))

        def handle_data(self, data):
            if self.lasttag == "style":
                self.css += data

    p = Cells()
    p.feed(page.read_text())
    align = {cls: a for cls, a in re.findall(r"\.([\w-]+)\{text-align:(left|right)\}", p.css)}
    assert [align.get(c) for c in p.cells[:6]] == ["left", "left", "right", "right", "right", "right"]
    assert [align.get(c) for c in p.cells[6:12]] == ["left", "left", "right", "right", "right", "right"]
    assert not re.search(r"td,th\{[^}]*text-align", p.css)  # no blanket right alignment left over


def _sections_for(tmp_path, ablation_kinds):
    """build_sections on fixed scored rows: base / medlvr on slake (closed yes/no + open) and vqa_rad, medlvr's
    ablations `ablation_kinds` on slake."""
    import yaml

    from medlvr.evaluation.config import load_eval_config
    from medlvr.evaluation.report import build_sections
    from medlvr.evaluation.runs import plan_jobs

    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "out"), "data_root": str(tmp_path / "bench"),
        "benchmarks": {"slake": {}, "vqa_rad": {}},
        "models": [{"name": "base", "path": "tiny", "k_latent": 0}, {"name": "medlvr", "path": "tiny", "k_latent": 4}],
        "table4": {"models": ["base", "medlvr"]},
        "ablation": {"model": "medlvr", "kinds": ablation_kinds, "noise_scale": 0.5, "benchmarks": ["slake"]}}))
    cfg = load_eval_config(cfg_path)
    samples = {"slake": list(_samples().values()),
               "vqa_rad": [Sample("vqa_rad", "v1", "Is it?", "yesno", "no", tags={"closed": True})]}
    jobs = plan_jobs(cfg)
    scored = {}
    for j in jobs:
        by_id = {s.sample_id: s for s in samples[j.benchmark]}
        recs = [{**_rec(s.sample_id, s.answer if j.variant == "main" else "zzz", 2, 0.1, j.model, j.k_latent),
                 "benchmark": j.benchmark, "variant": j.variant} for s in samples[j.benchmark]]
        scored[j] = T.score_records(recs, by_id)
    return {s.title: s for s in build_sections(cfg, samples, jobs, None, scored)}


def test_ablation_section_says_what_its_table_shows(tmp_path):
    secs = _sections_for(tmp_path, ["zero", "shuffle"])
    abl = secs["Latent ablation"]
    (table,) = abl.tables
    # the model named `base` is not the ablation's reference column
    assert table.headers == ["benchmark", "n", "unablated", "zero", "zero_drop", "shuffle", "shuffle_drop"]
    assert "noise" not in abl.text and "alpha" not in abl.text  # no noise column, so no promise of one
    assert "zeroed" in abl.text and "shuffled across samples" in abl.text and "`unablated`" in abl.text
    all_row = next(r for r in table.rows if r[0] == "all")
    assert all_row[2:] == ["100.0", "0.0", "100.0", "0.0", "100.0"]  # right answers in main, none ablated
    noised = _sections_for(tmp_path / "n", ["zero", "noise"])["Latent ablation"]
    assert "noised (relative, alpha=0.5)" in noised.text and noised.tables[0].headers[-2:] == ["noise", "noise_drop"]


def test_table4_caption_names_the_table2_subsets(tmp_path):
    (table,) = _sections_for(tmp_path, ["zero"])["Table 4: training variants"].tables
    assert "Table 2 subsets" in table.caption
    assert "slake closed" in table.caption and "vqa_rad closed" in table.caption
    # and it is true: slake's open question m1/m2 (not closed) does not count, so base (all right) has 100 on both
    row = dict(zip(table.headers, next(r for r in table.rows if r[0] == "base")))
    assert row["slake"] == "100.0" and row["vqa_rad"] == "100.0"


def test_fig3_layer_axis_has_integer_ticks(tmp_path, monkeypatch):
    from medlvr.evaluation import figures

    ticks = {}
    save = figures._save

    def keep_ticks(fig, path):
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks["x"] = [t for t in ax.get_xticks() if lo <= t <= hi]
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_ticks)
    figures.plot_visual_share({"base": np.array([0.2, 0.1, 0.3]), "medlvr": np.array([0.4, 0.3, 0.2])},
                              tmp_path / "f3.png")
    assert ticks["x"] and all(float(t).is_integer() for t in ticks["x"]), ticks
