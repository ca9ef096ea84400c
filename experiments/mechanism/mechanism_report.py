"""The mechanism experiment's REPORT (docs/mechanism.md): from the jobs' records to results.json (aggregates over
seeds with 95 % t-intervals, the goal per seed), the plots `docs/<prefix>_*.png` and the generated sections of
docs/mechanism.md (every number in them comes from results.json through this module)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from mechanism_config import main_task  # noqa: E402
from mechanism_jobs import data_dir, load_heldout  # noqa: E402

# two-sided 95 % Student t quantiles by degrees of freedom (n - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# issue 27's goal, per seed: (a) open >= vanilla's open (same seed), (b) closed segment-swap following >= 80 %,
# (c) closed text-swap following <= 10 %, (d) zeroing the latents costs >= 30 points
GOAL = {"segment_following_min": 80.0, "text_following_max": 10.0, "zero_drop_min": 30.0}


def summary_stats(xs: list) -> dict | None:
    """mean / sample std / 95 % t-interval / min / max / n / values of the non-None values; None when none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    half = T975.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "std": sd, "ci95": [m - half, m + half], "min": min(xs), "max": max(xs), "n": n,
            "values": xs}


SCALARS = ("accuracy", "accuracy_closed", "donor_following", "donor_following_closed", "accuracy_swap",
           "accuracy_zero", "drop_zero", "probe_accuracy", "probe_majority", "cos_roi", "cos_distractor", "cos_full",
           "donor_following_segment", "donor_following_text", "donor_following_both", "n_eligible_closed")


def aggregate(runs: dict) -> dict:
    """runs[variant][seed] -> per-variant statistics over seeds."""
    agg = {}
    for v, by_seed in runs.items():
        recs = list(by_seed.values())
        a: dict = {}
        for key in SCALARS:
            st = summary_stats([r["eval"].get(key) for r in recs])
            if st:
                a[key] = st
        if "k_sweep" in recs[0]["eval"]:
            ks = recs[0]["eval"]["k_sweep"]
            a["k_sweep"] = {k: {m: summary_stats([r["eval"]["k_sweep"][k][m] for r in recs])
                                for m in ("accuracy", "accuracy_zero")} for k in ks}
        a["stage1_accuracy"] = summary_stats([r["sft_eval"]["accuracy"] for r in recs])
        st = summary_stats([r["sft_eval"].get("accuracy_closed") for r in recs])
        if st:
            a["stage1_accuracy_closed"] = st
        a["sft_train_latent_cos"] = summary_stats([r["sft"]["final"].get("latent_cos") for r in recs])
        a["sft_train_ce"] = summary_stats([r["sft"]["final"].get("ce") for r in recs])
        agg[v] = a
    return agg


def paired(runs: dict, a: str, b: str, key: str) -> dict | None:
    """Per-seed differences a - b of eval[key] over the seeds both have (mean, std, 95 % t-interval)."""
    if a not in runs or b not in runs:
        return None
    seeds = sorted(set(runs[a]) & set(runs[b]), key=int)
    d = [runs[a][s]["eval"].get(key) - runs[b][s]["eval"].get(key) for s in seeds
         if runs[a][s]["eval"].get(key) is not None and runs[b][s]["eval"].get(key) is not None]
    return summary_stats(d)


