"""Mechanism validation (the paper's Table 4 in miniature, docs/mechanism.md): four variants trained FROM SCRATCH
on the synthetic grounding task (corpus/sample_data/synthetic_grounding.py), several seeds, one budget.

    python experiments/mechanism/mechanism.py --config configs/mechanism.yaml [--quick] [--set key.sub=value ...]

Per seed, one random tiny Qwen2.5-VL (training.tiny, shape from `model:`) is the common initialisation of:

| variant        | stage 1 (training.sft)                            | stage 2 (training.vlpo)         |
| -------------- | ------------------------------------------------- | ------------------------------- |
| vanilla_grpo   | SFT, latent.k_latent=0                            | algo.variant=grpo               |
| noroi_grpo     | latents, latent.roi_target=full_image             | medlvr_grpo                     |
| roi_grpo       | ROI-SFT, latent.roi_target=box                    | medlvr_grpo                     |
| roi_vlpo       | (the same ROI-SFT checkpoint)                     | vlpo                            |

Evaluation on the held-out split (greedy, training.latent_decode, the trainers' prompt): accuracy after stage 1
and after stage 2; cosine between the latent states h_k (= mu_k, the fed-back hidden states) and their ROI
targets (also against the full-image target and against the targets of the DISTRACTOR structures' cells, the
controls that say whether a cosine is specific to the lesion); accuracy when latents are zeroed / shuffled across
samples (evaluation.ablations); accuracy vs inference latent budget K; optionally accuracy vs TRAINING K for
ROI-SFT and other stage-1-only investigations (`extra`). Jobs (seed x stage-1 variant) run in `workers` processes of `threads` threads each.

Outputs: `results` (JSON: per run and aggregated mean / std / min / max over seeds) and `docs_dir/<prefix>_*.png`.
`python experiments/mechanism/attention.py` adds where the answer position attends (image / lesion token /
latent slots) to the results JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.corpus.config import ConfigError, apply_overrides, build_config, read_yaml  # noqa: E402
from medlvr.corpus.evalsets.base import Sample, file_uri  # noqa: E402
from medlvr.corpus.sample_data.synthetic_grounding import INSTRUCTION, write_grounding_task  # noqa: E402
from medlvr.evaluation.ablations import make_transform_factory  # noqa: E402
from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.model import load_checkpoint, save_checkpoint, set_pixel_budget  # noqa: E402
from medlvr.training.roi_targets import batch_roi_targets  # noqa: E402
from medlvr.training.sft.config import SFTConfig  # noqa: E402
from medlvr.training.sft.recipe import train as train_sft  # noqa: E402
from medlvr.training.tiny import TinyConfig, build_tiny  # noqa: E402
from medlvr.training.vlm_inputs import image_embeddings  # noqa: E402
from medlvr.training.vlpo.config import VLPORunConfig  # noqa: E402
from medlvr.training.vlpo.core import vision_token_ids  # noqa: E402
from medlvr.training.vlpo.data import build_prompt_batch  # noqa: E402
from medlvr.training.vlpo.rewards import compute_rewards  # noqa: E402
from medlvr.training.vlpo.trainer import train_vlpo  # noqa: E402

DEFAULTS: dict = {
    "work_dir": "medlvr_home/mechanism",  # checkpoints, data (git-ignored)
    "results": "experiments/mechanism/results.json",
    "docs_dir": "docs",
    "plot_prefix": "mechanism",
    "seeds": [0, 1, 2],
    "workers": 2,  # parallel jobs (processes)
    "threads": 1,  # torch threads per job
    "variants": ["vanilla_grpo", "noroi_grpo", "roi_grpo", "roi_vlpo"],
    "data": {"n_train": 2000, "n_test": 200, "seed": 0, "size": 112, "n_structures": 4},
    "model": {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 4, "kv_heads": 2},
    "pixels": {"min": 3136, "max": 12544},
    "sft": {"steps": 100, "micro_batch": 16, "lr": 1.0e-3, "warmup_ratio": 0.05, "min_lr_ratio": 0.1,
            "weight_decay": 0.0, "k": 4, "mode": "self_fed", "grad": "bptt", "roi_loss": "cosine",
            "roi_weight": 1.0},
    "rl": {"steps": 30, "prompts_per_step": 8, "num_generations": 8, "micro_batch": 64, "lr": 1.0e-4,
           "temperature": 1.0, "beta": 0.04, "lambda_lat": 1.0, "latent_sigma": 0.1, "noise": "relative",
           "noise_scale": 0.05, "answer_tokens": 3},
    "eval": {"batch": 100, "k_sweep": [1, 2, 4, 8], "ablations": ["zero", "shuffle"], "stage1": True},
    # extra stage-1-only runs (investigations: training K, loss, lambda, budget), evaluated like stage 1:
    # [{"name": str, "stage1": vanilla|noroi|roi, "sft": {overrides of `sft`}}], on `extra_seeds`
    "extra": [],
    "extra_seeds": [0, 1, 2],
    "quick": {},  # merged over everything with --quick
}

STAGE1 = {"vanilla_grpo": "vanilla", "noroi_grpo": "noroi", "roi_grpo": "roi", "roi_vlpo": "roi"}
RL_ALGO = {"vanilla_grpo": "grpo", "noroi_grpo": "medlvr_grpo", "roi_grpo": "medlvr_grpo", "roi_vlpo": "vlpo"}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, quick: bool = False, overrides=()) -> dict:
    """DEFAULTS <- the YAML file <- its `quick:` section (with --quick) <- `key.sub=value` overrides."""
    user = read_yaml(path) if path else {}
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown mechanism config keys {sorted(unknown)}")
    cfg = _merge(DEFAULTS, user)
    if quick:
        cfg = _merge(cfg, cfg.get("quick") or {})
    cfg = apply_overrides(cfg, overrides)
    cfg["quick_mode"] = bool(quick)
    return cfg


# --------------------------------------------------------------------------------------------------- data / init


def prepare_data(cfg: dict) -> Path:
    d = cfg["data"]
    out = Path(cfg["work_dir"]) / "data"
    want = dict(seed=d["seed"], size=d["size"], n_structures=d["n_structures"])
    task = out / "task.json"
    if task.is_file():
        old = json.loads(task.read_text())
        if all(old.get(k) == v for k, v in want.items()) and old["counts"].get("train") == d["n_train"] \
                and old["counts"].get("test") == d["n_test"]:
            return out
    write_grounding_task(out, n_train=d["n_train"], n_test=d["n_test"], seed=d["seed"], size=d["size"],
                         n_structures=d["n_structures"])
    return out


def tiny_config(m: dict) -> TinyConfig:
    head_dim = m["hidden"] // m["heads"]
    # mrope sections sum to head_dim / 2 (TinyConfig contract); default (4, 6, 6) for head_dim 32
    half = head_dim // 2
    t = half // 4
    sec = (half - 2 * ((half - t) // 2), (half - t) // 2, (half - t) // 2)
    return TinyConfig(hidden=m["hidden"], intermediate=m["intermediate"], layers=m["layers"], heads=m["heads"],
                      kv_heads=m["kv_heads"], mrope_section=sec)


def init_checkpoint(cfg: dict, seed: int) -> Path:
    """The random tiny model of this seed, saved once (every variant of the seed starts from it)."""
    d = Path(cfg["work_dir"]) / f"seed{seed}" / "init"
    if not (d / "config.json").is_file():
        b = build_tiny(seed=seed, cfg=tiny_config(cfg["model"]))
        save_checkpoint(b.model, b.processor, d)
    return d


# --------------------------------------------------------------------------------------------------- training


def run_sft(cfg: dict, seed: int, stage1: str, data_dir: Path, init_dir: Path, extra: dict | None = None) -> dict:
    """Stage 1 through the SFT recipe (`medlvr.training.sft.recipe.train`); every SFT config key the experiment
    sets is here."""
    s = _merge(cfg["sft"], (extra or {}).get("sft") or {})
    k = s["k"]
    name = extra["name"] if extra else stage1
    out = Path(cfg["work_dir"]) / f"seed{seed}" / f"sft_{name}"
    latent = dict(k_latent=0 if stage1 == "vanilla" else k, mode=s["mode"], grad=s["grad"],
                  roi_target={"vanilla": "off", "noroi": "full_image", "roi": "box"}[stage1],
                  roi_loss=s["roi_loss"], roi_weight=float(s["roi_weight"]) if stage1 != "vanilla" else 0.0)
    sc = build_config(SFTConfig, dict(
        model=dict(path=str(init_dir)),
        data=dict(corpus=str(data_dir), split="train", min_pixels=cfg["pixels"]["min"], max_pixels=cfg["pixels"]["max"],
                  seed=seed, max_answer_tokens=8),
        latent=latent,
        engine=dict(device="cpu", lr=float(s["lr"]), weight_decay=float(s["weight_decay"]),
                    warmup_ratio=float(s["warmup_ratio"]), schedule="cosine", min_lr_ratio=float(s["min_lr_ratio"]),
                    seed=seed),
        run=dict(out_dir=str(out), micro_batch_size=s["micro_batch"], max_steps=s["steps"], save_every=0, keep_last=1,
                 log_every=max(1, s["steps"] // 10), tensorboard=False, progress=False, threads=cfg["threads"]),
    ))
    t0 = time.perf_counter()
    res = train_sft(sc)
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"model_dir": str(Path(res["checkpoint"]) / "model"), "seconds": time.perf_counter() - t0,
            "final": {k: res["metrics"].get(k) for k in ("ce", "roi", "latent_cos")}, "k": latent["k_latent"],
            "curve": [{k: h.get(k) for k in ("step", "ce", "roi", "latent_cos")} for h in hist]}


def run_rl(cfg: dict, seed: int, variant: str, data_dir: Path, sft_model: str) -> dict:
    """Stage 2 through the VLPO trainer (`medlvr.training.vlpo.trainer.train_vlpo`); every VLPO config key the
    experiment sets is here."""
    r, k = cfg["rl"], cfg["sft"]["k"]
    algo = RL_ALGO[variant]
    out = Path(cfg["work_dir"]) / f"seed{seed}" / f"rl_{variant}"
    k_eff = 0 if algo == "grpo" else k
    vc = build_config(VLPORunConfig, dict(
        model=dict(path=sft_model),
        data=dict(source="synthetic_grounding", root=str(data_dir), split="train", instruction=INSTRUCTION,
                  min_pixels=cfg["pixels"]["min"], max_pixels=cfg["pixels"]["max"]),
        rollout=dict(num_generations=r["num_generations"], temperature=float(r["temperature"]),
                     max_new_tokens=(k_eff + 2 if k_eff else 0) + r["answer_tokens"], k_latent=max(k, 1),
                     noise=r["noise"] if algo == "vlpo" else "none", noise_scale=float(r["noise_scale"])),
        algo=dict(variant=algo, beta=float(r["beta"]), lambda_lat=float(r["lambda_lat"]),
                  latent_sigma=float(r["latent_sigma"])),
        engine=dict(device="cpu", lr=float(r["lr"]), weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
                    seed=seed),
        run=dict(out_dir=str(out), max_steps=r["steps"], prompts_per_step=r["prompts_per_step"],
                 micro_batch_size=r["micro_batch"], save_every=0, keep_last=1, resume="",
                 threads=cfg["threads"], tensorboard=False, progress=False),
    ))
    t0 = time.perf_counter()
    res = train_vlpo(vc)
    hist = res["metrics"]
    return {"model_dir": res["final_dir"], "seconds": time.perf_counter() - t0,
            "reward_curve": [h.get("accuracy") for h in hist],
            "mean_train_accuracy_last5": sum(h["accuracy"] for h in hist[-5:]) / max(1, len(hist[-5:])),
            "zero_std_groups": sum(h.get("zero_std_groups", 0) for h in hist) / max(1, len(hist)),
            "latent_abs_log_ratio": sum(h.get("latent_abs_log_ratio", 0) for h in hist) / max(1, len(hist))}


# --------------------------------------------------------------------------------------------------- evaluation


def load_heldout(data_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (data_dir / "heldout.jsonl").read_text().splitlines() if x.strip()]


def heldout_samples(items: list[dict]) -> list[Sample]:
    """Held-out items as evaluation `Sample`s (multiple choice over the four patterns)."""
    return [Sample(benchmark="synthetic_grounding", sample_id=it["id"], question=it["question"], kind="mc",
                   answer=it["answer"], options=tuple(zip("ABCD", it["options"])), images=(file_uri(it["image"]),))
            for it in items]


def evaluate(cfg: dict, model_dir: str, items: list[dict], latent: bool, k_train: int) -> dict:
    """Held-out accuracy (+ latent diagnostics when the model has a latent segment)."""
    model, processor, ids = load_checkpoint(model_dir)
    model.eval()
    set_pixel_budget(processor, cfg["pixels"]["min"], cfg["pixels"]["max"])
    tok = processor.tokenizer
    eos = tuple(x for x in [tok.convert_tokens_to_ids("<|im_end|>")] if x is not None)
    banned = vision_token_ids(model)
    samples = heldout_samples(items)
    bs = cfg["eval"]["batch"]
    batches = [(samples[i:i + bs], items[i:i + bs]) for i in range(0, len(samples), bs)]
    enc = [build_prompt_batch(processor, s, INSTRUCTION) for s, _ in batches]

    def run(k: int, ablation: str | None = None, diagnostics: bool = False) -> dict:
        correct, n = 0.0, 0
        cos = {"roi": [], "full": [], "distractor": []}
        # one transform for the whole pass: `shuffle` feeds a row the latent of a sample from an earlier batch
        factory = None if ablation is None else make_transform_factory(ablation)
        for (s, its), pb in zip(batches, enc):
            tf = None if factory is None else factory(pb)
            dc = DecodeConfig(k_latent=k, max_new_tokens=(k + 2 if k else 0) + 3, temperature=0.0, force_start=True,
                              eos_token_ids=eos, banned_ids=banned)
            out = latent_generate(model, pb.inputs, ids, dc, latent_transform=tf)
            r = compute_rewards(out.sequences, out.gen_mask, ids, tok, pb.options, pb.gold, eos_ids=eos)
            correct += float(r["accuracy"].sum())
            n += len(s)
            if diagnostics and k > 0:
                pv, grid = pb.inputs["pixel_values"], pb.inputs["image_grid_thw"]
                sizes = [(it["height"], it["width"]) for it in its]
                with torch.no_grad():
                    img = image_embeddings(model, pv, grid)
                    mu = out.mu.float()

                    def c(boxes):
                        t = batch_roi_targets(model, processor.image_processor, pv, grid, sizes, boxes, k,
                                              image_embeds=img).float()
                        return torch.nn.functional.cosine_similarity(mu, t, dim=-1).mean(-1)  # (N,)

                    cos["roi"] += c([[it["box"]] for it in its]).tolist()
                    cos["full"] += c([None] * len(its)).tolist()
                    cos["distractor"] += torch.stack([c([[b] for b in col]) for col in
                                                      zip(*[it["distractor_boxes"] for it in its])]).mean(0).tolist()
        res = {"accuracy": 100.0 * correct / max(n, 1), "n": n}
        if diagnostics and k > 0:
            res.update({f"cos_{key}": sum(v) / len(v) for key, v in cos.items() if v})
        return res

    with torch.inference_mode(False), torch.no_grad():
        if not latent:
            return {"accuracy": run(0)["accuracy"], "n": len(items)}
        base = run(k_train, diagnostics=True)
        res = dict(base)
        for ab in cfg["eval"]["ablations"]:
            a = run(k_train, ab)["accuracy"]
            res[f"acc_{ab}"] = a
            res[f"drop_{ab}"] = base["accuracy"] - a
        res["k_sweep"] = {str(k): (base["accuracy"] if k == k_train else run(k)["accuracy"])
                          for k in cfg["eval"]["k_sweep"]}
        return res


# --------------------------------------------------------------------------------------------------- jobs


def run_job(cfg: dict, seed: int, stage1: str, extra: dict | None = None) -> dict:
    """One stage-1 model of one seed, its stage-2 variants and all evaluations. Returns {variant: record}.
    With `extra` (an entry of cfg["extra"]): stage 1 only, returns {extra name: record}."""
    torch.set_num_threads(cfg["threads"])
    data_dir = Path(cfg["work_dir"]) / "data"
    items = load_heldout(data_dir)
    init = init_checkpoint(cfg, seed)
    sft = run_sft(cfg, seed, stage1, data_dir, init, extra=extra)
    latent = sft["k"] > 0
    rec = {"seed": seed, "stage1": stage1, "sft": sft}
    if cfg["eval"]["stage1"] or extra is not None:
        rec["sft_eval"] = evaluate(cfg, sft["model_dir"], items, latent, sft["k"])
    if extra is not None:
        return {extra["name"]: rec}
    out = {}
    for v in cfg["variants"]:
        if STAGE1[v] != stage1:
            continue
        r = copy.deepcopy(rec)
        rl = run_rl(cfg, seed, v, data_dir, sft["model_dir"])
        r["rl"] = rl
        r["eval"] = evaluate(cfg, rl["model_dir"], items, latent, sft["k"])
        out[v] = r
    return out


def _job_entry(args):
    cfg, seed, stage1, extra = args
    t0 = time.perf_counter()
    res = run_job(cfg, seed, stage1, extra)
    return seed, stage1, extra, res, time.perf_counter() - t0


def summary_stats(xs: list) -> dict | None:
    """mean / sample std / min / max / n / values of the non-None values; None when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def aggregate(runs: dict) -> dict:
    """runs[variant][seed] -> per-variant statistics over seeds."""
    agg = {}
    for v, by_seed in runs.items():
        recs = list(by_seed.values())
        a: dict = {}
        if recs and "eval" in recs[0]:
            keys = [k for k in recs[0]["eval"] if isinstance(recs[0]["eval"][k], (int, float)) and k != "n"]
            for k in keys:
                a[k] = summary_stats([r["eval"].get(k) for r in recs])
            if "k_sweep" in recs[0]["eval"]:
                a["k_sweep"] = {k: summary_stats([r["eval"]["k_sweep"][k] for r in recs])
                                for k in recs[0]["eval"]["k_sweep"]}
        if recs and "sft_eval" in recs[0]:
            a["stage1_accuracy"] = summary_stats([r["sft_eval"]["accuracy"] for r in recs])
            for k in ("cos_roi", "cos_full", "cos_distractor", "drop_zero", "drop_shuffle"):
                if k in recs[0]["sft_eval"]:
                    a[f"stage1_{k}"] = summary_stats([r["sft_eval"].get(k) for r in recs])
        a["sft_train_latent_cos"] = summary_stats([r["sft"]["final"].get("latent_cos") for r in recs])
        a["sft_train_ce"] = summary_stats([r["sft"]["final"].get("ce") for r in recs])
        agg[v] = a
    return agg


