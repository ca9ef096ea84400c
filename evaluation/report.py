"""The evaluation report: `report.md` (images linked relative to it) and `report.html`, one self-contained page
(tables as HTML, PNG plots embedded as base64 data URIs, inline CSS, no external resources)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medlvr.evaluation import scoring
from medlvr.evaluation import tables as T
from medlvr.evaluation.ablations import UNABLATED, ablation_table
from medlvr.evaluation.attention import attention_profiles, mean_visual_share, sample_rois
from medlvr.evaluation.figures import plot_accuracy_vs_k, plot_heatmaps, plot_visual_share
from medlvr.evaluation.inference import load_for_eval
from medlvr.evaluation.latent_diagnostics import ZERO_SHUFFLE_NOTE, diagnostics_path, report_tables
from medlvr.evaluation.predictions import job_records
from medlvr.evaluation.protocols import get_protocol


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]
    csv: str = ""  # the table as CSV, relative to the report (medlvr.evaluation.results); linked from the caption


@dataclass
class Section:
    title: str
    text: str = ""  # plain text paragraphs (blank-line separated); rendered escaped in HTML
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # PNG files
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, href relative to the report)


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


NO_VALUE = "–"  # what a table cell shows for a missing number (tables.fmt)
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?")


def numeric_columns(t: Table) -> list[bool]:
    """Per column: True when every cell is a number or the missing-number dash (a column of dashes only is a number
    column without values), so the column is right-aligned; text columns (model names, benchmarks, paths) are
    left-aligned."""
    out = []
    for i in range(len(t.headers)):
        cells = [str(r[i]).strip() for r in t.rows if i < len(r)]
        out.append(bool(cells) and all(c == NO_VALUE or _NUMBER.fullmatch(c) for c in cells))
    return out


def table_markdown(t: Table, csv_link: bool = True) -> list[str]:
    """A table as Markdown lines: its bold caption (with its CSV link unless `csv_link` is false), the header, an
    alignment row (text columns left, number columns right: `numeric_columns`), the rows and a blank line."""
    link = f" ([CSV]({t.csv}))" if t.csv and csv_link else ""
    out = [f"**{t.caption}**{link}", "", "| " + " | ".join(map(_md_cell, t.headers)) + " |",
           "|" + "".join("---:|" if num else ":---|" for num in numeric_columns(t))]
    return out + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in t.rows] + [""]


def render_markdown(title: str, sections: Sequence[Section], rel_to: Path) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.text:
            out += [sec.text.strip(), ""]
        out += [f"- [{label}]({href})" for label, href in sec.links] + ([""] if sec.links else [])
        for t in sec.tables:
            out += table_markdown(t, csv_link=True)
        for f in sec.figures:
            rel = os.path.relpath(Path(f), Path(rel_to))
            out += [f"![{Path(f).stem}]({Path(rel).as_posix()})", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px}
th{background:#eee}.num{text-align:right}.text{text-align:left}caption{font-weight:600;text-align:left;
padding-bottom:4px}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}p{line-height:1.4}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for sec in sections:
        out.append(f"<h2>{e(sec.title)}</h2>")
        for para in [p for p in sec.text.strip().split("\n\n") if p.strip()]:
            out.append(f"<p>{e(para)}</p>")
        if sec.links:
            out.append("<ul>" + "".join(f"<li><a href='{e(href)}'>{e(label)}</a></li>" for label, href in sec.links)
                       + "</ul>")
        for t in sec.tables:
            csv_link = f" <a class='csv' href='{e(t.csv)}'>CSV</a>" if t.csv else ""
            align = ["num" if num else "text" for num in numeric_columns(t)]
            out.append(f"<table><caption>{e(t.caption)}{csv_link}</caption><thead><tr>"
                       + "".join(f"<th class='{a}'>{e(str(h))}</th>" for a, h in zip(align, t.headers))
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td class='{a}'>{e(str(c))}</td>" for a, c in zip(align, r)) + "</tr>"
                    for r in t.rows]
            out.append("</tbody></table>")
        for f in sec.figures:
            data = base64.b64encode(Path(f).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{e(Path(f).stem)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{e(Path(f).stem)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: Path, title: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(title, sections, out_dir))
    page.write_text(render_html(title, sections))
    return md, page


# ------------------------------------------------------------------------------------ the evaluation's sections


def _fig3_section(cfg, samples, fig_dir: Path) -> Section:
    f3 = cfg.fig3
    bench = f3.get("benchmark") or next(iter(cfg.benchmarks))
    pool = [s for s in samples[bench] if s.images]
    with_roi = [s for s in pool if _has_roi(s)]
    chosen = (with_roi + [s for s in pool if not _has_roi(s)])[: int(f3.get("n_samples", 4))]
    results, curves = {}, {}
    for name in f3.get("models", [m.name for m in cfg.models]):
        lm = load_for_eval(cfg.model(name), cfg.decode)
        results[name] = attention_profiles(lm, chosen, max_new_tokens=int(f3.get("max_new_tokens", 32)))
        curves[name] = mean_visual_share(results[name])
        del lm
    share_png = plot_visual_share(curves, fig_dir / "fig3_visual_attention_share.png")
    heat_png = plot_heatmaps(results, {s.sample_id: s.images[0] for s in chosen}, fig_dir / "fig3_heatmaps.png")
    n_layers = len(next(iter(curves.values()))) if curves else 0
    rows = [[name] + [f"{100 * v:.1f}" for v in c] for name, c in curves.items()]
    n_roi = sum(_has_roi(s) for s in chosen)
    return Section(
        "Fig. 3: attention on visual tokens",
        f"{len(chosen)} samples of {bench} ({n_roi} with an ROI box, drawn in green), eager attention, queries = the "
        "positions that produced the generated tokens. Heatmaps average layers and heads over the first image.",
        [Table("Share of attention on visual tokens (%) per layer", ["model"] + [f"L{i}" for i in range(n_layers)],
               rows)],
        [share_png, heat_png],
    )


def table4_caption(benchmarks: Sequence[str]) -> str:
    """Table 4's caption: it scores each benchmark on its Table 2 subset (`scoring.table2_subsets()`), so say
    which."""
    table2 = scoring.table2_subsets()
    subsets = [f"{b} {table2[b]}" for b in benchmarks if table2.get(b, "all") != "all"]
    scored = f"; scored on the Table 2 subsets: {', '.join(subsets)}; other benchmarks on all items" if subsets else \
        "; every benchmark on all items (the Table 2 subsets change none of these)"
    return f"Table 4 (accuracy %{scored})"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _has_roi(sample) -> bool:
    return bool(sample_rois(sample))


def score_jobs(cfg, samples: dict, jobs: list) -> dict:
    """job -> its scored rows (the merged prediction file against the benchmark's samples)."""
    by_bench = {b: {s.sample_id: s for s in v} for b, v in samples.items()}
    return {j: T.score_records(job_records(cfg, j), by_bench[j.benchmark], cfg.protocol) for j in jobs}


def build_sections(cfg, samples: dict, jobs: list, manifest: dict | None, scored: dict | None = None
                   ) -> list[Section]:
    """Lay out every configured table and figure from the scored prediction files of `jobs` (`score_jobs`,
    computed here unless given)."""
    fig_dir = cfg.out_dir / "figures"
    scored = score_jobs(cfg, samples, jobs) if scored is None else scored
    d = cfg.decode
    setup = Section("Setup", (cfg.note.strip() + "\n\n" if cfg.note.strip() else "") + (
        f"Greedy decoding, max_new_tokens {d.max_new_tokens}, batch size {d.batch_size}, pixel budget "
        f"{d.min_pixels}-{d.max_pixels} pixels, dtype {d.dtype}, device {d.device}"
        f"{', closed inference (the answer sees the image only through the latents)' if d.closed else ''}. "
        f"Scoring protocol {cfg.protocol}: {get_protocol(cfg.protocol).description} (docs/benchmarks.md "
        "§3.8). Tokens count every generated position "
        "(text, control tokens, latent slots, EOS). Times are generate wall time, model load excluded."),
        [Table("Models", ["model", "checkpoint / endpoint", "K", "prompt"],
               [[m.name, m.source, str(m.k_latent), m.prompt_style] for m in cfg.models]),
         Table("Benchmarks", ["benchmark", "samples"], [[b, str(len(v))] for b, v in samples.items()])])
    sections = [setup]

    # main results: every model on every main benchmark (Tables 1 and 2 in the paper's layout)
    main = [j for j in jobs if j.variant == "main" and j.k_latent == cfg.model(j.model).k_latent]
    rows = []
    for m in cfg.models:
        for b in cfg.main_benchmarks:
            rs = [r for j in main if j.model == m.name and j.benchmark == b for r in scored[j]]
            if rs:
                rows.append([m.name, b, str(len(rs)), T.fmt(T.accuracy(rs)),
                             T.fmt(100 * sum(r["parse_fail"] for r in rs) / len(rs)),
                             T.fmt(sum(r["n_tokens"] for r in rs) / len(rs)),
                             T.fmt(100 * sum(r["finish_reason"] == "length" for r in rs) / len(rs))])
    tabs = [Table("Accuracy per benchmark", ["model", "benchmark", "N", "accuracy %", "parse fail %",
                                             "mean tokens", "truncated %"], rows)]
    if "omnimedvqa" in cfg.main_benchmarks:
        t1s = {m.name: scoring.table1([r for j in main if j.model == m.name and j.benchmark == "omnimedvqa"
                                        for r in scored[j]]) for m in cfg.models}
        mods = [m for m in scoring.TABLE1_MODALITIES if any(m in t["modalities"] for t in t1s.values())]
        t1 = [[name] + [_pct(t["modalities"].get(mod, {}).get("accuracy")) for mod in mods]
              + [_pct(t["pooled"]), _pct(t["mean"])] for name, t in t1s.items() if t["n"]]
        tabs.append(Table("Table 1: OmniMedVQA accuracy % per modality (micro = pooled over items, macro = mean of "
                          "the modalities)", ["model", *mods, "micro", "macro"], t1))
    table2 = scoring.table2_subsets()  # the registry's external benchmarks
    ext = [b for b in table2 if b in cfg.main_benchmarks]
    if ext:
        t2 = []
        for m in cfg.models:
            t = scoring.table2([r for j in main if j.model == m.name and j.benchmark in ext for r in scored[j]], table2)
            t2.append([m.name] + [_pct(t["benchmarks"].get(b, {}).get("accuracy")) for b in ext] + [_pct(t["average"])])
        heads = [f"{b} ({table2[b]})" for b in ext]
        tabs.append(Table("Table 2: external benchmarks, accuracy % (subset scored in brackets)",
                          ["model", *heads, "avg"], t2))
    sections.append(Section("Main results (Tables 1 and 2)", "", tabs))

    if cfg.efficiency and manifest:
        eff = {m: [r for j in jobs if j.variant == "efficiency" and j.model == m for r in scored[j]]
               for m in cfg.efficiency.get("models", [m.name for m in cfg.models])}
        h, cells = T.as_grid(T.table3(eff), ["model", "n", "avg_tokens", "total_time_s", "accuracy",
                                            "parse_fail_rate"],
                             ["model", "N", "avg generated tokens", "total time (s)", "accuracy %", "parse fail %"])
        counts = ", ".join(f"{len(v)} {b}" for b, v in manifest.items())
        sections.append(Section("Table 3: efficiency subset", (
            f"Subset drawn with seed {cfg.efficiency.get('seed', 0)}: {counts} "
            f"({sum(map(len, manifest.values()))} items; the paper's 485 capped by availability). "
            "Manifest: manifests/efficiency_subset.json."), [Table("Table 3", h, cells)]))

    if cfg.table4:
        names = cfg.table4.get("models", [m.name for m in cfg.models])
        benches = list(cfg.table4.get("benchmarks", cfg.main_benchmarks))
        by_var = {cfg.model(n).label: [r for j in main if j.model == n for r in scored[j]] for n in names}
        h, cells = T.as_grid(T.table4(by_var, benches, scoring.table2_subsets()), ["variant", *benches, "avg"])
        sections.append(Section("Table 4: training variants", "", [Table(table4_caption(benches), h, cells)]))

    if cfg.fig5:
        bench = cfg.fig5.get("benchmark", "omnimedvqa")
        rs = [r for j in jobs if j.model == cfg.fig5["model"] and j.benchmark == bench and j.variant == "main"
              and j.k_latent in set(cfg.fig5.get("k_values", [2, 4, 8, 14, 16])) for r in scored[j]]
        series = T.accuracy_by_modality_and_k(rs)
        png = plot_accuracy_vs_k(series, fig_dir / "fig5_accuracy_vs_k.png",
                                 f"{cfg.fig5['model']} on {bench}: accuracy vs K")
        ks = sorted({k for s in series.values() for k in s})
        cells = [[mod] + [T.fmt(s.get(k, float("nan"))) for k in ks] for mod, s in series.items()]
        sections.append(Section("Fig. 5: accuracy vs latent budget K", "",
                                [Table("Accuracy % per modality and K", ["modality"] + [f"K={k}" for k in ks],
                                       cells)], [png]))

    if cfg.fig3:
        sections.append(_fig3_section(cfg, samples, fig_dir))

    if cfg.ablation:
        name = cfg.ablation["model"]
        base = [r for j in main if j.model == name for r in scored[j]]
        abl = {}
        for j in jobs:
            if j.ablation:
                abl.setdefault(j.ablation, []).extend(scored[j])
        benches = {r["benchmark"] for rs in abl.values() for r in rs}
        table = ablation_table([r for r in base if r["benchmark"] in benches], abl)
        cols = ["benchmark", "n", UNABLATED] + [c for k in abl for c in (k, f"{k}_drop")]
        h, cells = T.as_grid(table, cols)
        sections.append(Section("Latent ablation", ablation_text(name, list(abl), cfg.ablation.get("noise_scale", 1.0)),
                                [Table("Accuracy % and drop per benchmark", h, cells)]))

    if cfg.latent_diagnostics is not None and diagnostics_path(cfg.out_dir).is_file():
        sections.append(_latent_section(json.loads(diagnostics_path(cfg.out_dir).read_text())))
    name_protocol(sections, cfg.protocol)
    return sections


def name_protocol(sections: Sequence[Section], protocol: str) -> None:
    """Every table's caption names the scoring protocol its numbers are under (medlvr.evaluation.protocols)."""
    for sec in sections:
        for t in sec.tables:
            t.caption = f"{t.caption} [protocol: {protocol}]"


ABLATION_WORDS = {"zero": "zeroed", "shuffle": "shuffled across samples", "noise": "noised (relative, alpha={alpha})"}


def ablation_text(model: str, kinds: Sequence[str], noise_scale: float) -> str:
    """The latent-ablation paragraph, naming exactly the ablations whose columns the table shows (`kinds`, in
    column order), so it never promises a column the predictions do not have."""
    words = [ABLATION_WORDS.get(k, k).format(alpha=noise_scale) for k in kinds]
    if not words:
        return f"No latent ablation of {model} has predictions yet."
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" or {words[-1]}"
    cols = ", ".join(f"`{k}`" for k in kinds)
    return (f"{model} with its latent inputs {listed} at inference (columns {cols}); `{UNABLATED}` is "
            f"{model}'s own accuracy with its latents as computed, and `<ablation>_drop` = {UNABLATED} - ablated "
            "accuracy in points. A large drop means the answers depend on the latent evidence. " + ZERO_SHUFFLE_NOTE)


def _latent_section(diag: dict) -> Section:
    """The report's latent section: causal diagnostics of every latent model (evaluation/latent_diagnostics.py)."""
    head, rows, khead, krows = report_tables(diag)
    return Section("Latent diagnostics", (
        "For every latent model: accuracy with normal (open) inference and with closed inference (the answer side "
        "may not attend to the visual tokens, so it sees the image only through the latents and the prompt text); "
        "donor-following = share of answers that become the donor row's answer when each row is fed another row's "
        "latents (over rows whose two answers differ); zeroed = latents set to zero; probe = held-out accuracy of a "
        "linear probe from the latent states to the gold answer, next to the majority-class baseline. The K sweep "
        "shows accuracy / accuracy with zeroed latents at each K, separating slot count from latent content. "
        + ZERO_SHUFFLE_NOTE),
        [Table("Causal latent diagnostics (%)", head, rows),
         Table("Accuracy % / with zeroed latents, per inference K", khead, krows)])