def goals(cfg: dict, runs: dict, agg: dict) -> dict:
    """Issue 27's goal for every latent variant ON EVERY SEED (GOAL): (a) open accuracy >= vanilla's of the same
    seed, (b) closed segment-swap following >= 80 %, (c) closed text-swap following <= 10 %, (d) zero drop >= 30
    points; `all_seeds` says whether every seed meets all four. An undefined following (no row whose own and
    donor answers differ) fails (b) and (c): then nothing follows anything. And ROI vs no-ROI targets under the
    bottleneck (`goal_pairs`), paired by seed: `separated` when the 95 % interval of the difference excludes 0."""
    van = runs.get("vanilla_grpo") or {}
    out: dict = {"vanilla_accuracy": (agg.get("vanilla_grpo") or {}).get("accuracy", {}).get("mean"),
                 "thresholds": GOAL, "variants": {}}
    for v, by_seed in runs.items():
        if "drop_zero" not in (agg.get(v) or {}):  # not a latent model
            continue
        per_seed = {}
        for seed, r in by_seed.items():
            e = r["eval"]
            v_acc = (van.get(seed) or {}).get("eval", {}).get("accuracy")
            seg, text = e.get("donor_following_segment"), e.get("donor_following_text")
            g = {"a_open_ge_vanilla": None if v_acc is None else e["accuracy"] >= v_acc,
                 "b_segment_following_ge_80": seg is not None and seg >= GOAL["segment_following_min"],
                 "c_text_following_le_10": text is not None and text <= GOAL["text_following_max"],
                 "d_zero_drop_ge_30": e["drop_zero"] >= GOAL["zero_drop_min"]}
            g["all"] = all(x is not False for x in g.values())
            per_seed[seed] = g
        out["variants"][v] = {"per_seed": per_seed, "all_seeds": all(g["all"] for g in per_seed.values()),
                              "seeds_met": [s for s, g in per_seed.items() if g["all"]]}
    out["pairs"] = {}
    for a_, b_ in cfg["goal_pairs"]:
        for key in ("accuracy", "accuracy_closed", "donor_following_segment", "drop_zero"):
            st = paired(runs, a_, b_, key)
            if st:
                lo, hi = st["ci95"]
                out["pairs"][f"{a_} - {b_}: {key}"] = {**st, "separated": bool(lo > 0 or hi < 0)}
    return out


# --------------------------------------------------------------------------------------------------- plots