def plot(results: dict, docs_dir: Path, prefix: str) -> list[str]:
    agg, runs = results["aggregate"], results["runs"]
    variants = [v for v in results["config"]["variants"] if v in agg]
    docs_dir.mkdir(parents=True, exist_ok=True)
    files = []
    chance = 100.0 / len(results["task"]["patterns"])

    # 1. accuracy per variant: stage 1 and stage 2, seeds as dots
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for j, (key, label, off) in enumerate((("stage1_accuracy", "after stage 1 (SFT)", -0.18),
                                           ("accuracy", "after stage 2 (RL)", 0.18))):
        for i, v in enumerate(variants):
            s = agg[v].get(key)
            if not s:
                continue
            ax.bar(i + off, s["mean"], 0.34, yerr=s["std"], color=f"C{j}", alpha=0.8, capsize=3,
                   label=label if i == 0 else None)
            ax.scatter([i + off] * len(s["values"]), s["values"], color="k", s=10, zorder=3)
    ax.axhline(chance, ls="--", color="gray", lw=1, label="chance")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Synthetic grounding task: accuracy (mean ± std over seeds, dots = seeds)", fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, docs_dir / f"{prefix}_accuracy.png"))

    lat = [v for v in variants if "cos_roi" in agg[v]]
    if lat:
        # 2. latent ablations
        fig, axs = plt.subplots(1, 2, figsize=(9, 3.4))
        ab = results["config"]["eval"]["ablations"]
        for i, v in enumerate(lat):
            for j, key in enumerate(["accuracy"] + [f"acc_{a}" for a in ab]):
                s = agg[v][key]
                axs[0].bar(i + (j - 1) * 0.25, s["mean"], 0.25, yerr=s["std"], color=f"C{j}", capsize=2,
                           label=(["base"] + ab)[j] if i == 0 else None)
        axs[0].axhline(chance, ls="--", color="gray", lw=1)
        axs[0].set_xticks(range(len(lat)), lat, fontsize=8)
        axs[0].set_ylabel("held-out accuracy (%)")
        axs[0].set_title("latents zeroed / shuffled at inference", fontsize=9)
        axs[0].legend(fontsize=8)
        for j, key in enumerate(("cos_roi", "cos_distractor", "cos_full")):
            for i, v in enumerate(lat):
                s = agg[v][key]
                axs[1].bar(i + (j - 1) * 0.25, s["mean"], 0.25, yerr=s["std"], color=f"C{j + 3}", capsize=2,
                           label=key.replace("cos_", "target: ") if i == 0 else None)
        axs[1].set_xticks(range(len(lat)), lat, fontsize=8)
        axs[1].set_ylabel("cos(h_k, target)")
        axs[1].set_title("latent states vs ROI / distractor / full-image targets", fontsize=9)
        axs[1].legend(fontsize=8)
        fig.tight_layout()
        files.append(_save(fig, docs_dir / f"{prefix}_latents.png"))

        # 3. accuracy vs K
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for i, v in enumerate(lat):
            ks = sorted(agg[v]["k_sweep"], key=int)
            ax.errorbar([int(k) for k in ks], [agg[v]["k_sweep"][k]["mean"] for k in ks],
                        yerr=[agg[v]["k_sweep"][k]["std"] for k in ks], marker="o", capsize=2, label=v)
        kt = results.get("k_train_sweep") or {}
        if kt:
            ks = sorted(kt, key=int)
            ax.errorbar([int(k) for k in ks], [kt[k]["mean"] for k in ks], yerr=[kt[k]["std"] for k in ks],
                        marker="s", ls=":", color="k", capsize=2, label="ROI-SFT, trained at K (stage 1)")
        ax.axhline(chance, ls="--", color="gray", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latent budget K (inference; models trained at K=%d)" % results["config"]["sft"]["k"])
        ax.set_ylabel("held-out accuracy (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(_save(fig, docs_dir / f"{prefix}_k_sweep.png"))

    # 4. stage-1 training curves (seed-mean CE)
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, v in enumerate(variants):
        if v == "roi_vlpo":
            continue
        curves = [r["sft"]["curve"] for r in runs[v].values()]
        steps = [c["step"] for c in curves[0]]
        axs[0].plot(steps, [sum(c[j]["ce"] for c in curves) / len(curves) for j in range(len(steps))],
                    label=STAGE1[v], color=f"C{i}")
        if STAGE1[v] != "vanilla":
            axs[1].plot(steps, [sum(c[j]["latent_cos"] or 0 for c in curves) / len(curves) for j in range(len(steps))],
                        label=STAGE1[v], color=f"C{i}")
    axs[0].set_title("stage 1: answer CE (train)", fontsize=9)
    axs[1].set_title("stage 1: cos(h_k, its training target)", fontsize=9)
    for a in axs:
        a.set_xlabel("step")
        a.legend(fontsize=8)
    fig.tight_layout()
    files.append(_save(fig, docs_dir / f"{prefix}_sft_curves.png"))
    return files


def task_examples(data_dir: Path, path: Path, n: int = 4) -> str:
    """A few held-out images with the lesion box and the gold answer (docs figure)."""
    items = load_heldout(data_dir)[:n]
    fig, axs = plt.subplots(1, n, figsize=(2.2 * n, 2.5))
    for ax, it in zip(axs, items):
        ax.imshow(Image.open(it["image"]))
        x0, y0, x1, y1 = it["box"]
        ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow",
                                                  lw=1.5, ls="--"))
        ax.set_title(f"{it['answer']}. {dict(zip('ABCD', it['options']))[it['answer']]}", fontsize=9)
        ax.axis("off")
    fig.suptitle("held-out examples (dashed: ROI box; title: gold answer)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def markdown_table(results: dict) -> str:
    agg = results["aggregate"]

    def f(s, pct=True):
        if not s:
            return "–"
        return f"{s['mean']:.1f} ± {s['std']:.1f}" if pct else f"{s['mean']:.3f} ± {s['std']:.3f}"

    lines = ["| variant | stage-1 acc | final acc | cos ROI | cos distractor | cos full | zero drop | shuffle drop |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in results["config"]["variants"]:
        a = agg.get(v)
        if not a:
            continue
        lines.append(f"| {v} | {f(a.get('stage1_accuracy'))} | {f(a.get('accuracy'))} | {f(a.get('cos_roi'), False)} "
                     f"| {f(a.get('cos_distractor'), False)} | {f(a.get('cos_full'), False)} | "
                     f"{f(a.get('drop_zero'))} | {f(a.get('drop_shuffle'))} |")
    ks = sorted({k for v in agg.values() for k in (v.get("k_sweep") or {})}, key=int)
    if ks:
        lines += ["", "| variant | " + " | ".join(f"K={k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
        for v in results["config"]["variants"]:
            sw = (agg.get(v) or {}).get("k_sweep")
            if sw:
                lines.append(f"| {v} | " + " | ".join(f(sw.get(k)) for k in ks) + " |")
    ex = results.get("extra") or {}
    if ex:
        lines += ["", "| stage-1-only run | overrides | stage-1 acc | cos ROI | cos distractor | zero drop | shuffle drop |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, e in ex.items():
            st = e["stats"]
            lines.append(f"| {name} | {e['spec']['stage1']} {json.dumps(e['spec'].get('sft') or {})} | "
                         f"{f(st.get('accuracy'))} | {f(st.get('cos_roi'), False)} | {f(st.get('cos_distractor'), False)}"
                         f" | {f(st.get('drop_zero'))} | {f(st.get('drop_shuffle'))} |")
    return "\n".join(lines)


def run_experiment(cfg: dict) -> dict:
    t0 = time.perf_counter()
    data_dir = prepare_data(cfg)
    for s in cfg["seeds"]:
        init_checkpoint(cfg, s)
    stage1s = sorted({STAGE1[v] for v in cfg["variants"]}, key=["roi", "noroi", "vanilla"].index)
    jobs = [(cfg, s, st, None) for st in stage1s for s in cfg["seeds"]]
    jobs += [(cfg, s, e["stage1"], e) for e in cfg["extra"] for s in cfg["extra_seeds"]]
    done = []
    if cfg["workers"] > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(cfg["workers"], maxtasksperchild=1) as pool:
            for item in pool.imap_unordered(_job_entry, jobs):
                done.append(item)
                print(f"[mechanism] seed {item[0]} {item[1]} {(item[2] or {}).get('name', '')} done in "
                      f"{item[4]:.0f}s", flush=True)
    else:
        for j in jobs:
            done.append(_job_entry(j))
            print(f"[mechanism] seed {j[1]} {j[2]} {(j[3] or {}).get('name', '')} done in {done[-1][4]:.0f}s",
                  flush=True)
    runs: dict = {}
    extra: dict = {}
    job_seconds = []
    for seed, stage1, ex, res, dt in done:
        job_seconds.append({"seed": seed, "stage1": stage1, "extra": (ex or {}).get("name"), "seconds": dt})
        for v, r in res.items():
            (runs if ex is None else extra).setdefault(v, {})[str(seed)] = r
    runs = {v: dict(sorted(runs[v].items())) for v in cfg["variants"] if v in runs}
    extra_stats = {}
    for e in cfg["extra"]:
        recs = list(extra.get(e["name"], {}).values())
        if recs:
            st = {k: summary_stats([r["sft_eval"].get(k) for r in recs])
                  for k in ("accuracy", "cos_roi", "cos_distractor", "cos_full", "drop_zero", "drop_shuffle")}
            st["sft_train_latent_cos"] = summary_stats([r["sft"]["final"].get("latent_cos") for r in recs])
            st["sft_train_ce"] = summary_stats([r["sft"]["final"].get("ce") for r in recs])
            extra_stats[e["name"]] = {"spec": e, "stats": {k: v for k, v in st.items() if v}}
    ktrain = {}  # accuracy vs TRAINING K (ROI-SFT, stage 1): extras that change only sft.k, plus the main K
    for e in cfg["extra"]:
        if e["stage1"] == "roi" and set(e.get("sft") or {}) == {"k"} and e["name"] in extra_stats:
            ktrain[str(e["sft"]["k"])] = extra_stats[e["name"]]["stats"]["accuracy"]["values"]
    if ktrain and "roi_grpo" in runs:
        sd = set(map(str, cfg["extra_seeds"]))
        ktrain[str(cfg["sft"]["k"])] = [r["sft_eval"]["accuracy"] for s, r in runs["roi_grpo"].items()
                                        if s in sd and "sft_eval" in r]
    task = json.loads((data_dir / "task.json").read_text())
    results = {"config": {k: v for k, v in cfg.items() if k != "quick"}, "task": task, "runs": runs,
               "aggregate": aggregate(runs), "extra": extra_stats, "extra_runs": extra,
               "k_train_sweep": {k: summary_stats(v) for k, v in ktrain.items() if v},
               "wall_seconds": time.perf_counter() - t0, "job_seconds": job_seconds,
               "cpu_count": os.cpu_count()}
    results["table_md"] = markdown_table(results)
    results["plots"] = plot(results, Path(cfg["docs_dir"]), cfg["plot_prefix"])
    results["plots"].append(task_examples(data_dir, Path(cfg["docs_dir"]) / f"{cfg['plot_prefix']}_task_example.png"))
    results["wall_seconds"] = time.perf_counter() - t0
    out = Path(cfg["results"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/mechanism/mechanism.py", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML (configs/mechanism.yaml); defaults when omitted")
    ap.add_argument("--quick", action="store_true", help="the config's reduced `quick:` settings (CI, a few minutes)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set sft.steps=100 (repeatable; values parsed as YAML)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, quick=args.quick, overrides=args.overrides)
    res = run_experiment(cfg)
    print(res["table_md"])
    print(f"results: {cfg['results']}  plots: {', '.join(res['plots'])}  wall: {res['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