def plot(results: dict, docs_dir: Path, prefix: str) -> list[str]:
    task = results["main_task"]
    agg, runs = results["tasks"][task]["aggregate"], results["tasks"][task]["runs"]
    variants = [v for v in results["config"]["tasks"][task]["variants"] if v in agg]
    docs_dir.mkdir(parents=True, exist_ok=True)
    files = []
    chance = 100.0 / len(results["task_info"][task]["patterns"])

    def bars(ax, keys, labels, vs, colors_from=0):
        w = 0.8 / len(keys)
        for j, (key, label) in enumerate(zip(keys, labels)):
            for i, v in enumerate(vs):
                s = agg[v].get(key)
                if not s:
                    continue
                x = i + (j - (len(keys) - 1) / 2) * w
                lo, hi = s["ci95"]
                err = [[s["mean"] - lo], [hi - s["mean"]]] if not math.isnan(lo) else None
                ax.bar(x, s["mean"], w, yerr=err, color=f"C{j + colors_from}", alpha=0.8, capsize=2,
                       label=label if i == 0 else None)
                ax.scatter([x] * len(s["values"]), s["values"], color="k", s=6, zorder=3)
        ax.set_xticks(range(len(vs)), vs, fontsize=7, rotation=20)

    # 1. accuracy per variant: stage 1, final open, final closed
    fig, ax = plt.subplots(figsize=(9, 3.8))
    bars(ax, ["stage1_accuracy", "accuracy", "accuracy_closed"],
         ["after stage 1, open", "final, open inference", "final, closed inference"], variants)
    ax.axhline(chance, ls="--", color="gray", lw=1, label="chance")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("accuracy (mean, 95 % CI over seeds; dots = seeds)", fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, docs_dir / f"{prefix}_accuracy.png"))

    lat = [v for v in variants if "drop_zero" in agg[v]]
    if lat:
        # 2. causal diagnostics
        fig, ax = plt.subplots(figsize=(9, 3.8))
        bars(ax, ["donor_following_segment", "donor_following_text", "donor_following_both", "drop_zero"],
             ["closed: segment swap", "closed: text swap", "closed: both", "zeroing drop (points)"], lat,
             colors_from=3)
        ax.axhline(GOAL["segment_following_min"], ls=":", color="C3", lw=1)
        ax.axhline(GOAL["text_following_max"], ls=":", color="C4", lw=1)
        ax.axhline(GOAL["zero_drop_min"], ls=":", color="C6", lw=1)
        ax.set_ylabel("%")
        ax.set_ylim(-20, 105)
        ax.legend(fontsize=7)
        ax.set_title("which route carries the closed answer? donor-following % (dotted: goal 80 / 10 / 30)",
                     fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, docs_dir / f"{prefix}_latents.png"))

        # 3. K sweep: accuracy (solid) and with zeroed latents (dashed) per inference K
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for i, v in enumerate(lat):
            sw = agg[v]["k_sweep"]
            ks = sorted(sw, key=int)
            ax.plot([int(k) for k in ks], [sw[k]["accuracy"]["mean"] for k in ks], marker="o", color=f"C{i}",
                    label=v)
            ax.plot([int(k) for k in ks], [sw[k]["accuracy_zero"]["mean"] for k in ks], marker="x", ls="--",
                    color=f"C{i}")
        ax.axhline(chance, ls="--", color="gray", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inference K (trained at K=%d); dashed: latents zeroed" % results["config"]["sft"]["k"])
        ax.set_ylabel("held-out accuracy (%)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        files.append(_save(fig, docs_dir / f"{prefix}_k_sweep.png"))

    # 4. stage-1 training curves (seed-mean CE) per stage-1 recipe
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
    seen = set()
    for i, v in enumerate(variants):
        st = results["config"]["variants"][v]["stage1"]
        if st in seen:
            continue
        seen.add(st)
        curves = [r["sft"]["curve"] for r in runs[v].values()]
        steps = [c["step"] for c in curves[0]]
        axs[0].plot(steps, [sum(c[j]["ce"] for c in curves) / len(curves) for j in range(len(steps))],
                    label=st, color=f"C{i}")
        if results["config"]["stage1"][st].get("latent", True):
            axs[1].plot(steps, [sum(c[j]["latent_cos"] or 0 for c in curves) / len(curves) for j in range(len(steps))],
                        label=st, color=f"C{i}")
    axs[0].set_title("stage 1: answer CE (train)", fontsize=9)
    axs[1].set_title("stage 1: cos(h_k, its training target)", fontsize=9)
    for a in axs:
        a.set_xlabel("step")
        a.legend(fontsize=6)
    fig.tight_layout()
    files.append(_save(fig, docs_dir / f"{prefix}_sft_curves.png"))
    return files


def task_examples(dirs: dict[str, Path], path: Path, n: int = 4) -> str:
    """A few held-out images of every task with the lesion box and the gold answer (docs figure)."""
    fig, axs = plt.subplots(len(dirs), n, figsize=(2.2 * n, 2.5 * len(dirs)), squeeze=False)
    for row, (task, d) in zip(axs, dirs.items()):
        for ax, it in zip(row, load_heldout(d)[:n]):
            ax.imshow(Image.open(it["image"]))
            x0, y0, x1, y1 = it["box"]
            ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                                      ec="yellow", lw=1.5, ls="--"))
            ax.set_title(f"{task}: {it['answer']}. {dict(zip('ABCD', it['options']))[it['answer']]}", fontsize=8)
            ax.axis("off")
    fig.suptitle("held-out examples (dashed: ROI box; title: task and gold answer)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------------------------------- tables


def _f(s, pct=True) -> str:
    if not s:
        return "–"
    lo, hi = s["ci95"]
    if math.isnan(lo):
        return f"{s['mean']:.1f}" if pct else f"{s['mean']:.3f}"
    return f"{s['mean']:.1f} [{lo:.1f}, {hi:.1f}]" if pct else f"{s['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown_tables(results: dict) -> str:
    """Every table of the doc's results section, from results.json."""
    lines = []
    yn = {True: "yes", False: "**no**", None: "–"}
    for task, tr in results["tasks"].items():
        agg, runs = tr["aggregate"], tr["runs"]
        vs = [v for v in results["config"]["tasks"][task]["variants"] if v in agg]
        lc = results["config"]["tasks"][task].get("lesion_cells", 1)
        seeds = results["config"]["seeds"]
        lines += [f"**Task `{task}`** (lesion = {lc} cell{'s' if lc > 1 else ''}); mean [95 % CI] over "
                  f"{len(seeds)} seeds, %. Donor-following: z-swap (fed-back vectors only), and in closed mode the "
                  "segment swap (Start + latent slots, every layer), the text swap (prompt text after the image) "
                  "and both.", "",
                  "| variant | stage-1 open | open | closed | z-swap (open) | z-swap (closed) | **segment swap** "
                  "| text swap | both | zero drop | probe (majority) | cos ROI / distractor |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for v in vs:
            a = agg[v]
            probe = f"{_f(a.get('probe_accuracy'))} ({a['probe_majority']['mean']:.0f})" if a.get("probe_majority") \
                else "–"
            cos = f"{a['cos_roi']['mean']:.2f} / {a['cos_distractor']['mean']:.2f}" if a.get("cos_roi") else "–"
            lines.append(f"| {v} | {_f(a.get('stage1_accuracy'))} | {_f(a.get('accuracy'))} | "
                         f"{_f(a.get('accuracy_closed'))} | {_f(a.get('donor_following'))} | "
                         f"{_f(a.get('donor_following_closed'))} | **{_f(a.get('donor_following_segment'))}** | "
                         f"{_f(a.get('donor_following_text'))} | {_f(a.get('donor_following_both'))} | "
                         f"{_f(a.get('drop_zero'))} | {probe} | {cos} |")
        lines += ["", "Per seed (open / closed / segment swap / text swap / zero drop; – = undefined):", "",
                  "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "| --- |" + " --- |" * len(seeds)]
        for v in vs:
            cells = []
            for s in seeds:
                e = runs[v].get(str(s), {}).get("eval")
                if not e:
                    cells.append("–")
                    continue

                def g(key):
                    return "–" if e.get(key) is None else f"{e[key]:.0f}"

                cells.append(" / ".join(g(k) for k in ("accuracy", "accuracy_closed", "donor_following_segment",
                                                       "donor_following_text", "drop_zero")))
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        ks = sorted({k for v in vs for k in (agg[v].get("k_sweep") or {})}, key=int)
        if ks:
            lines += ["", "Accuracy / with zeroed latents at each inference K (mean over seeds):", "",
                      "| variant | " + " | ".join(f"K={k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
            for v in vs:
                sw = agg[v].get("k_sweep")
                if sw:
                    lines.append(f"| {v} | " + " | ".join(
                        f"{sw[k]['accuracy']['mean']:.1f} / {sw[k]['accuracy_zero']['mean']:.1f}" if k in sw else "–"
                        for k in ks) + " |")
        gl = tr["goals"]
        if gl["variants"]:
            th = gl["thresholds"]
            lines += ["", f"Goal per seed (a) open >= vanilla's open of the same seed, (b) segment swap >= "
                      f"{th['segment_following_min']:.0f} %, (c) text swap <= {th['text_following_max']:.0f} %, "
                      f"(d) zero drop >= {th['zero_drop_min']:.0f} points; a cell lists the criteria a seed misses:",
                      "", "| variant | every seed | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                      "| --- | --- |" + " --- |" * len(seeds)]
            for v, g_ in gl["variants"].items():
                cells = []
                for s in seeds:
                    ps = g_["per_seed"].get(str(s))
                    if ps is None:
                        cells.append("–")
                        continue
                    miss = [k[0] for k, ok in ps.items() if k != "all" and ok is False]
                    cells.append("met" if not miss else "misses " + ", ".join(miss))
                lines.append(f"| {v} | {yn[g_['all_seeds']]} | " + " | ".join(cells) + " |")
        if gl["pairs"]:
            lines += ["", "ROI vs no-ROI targets under the bottleneck, paired by seed (difference a - b, mean "
                      "[95 % CI]):", ""]
            for name, st in gl["pairs"].items():
                vals = ", ".join(f"{x:.0f}" for x in st["values"])
                lines.append(f"* {name}: {_f(st)} (per seed {vals}) -> "
                             f"{'separated' if st['separated'] else 'within seed noise'}")
        lines.append("")
    ex = results.get("extra") or {}
    if ex:
        lines += ["| stage-1-only run | overrides | open acc | closed acc | segment swap | text swap | zero drop |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, e in ex.items():
            st = e["stats"]
            lines.append(f"| {name} | {e['spec']['stage1']} {json.dumps(e['spec'].get('sft') or {})} | "
                         f"{_f(st.get('accuracy'))} | {_f(st.get('accuracy_closed'))} | "
                         f"{_f(st.get('donor_following_segment'))} | {_f(st.get('donor_following_text'))} | "
                         f"{_f(st.get('drop_zero'))} |")
    return "\n".join(lines)


def cost_md(results: dict) -> str:
    """The run's cost: wall time, CPU-seconds of the run and its children, load average, jobs run / reused."""
    c = results["cost"]
    return (f"This run: {c['jobs_run']} jobs run and {c['jobs_reused']} reused, wall {c['wall_seconds']:.0f} s, "
            f"**{c['cpu_seconds']:.0f} CPU-seconds** (user + sys of the driver and its worker processes; "
            f"{c['cpu_seconds'] / 60 / max(1, results['config']['workers']):.1f} min on {results['config']['workers']}"
            f" quiet cores at that CPU cost), load average {c['load_average_start'][0]:.1f} at the start, "
            f"{c['load_average_mean_1min']:.1f} on average (1-min value at each job's end), "
            f"{c['load_average_end'][0]:.1f} at the end, on {results['cpu_count']} cores; code version "
            f"`{results['code_version']}`.")


def verdict_md(results: dict) -> str:
    """One paragraph: which variants meet issue 27's goal on every seed, and which seeds / criteria miss."""
    tr = results["tasks"][results["main_task"]]
    out = []
    for v, g in tr["goals"]["variants"].items():
        if g["all_seeds"]:
            out.append(f"`{v}` meets all four criteria on every seed ({len(g['per_seed'])} of {len(g['per_seed'])})")
        else:
            miss = {s: [k[0] for k, ok in ps.items() if k != "all" and ok is False] for s, ps in g["per_seed"].items()}
            txt = "; ".join(f"seed {s}: {', '.join(m)}" for s, m in miss.items() if m)
            out.append(f"`{v}` meets them on {len(g['seeds_met'])} of {len(g['per_seed'])} seeds (misses: {txt})")
    return "Goal on the main task: " + "; ".join(out) + "." if out else ""


def build_results(cfg: dict, done: list[tuple], cost: dict, code_version: str) -> dict:
    """results.json's content from the jobs' tuples (`mechanism_jobs.job_entry`), with tables and plots."""
    by_task: dict = {t: {} for t in cfg["tasks"]}
    extra: dict = {}
    job_seconds = []
    for task, seed, stage1, ex, res, dt, reused in done:
        job_seconds.append({"task": task, "seed": seed, "stage1": stage1, "extra": (ex or {}).get("name"),
                            "seconds": dt, "reused": reused})
        for v, r in res.items():
            (by_task[task] if ex is None else extra).setdefault(v, {})[str(seed)] = r
    tasks = {}
    for t, runs in by_task.items():
        runs = {v: dict(sorted(runs[v].items(), key=lambda kv: int(kv[0]))) for v in cfg["tasks"][t]["variants"]
                if v in runs}
        agg = aggregate(runs)
        tasks[t] = {"runs": runs, "aggregate": agg, "goals": goals(cfg, runs, agg)}
    extra_stats = {}
    for e in cfg["extra"]:
        recs = list(extra.get(e["name"], {}).values())
        if recs:
            st = {k: summary_stats([r["sft_eval"].get(k) for r in recs]) for k in SCALARS}
            extra_stats[e["name"]] = {"spec": e, "stats": {k: v for k, v in st.items() if v}}
    dirs = {t: data_dir(cfg, t) for t in cfg["tasks"]}
    results = {"config": {k: v for k, v in cfg.items() if k != "quick"}, "main_task": main_task(cfg),
               "task_info": {t: json.loads((d / "task.json").read_text()) for t, d in dirs.items()},
               "tasks": tasks, "runs": tasks[main_task(cfg)]["runs"], "extra": extra_stats, "extra_runs": extra,
               "job_seconds": job_seconds, "cpu_count": os.cpu_count(), "cost": cost, "code_version": code_version}
    results["table_md"] = markdown_tables(results)
    results["plots"] = plot(results, Path(cfg["docs_dir"]), cfg["plot_prefix"])
    results["plots"].append(task_examples(dirs, Path(cfg["docs_dir"]) / f"{cfg['plot_prefix']}_task_example.png"))
    return results


GENERATED = {"results": markdown_tables, "cost": cost_md, "verdict": verdict_md}


def write_doc(results: dict, doc: Path) -> Path:
    """Fill the doc's generated sections (`<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`, NAME in
    GENERATED) from results.json; the text between the markers is replaced, everything else kept."""
    text = doc.read_text()
    for name, fn in GENERATED.items():
        pat = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"{doc}: no <!-- generated:{name} --> section")
        body = fn(results)
        text = pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    return doc
