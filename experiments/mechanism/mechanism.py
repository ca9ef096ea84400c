"""Mechanism validation (docs/mechanism.md): does the latent segment carry the answer? Training variants FROM
SCRATCH on the synthetic grounding task (corpus/sample_data/synthetic_grounding.py), several seeds, one budget,
with the visual bottleneck (training/bottleneck.py) and the causal latent diagnostics
(evaluation/latent_diagnostics.py).

    python experiments/mechanism/mechanism.py --config configs/mechanism.yaml [--quick] [--set key.sub=value ...]

Per seed, one random tiny Qwen2.5-VL (training.tiny, shape from `model:`) is the common initialisation of every
variant. A variant = a stage-1 recipe (`stage1:`, through `medlvr.training.sft.recipe.train`) + a stage-2 RL
algorithm (`variants:`, through `medlvr.training.vlpo.trainer.train_vlpo`), e.g.

| variant            | stage 1 (ROI-SFT)                                      | stage 2                          |
| ------------------ | ------------------------------------------------------ | -------------------------------- |
| vanilla_grpo       | latent.k_latent=0                                      | grpo                             |
| noroi_grpo         | latent.roi_target=full_image                           | medlvr_grpo                      |
| roi_vlpo           | latent.roi_target=box                                  | vlpo                             |
| roi_bn1_vlpo       | + latent.bottleneck.p=1                                | vlpo, rollout.bottleneck.p=1     |
| roi_bn05_vlpo      | + latent.bottleneck.p=0.5                              | vlpo, rollout.bottleneck.p=0.5   |
| roi_anneal_vlpo    | + latent.bottleneck.p=1, p_end=0                       | vlpo (open)                      |
| noroi_bn1_grpo     | full_image targets + bottleneck p=1                    | medlvr_grpo, bottleneck p=1      |

`tasks:` are task variants (`lesion_cells`: 1 = the lesion is one merged visual token; 4 = a 2 x 2 block, so the
K ROI-bucket targets differ), each with its own variant list. Evaluation on the held-out split (greedy, the
trainers' prompt): stage-1 open / closed accuracy; after stage 2 the causal diagnostics (open and closed
accuracy, donor-following with latents swapped between rows, zeroed latents, linear probe latents -> answer,
K sweep with zeroed latents at every K) and the cosines of the latent states to the lesion / distractor /
full-image targets. Aggregates: mean, sample std, 95 % t-interval over seeds, every per-seed value. Jobs
(task x seed x stage-1 recipe) run in `workers` processes of `threads` threads.

Every finished job is kept in `work_dir/jobs/` (atomic JSON): a rerun after a kill, or with more seeds, redoes
only the missing jobs (delete `work_dir` to start over after changing settings).

Outputs: `results` (JSON) and `docs_dir/<prefix>_*.png`. `python experiments/mechanism/attention.py` adds where
the answer position attends (image / lesion token / latent slots) to the results JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medlvr.corpus.config import ConfigError, apply_overrides, build_config, read_yaml  # noqa: E402
from medlvr.corpus.evalsets.base import Sample, file_uri  # noqa: E402
from medlvr.corpus.sample_data.synthetic_grounding import INSTRUCTION, write_grounding_task  # noqa: E402
from medlvr.evaluation.latent_diagnostics import SampleDecoder, diagnose  # noqa: E402
from medlvr.training.model import load_checkpoint, save_checkpoint, set_pixel_budget  # noqa: E402
from medlvr.training.roi_targets import batch_roi_targets  # noqa: E402
from medlvr.training.sft.config import SFTConfig  # noqa: E402
from medlvr.training.sft.recipe import train as train_sft  # noqa: E402
from medlvr.training.tiny import TinyConfig, build_tiny  # noqa: E402
from medlvr.training.vlm_inputs import image_embeddings  # noqa: E402
from medlvr.training.vlpo.config import VLPORunConfig  # noqa: E402
from medlvr.training.vlpo.core import vision_token_ids  # noqa: E402
from medlvr.training.vlpo.data import build_prompt_batch  # noqa: E402
from medlvr.training.vlpo.trainer import train_vlpo  # noqa: E402

DEFAULTS: dict = {
    "work_dir": "medlvr_home/mechanism",  # checkpoints, data (git-ignored)
    "results": "experiments/mechanism/results.json",
    "docs_dir": "docs",
    "plot_prefix": "mechanism",
    "seeds": [0, 1, 2],
    "workers": 2,  # parallel jobs (processes)
    "threads": 1,  # torch threads per job
    # task variants: name -> {lesion_cells, variants}; the first task is the main one (docs tables, attention.py)
    "tasks": {"single": {"lesion_cells": 1, "variants": ["vanilla_grpo", "noroi_grpo", "roi_vlpo"]}},
    # stage-1 recipes: name -> {latent: bool, roi_target: box | full_image, bottleneck: {p, p_end}}
    "stage1": {
        "vanilla": {"latent": False},
        "noroi": {"latent": True, "roi_target": "full_image"},
        "roi": {"latent": True, "roi_target": "box"},
    },
    # variants: name -> {stage1, rl: grpo | medlvr_grpo | vlpo | none, rl_bottleneck: {p, p_end}}
    "variants": {
        "vanilla_grpo": {"stage1": "vanilla", "rl": "grpo"},
        "noroi_grpo": {"stage1": "noroi", "rl": "medlvr_grpo"},
        "roi_vlpo": {"stage1": "roi", "rl": "vlpo"},
    },
    "data": {"n_train": 2000, "n_test": 200, "seed": 0, "size": 112, "n_structures": 4},
    "model": {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 4, "kv_heads": 2},
    "pixels": {"min": 3136, "max": 12544},
    "sft": {"steps": 100, "micro_batch": 16, "lr": 1.0e-3, "warmup_ratio": 0.05, "min_lr_ratio": 0.1,
            "weight_decay": 0.0, "k": 4, "mode": "self_fed", "grad": "bptt", "roi_loss": "cosine",
            "roi_weight": 1.0},
    "rl": {"steps": 30, "prompts_per_step": 8, "num_generations": 8, "micro_batch": 64, "lr": 1.0e-4,
           "temperature": 1.0, "beta": 0.04, "lambda_lat": 1.0, "latent_sigma": 0.1, "noise": "relative",
           "noise_scale": 0.05, "answer_tokens": 3},
    "eval": {"batch": 100, "k_sweep": [1, 2, 4, 8], "probe_fraction": 0.5},
    # extra stage-1-only runs on the first task (investigations): [{"name", "stage1", "sft": {overrides}}]
    "extra": [],
    "extra_seeds": [0, 1, 2],
    # goal (d): pairs [a, b] of variants compared paired by seed (ROI vs no-ROI targets under the bottleneck)
    "goal_pairs": [["roi_bn1_vlpo", "noroi_bn1_grpo"]],
    "quick": {},  # merged over everything with --quick
}



# The config's shape, every level typed through the one loader (`build_config`): an unknown key anywhere (a
# table entry's `bottlenek:`, `sft.stpes`) is a ConfigError with a did-you-mean. The experiment reads the checked
# mapping; the defaults are DEFAULTS' (table entries: the defaults the code applies).
@dataclass(frozen=True)
class BottleneckSpec:
    p: float = 0.0
    p_end: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    lesion_cells: int = 1
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage1Spec:
    latent: bool = True
    roi_target: Literal["box", "full_image"] = "box"
    bottleneck: BottleneckSpec | None = None


@dataclass(frozen=True)
class VariantSpec:
    stage1: str = ""
    rl: Literal["grpo", "medlvr_grpo", "vlpo", "none"] = "none"
    rl_bottleneck: BottleneckSpec | None = None


@dataclass(frozen=True)
class DataSpec:
    n_train: int
    n_test: int
    seed: int
    size: int
    n_structures: int


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


@dataclass(frozen=True)
class PixelsSpec:
    min: int
    max: int


@dataclass(frozen=True)
class SFTSpec:  # every key optional: an `extra` run's `sft:` overrides a few
    steps: int = 0
    micro_batch: int = 0
    lr: float = 0.0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    k: int = 0
    mode: str = ""
    grad: str = ""
    roi_loss: str = ""
    roi_weight: float = 0.0


@dataclass(frozen=True)
class RLSpec:
    steps: int
    prompts_per_step: int
    num_generations: int
    micro_batch: int
    lr: float
    temperature: float
    beta: float
    lambda_lat: float
    latent_sigma: float
    noise: str
    noise_scale: float
    answer_tokens: int


@dataclass(frozen=True)
class EvalSpec:
    batch: int
    k_sweep: tuple[int, ...]
    probe_fraction: float


@dataclass(frozen=True)
class ExtraRun:
    name: str
    stage1: str
    sft: SFTSpec | None = None


@dataclass(frozen=True)
class MechanismConfig:
    work_dir: str
    results: str
    docs_dir: str
    plot_prefix: str
    seeds: tuple[int, ...]
    workers: int
    threads: int
    tasks: dict[str, TaskSpec]
    stage1: dict[str, Stage1Spec]
    variants: dict[str, VariantSpec]
    data: DataSpec
    model: ModelShape
    pixels: PixelsSpec
    sft: SFTSpec
    rl: RLSpec
    eval: EvalSpec
    extra: tuple[ExtraRun, ...]
    extra_seeds: tuple[int, ...]
    goal_pairs: tuple[tuple[str, str], ...]
    quick: dict[str, Any] | None = None  # checked merged over the rest (load_config)


# two-sided 95 % Student t quantiles by degrees of freedom (n - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
RL_ALGOS = ("grpo", "medlvr_grpo", "vlpo", "none")


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, quick: bool = False, overrides=()) -> dict:
    """DEFAULTS <- the YAML file <- its `quick:` section (with --quick) <- `key.sub=value` overrides.
    `tasks`, `stage1` and `variants` given in the file replace the defaults' (they are tables, not settings)."""
    user = read_yaml(path) if path else {}
    base = {k: v for k, v in DEFAULTS.items() if not (k in ("tasks", "stage1", "variants") and k in user)}
    cfg = _merge(base, user)
    if quick:
        cfg = _merge(cfg, cfg.get("quick") or {})
    cfg = apply_overrides(cfg, overrides)
    build_config(MechanismConfig, cfg)  # an unknown key at any depth: one line with a did-you-mean
    build_config(MechanismConfig, _merge(cfg, cfg.get("quick") or {}), "quick")  # and in the --quick overlay
    cfg["quick_mode"] = bool(quick)
    for t, spec in cfg["tasks"].items():
        for v in spec["variants"]:
            if v not in cfg["variants"]:
                raise ConfigError(f"tasks.{t}.variants: unknown variant {v!r}")
    for v, spec in cfg["variants"].items():
        if spec["stage1"] not in cfg["stage1"] or spec.get("rl", "none") not in RL_ALGOS:
            raise ConfigError(f"variants.{v}: unknown stage1 {spec['stage1']!r} or rl {spec.get('rl')!r}")
    return cfg


def main_task(cfg: dict) -> str:
    return next(iter(cfg["tasks"]))


# --------------------------------------------------------------------------------------------------- data / init


def data_dir(cfg: dict, task: str) -> Path:
    return Path(cfg["work_dir"]) / ("data" if task == main_task(cfg) else f"data_{task}")


def prepare_data(cfg: dict, task: str) -> Path:
    d = cfg["data"]
    out = data_dir(cfg, task)
    want = dict(seed=d["seed"], size=d["size"], n_structures=d["n_structures"],
                lesion_cells=cfg["tasks"][task].get("lesion_cells", 1))
    tj = out / "task.json"
    if tj.is_file():
        old = json.loads(tj.read_text())
        if all(old.get(k, 1 if k == "lesion_cells" else None) == v for k, v in want.items()) \
                and old["counts"].get("train") == d["n_train"] and old["counts"].get("test") == d["n_test"]:
            return out
    write_grounding_task(out, n_train=d["n_train"], n_test=d["n_test"], **want)
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


def run_sft(cfg: dict, task: str, seed: int, stage1: str, init_dir: Path, extra: dict | None = None) -> dict:
    """Stage 1 through the SFT recipe (`medlvr.training.sft.recipe.train`); every SFT config key the experiment
    sets is here."""
    s = _merge(cfg["sft"], (extra or {}).get("sft") or {})
    st = cfg["stage1"][stage1]
    k = s["k"] if st.get("latent", True) else 0
    name = extra["name"] if extra else stage1
    out = Path(cfg["work_dir"]) / task / f"seed{seed}" / f"sft_{name}"
    bn = st.get("bottleneck") or {}
    latent = dict(k_latent=k, mode=s["mode"], grad=s["grad"],
                  roi_target=st.get("roi_target", "box") if k else "off", roi_loss=s["roi_loss"],
                  roi_weight=float(s["roi_weight"]) if k else 0.0,
                  bottleneck=dict(p=float(bn.get("p", 0.0)), p_end=bn.get("p_end")))
    sc = build_config(SFTConfig, dict(
        model=dict(path=str(init_dir)),
        data=dict(corpus=str(data_dir(cfg, task)), split="train", min_pixels=cfg["pixels"]["min"],
                  max_pixels=cfg["pixels"]["max"], seed=seed, max_answer_tokens=8),
        latent=latent,
        engine=dict(device="cpu", lr=float(s["lr"]), weight_decay=float(s["weight_decay"]),
                    warmup_ratio=float(s["warmup_ratio"]), schedule="cosine", min_lr_ratio=float(s["min_lr_ratio"]),
                    seed=seed),
        run=dict(out_dir=str(out), micro_batch_size=s["micro_batch"], max_steps=s["steps"], save_every=0, keep_last=1,
                 log_every=max(1, s["steps"] // 10), tensorboard=False, progress=False, threads=cfg["threads"],
                 replace=True),  # a job that runs again (its results file missing) starts from scratch
    ))
    t0 = time.perf_counter()
    res = train_sft(sc)
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"model_dir": str(Path(res["checkpoint"]) / "model"), "seconds": time.perf_counter() - t0,
            "final": {k_: res["metrics"].get(k_) for k_ in ("ce", "roi", "latent_cos")}, "k": k,
            "curve": [{k_: h.get(k_) for k_ in ("step", "ce", "roi", "latent_cos", "closed")} for h in hist]}


def run_rl(cfg: dict, task: str, seed: int, variant: str, sft_model: str, k: int) -> dict:
    """Stage 2 through the VLPO trainer (`medlvr.training.vlpo.trainer.train_vlpo`); every VLPO config key the
    experiment sets is here."""
    r, spec = cfg["rl"], cfg["variants"][variant]
    algo = spec["rl"]
    out = Path(cfg["work_dir"]) / task / f"seed{seed}" / f"rl_{variant}"
    k_eff = 0 if algo == "grpo" else k
    bn = spec.get("rl_bottleneck") or {}
    vc = build_config(VLPORunConfig, dict(
        model=dict(path=sft_model),
        data=dict(source="synthetic_grounding", root=str(data_dir(cfg, task)), split="train",
                  instruction=INSTRUCTION, min_pixels=cfg["pixels"]["min"], max_pixels=cfg["pixels"]["max"]),
        rollout=dict(num_generations=r["num_generations"], temperature=float(r["temperature"]),
                     max_new_tokens=(k_eff + 2 if k_eff else 0) + r["answer_tokens"], k_latent=max(k, 1),
                     noise=r["noise"] if algo == "vlpo" else "none", noise_scale=float(r["noise_scale"]),
                     bottleneck=dict(p=float(bn.get("p", 0.0)), p_end=bn.get("p_end"))),
        algo=dict(variant=algo, beta=float(r["beta"]), lambda_lat=float(r["lambda_lat"]),
                  latent_sigma=float(r["latent_sigma"])),
        engine=dict(device="cpu", lr=float(r["lr"]), weight_decay=0.0, warmup_ratio=0.0, schedule="constant",
                    seed=seed),
        run=dict(out_dir=str(out), max_steps=r["steps"], prompts_per_step=r["prompts_per_step"],
                 micro_batch_size=r["micro_batch"], save_every=0, keep_last=1, resume="", replace=True,
                 threads=cfg["threads"], tensorboard=False, progress=False),
    ))
    t0 = time.perf_counter()
    res = train_vlpo(vc)
    hist = res["metrics"]
    return {"model_dir": res["final_dir"], "seconds": time.perf_counter() - t0,
            "reward_curve": [h.get("accuracy") for h in hist],
            "mean_train_accuracy_last5": sum(h["accuracy"] for h in hist[-5:]) / max(1, len(hist[-5:])),
            "latent_abs_log_ratio": sum(h.get("latent_abs_log_ratio", 0) for h in hist) / max(1, len(hist))}


# --------------------------------------------------------------------------------------------------- evaluation


def load_heldout(data_dir_: Path) -> list[dict]:
    return [json.loads(x) for x in (data_dir_ / "heldout.jsonl").read_text().splitlines() if x.strip()]


def heldout_samples(items: list[dict]) -> list[Sample]:
    """Held-out items as evaluation `Sample`s (multiple choice over the four patterns)."""
    return [Sample(benchmark="synthetic_grounding", sample_id=it["id"], question=it["question"], kind="mc",
                   answer=it["answer"], options=tuple(zip("ABCD", it["options"])), images=(file_uri(it["image"]),))
            for it in items]


def _cosines(model, processor, decoder: SampleDecoder, items: list[dict], mu: torch.Tensor, k: int) -> dict:
    """cos(h_k, target) of the latent states against the lesion's ROI targets, the distractors' and the full
    image's (the controls that say whether a cosine is lesion-specific)."""
    cos = {"roi": [], "full": [], "distractor": []}
    start = 0
    for samples, enc in zip(decoder.batches, decoder.encoded):
        its = items[start:start + len(samples)]
        m = mu[start:start + len(samples)]
        start += len(samples)
        pv, grid = enc["pixel_values"], enc["image_grid_thw"]
        sizes = [(it["height"], it["width"]) for it in its]
        img = image_embeddings(model, pv, grid)

        def c(boxes):
            t = batch_roi_targets(model, processor.image_processor, pv, grid, sizes, boxes, k, image_embeds=img)
            return torch.nn.functional.cosine_similarity(m, t.float(), dim=-1).mean(-1)  # (n,)

        cos["roi"] += c([[it["box"]] for it in its]).tolist()
        cos["full"] += c([None] * len(its)).tolist()
        cos["distractor"] += torch.stack([c([[b] for b in col]) for col in
                                          zip(*[it["distractor_boxes"] for it in its])]).mean(0).tolist()
    return {f"cos_{key}": sum(v) / len(v) for key, v in cos.items() if v}


def evaluate(cfg: dict, model_dir: str, items: list[dict], k: int, full: bool) -> dict:
    """Held-out accuracy; for a latent model also closed accuracy, and with `full` every causal diagnostic
    (evaluation.latent_diagnostics.diagnose) and the latent cosines."""
    model, processor, ids = load_checkpoint(model_dir)
    model.eval()
    set_pixel_budget(processor, cfg["pixels"]["min"], cfg["pixels"]["max"])
    eos = (processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    dec = SampleDecoder(model, processor, ids, heldout_samples(items),
                        lambda proc, b: build_prompt_batch(proc, b, INSTRUCTION).inputs,
                        batch_size=cfg["eval"]["batch"], max_new_tokens=lambda kk: (kk + 2 if kk else 0) + 3,
                        eos_ids=eos, banned_ids=vision_token_ids(model))
    with torch.inference_mode(False), torch.no_grad():
        opened = dec.run(k)
        res: dict = {"accuracy": opened.accuracy, "n": len(items)}
        if k == 0:
            return res
        if not full:
            res["accuracy_closed"] = dec.run(k, closed=True).accuracy
            return res
        res.update(diagnose(dec, k, cfg["eval"]["k_sweep"], probe_fraction=cfg["eval"]["probe_fraction"],
                            seed=0, opened=opened))
        res.update(_cosines(model, processor, dec, items, opened.mu, k))
    return res


# --------------------------------------------------------------------------------------------------- jobs


def run_job(cfg: dict, task: str, seed: int, stage1: str, extra: dict | None = None) -> dict:
    """One stage-1 model of one seed, its stage-2 variants and all evaluations. Returns {variant: record}.
    With `extra` (an entry of cfg["extra"]): stage 1 only, returns {extra name: record}."""
    torch.set_num_threads(cfg["threads"])
    items = load_heldout(data_dir(cfg, task))
    init = init_checkpoint(cfg, seed)
    sft = run_sft(cfg, task, seed, stage1, init, extra=extra)
    rec = {"seed": seed, "stage1": stage1, "sft": sft,
           "sft_eval": evaluate(cfg, sft["model_dir"], items, sft["k"], full=extra is not None)}
    if extra is not None:
        return {extra["name"]: rec}
    out = {}
    for v in cfg["tasks"][task]["variants"]:
        spec = cfg["variants"][v]
        if spec["stage1"] != stage1:
            continue
        r = copy.deepcopy(rec)
        model_dir = sft["model_dir"]
        if spec.get("rl", "none") != "none":
            r["rl"] = run_rl(cfg, task, seed, v, sft["model_dir"], sft["k"])
            model_dir = r["rl"]["model_dir"]
        r["model_dir"] = model_dir
        r["eval"] = evaluate(cfg, model_dir, items, sft["k"], full=True)
        out[v] = r
    return out


def job_file(cfg: dict, task: str, seed: int, stage1: str, extra: dict | None) -> Path:
    """Where a finished job's records live: a rerun (after a kill, or with more seeds) reuses them."""
    name = extra["name"] if extra else stage1
    return Path(cfg["work_dir"]) / "jobs" / f"{task}-seed{seed}-{name}.json"


def _job_entry(args):
    cfg, task, seed, stage1, extra = args
    path = job_file(cfg, task, seed, stage1, extra)
    if path.is_file():
        done = json.loads(path.read_text())
        return task, seed, stage1, extra, done["records"], done["seconds"]
    t0 = time.perf_counter()
    res = run_job(cfg, task, seed, stage1, extra)
    dt = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"records": res, "seconds": dt}))
    tmp.replace(path)  # atomic: a killed job leaves no file and is redone
    return task, seed, stage1, extra, res, dt


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
           "accuracy_zero", "drop_zero", "probe_accuracy", "probe_majority", "cos_roi", "cos_distractor", "cos_full")


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
    """Issue 16's goal per variant: (a) open accuracy >= vanilla's (mean), (b) donor-following >= 80 %,
    (c) zeroing costs >= 30 points, and (d) ROI vs no-ROI targets under the bottleneck (paired by seed): the 95 %
    interval of the difference excludes 0."""
    van = (agg.get("vanilla_grpo") or {}).get("accuracy", {}).get("mean")
    out: dict = {"vanilla_accuracy": van, "variants": {}}
    for v, a in agg.items():
        if "drop_zero" not in a:  # not a latent model
            continue
        # donor-following is undefined when every answer is the same (no row's donor answers differently): the
        # latents then decide nothing, which fails (b)
        df = a.get("donor_following")
        out["variants"][v] = {
            "a_open_ge_vanilla": None if van is None else a["accuracy"]["mean"] >= van,
            "b_donor_following_ge_80": bool(df and df["mean"] >= 80),
            "c_zero_drop_ge_30": a["drop_zero"]["mean"] >= 30,
        }
    pairs = cfg["goal_pairs"]
    out["d"] = {}
    for a_, b_ in pairs:
        for key in ("accuracy", "accuracy_closed", "donor_following"):
            st = paired(runs, a_, b_, key)
            if st:
                lo, hi = st["ci95"]
                out["d"][f"{a_} - {b_}: {key}"] = {**st, "separated": bool(lo > 0 or hi < 0)}
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
        bars(ax, ["donor_following", "drop_zero", "probe_accuracy"],
             ["donor-following (open)", "zeroing drop (points)", "linear probe (held-out)"], lat, colors_from=3)
        ax.axhline(80, ls=":", color="C3", lw=1)
        ax.axhline(30, ls=":", color="C4", lw=1)
        ax.set_ylabel("%")
        ax.set_ylim(-20, 105)
        ax.legend(fontsize=7)
        ax.set_title("do the answers use the latents? (dotted: goal thresholds 80 % / 30 points)", fontsize=9)
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
    lines = []
    for task, tr in results["tasks"].items():
        agg, runs = tr["aggregate"], tr["runs"]
        vs = [v for v in results["config"]["tasks"][task]["variants"] if v in agg]
        lc = results["config"]["tasks"][task].get("lesion_cells", 1)
        lines += [f"**Task `{task}`** (lesion = {lc} cell{'s' if lc > 1 else ''}); mean [95 % CI] over seeds, %",
                  "",
                  "| variant | stage-1 open | stage-1 closed | open | closed | donor-following | donor-f. closed "
                  "| zero drop | probe (majority) | cos ROI / distractor |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for v in vs:
            a = agg[v]
            probe = f"{_f(a.get('probe_accuracy'))} ({a['probe_majority']['mean']:.0f})" if a.get("probe_majority") \
                else "–"
            cos = f"{a['cos_roi']['mean']:.2f} / {a['cos_distractor']['mean']:.2f}" if a.get("cos_roi") else "–"
            lines.append(f"| {v} | {_f(a.get('stage1_accuracy'))} | {_f(a.get('stage1_accuracy_closed'))} | "
                         f"{_f(a.get('accuracy'))} | {_f(a.get('accuracy_closed'))} | {_f(a.get('donor_following'))}"
                         f" | {_f(a.get('donor_following_closed'))} | {_f(a.get('drop_zero'))} | {probe} | {cos} |")
        lines += ["", "Per seed (open / closed / donor-following / zero drop):", "",
                  "| variant | " + " | ".join(f"seed {s}" for s in results["config"]["seeds"]) + " |",
                  "| --- |" + " --- |" * len(results["config"]["seeds"])]
        for v in vs:
            cells = []
            for s in results["config"]["seeds"]:
                e = runs[v].get(str(s), {}).get("eval")
                if not e:
                    cells.append("–")
                    continue

                def g(key):
                    return "–" if e.get(key) is None else f"{e[key]:.0f}"

                cells.append(f"{g('accuracy')} / {g('accuracy_closed')} / {g('donor_following')} / {g('drop_zero')}")
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
            van = "no vanilla run on this task" if gl["vanilla_accuracy"] is None else \
                f"vanilla open accuracy {gl['vanilla_accuracy']:.1f}"
            lines += ["", f"Goal (issue 16) per variant ({van}):", "",
                      "| variant | (a) open >= vanilla | (b) donor-following >= 80 | (c) zero drop >= 30 |",
                      "| --- | --- | --- | --- |"]
            for v, g_ in gl["variants"].items():
                lines.append(f"| {v} | " + " | ".join({True: "yes", False: "no", None: "–"}[g_[k]] for k in
                                                      ("a_open_ge_vanilla", "b_donor_following_ge_80",
                                                       "c_zero_drop_ge_30")) + " |")
        if gl["d"]:
            lines += ["", "(d) ROI vs no-ROI targets under the bottleneck, paired by seed (difference, 95 % CI):", ""]
            for name, st in gl["d"].items():
                lines.append(f"* {name}: {_f(st)} -> {'separated' if st['separated'] else 'within seed noise'}")
        lines.append("")
    ex = results.get("extra") or {}
    if ex:
        lines += ["| stage-1-only run | overrides | open acc | closed acc | donor-following | zero drop |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, e in ex.items():
            st = e["stats"]
            lines.append(f"| {name} | {e['spec']['stage1']} {json.dumps(e['spec'].get('sft') or {})} | "
                         f"{_f(st.get('accuracy'))} | {_f(st.get('accuracy_closed'))} | "
                         f"{_f(st.get('donor_following'))} | {_f(st.get('drop_zero'))} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- driver


def run_experiment(cfg: dict) -> dict:
    t0 = time.perf_counter()
    dirs = {t: prepare_data(cfg, t) for t in cfg["tasks"]}
    for s in cfg["seeds"]:
        init_checkpoint(cfg, s)
    jobs = []  # seed-major: a run stopped early has whole seeds done (finished jobs are kept in work_dir/jobs)
    for s in cfg["seeds"]:
        for t, spec in cfg["tasks"].items():
            stage1s = sorted({cfg["variants"][v]["stage1"] for v in spec["variants"]})
            jobs += [(cfg, t, s, st, None) for st in stage1s]
    jobs += [(cfg, main_task(cfg), s, e["stage1"], e) for e in cfg["extra"] for s in cfg["extra_seeds"]]
    done = []

    def note(item):
        print(f"[mechanism] {item[0]} seed {item[1]} {item[2]} {(item[3] or {}).get('name', '')} done in "
              f"{item[5]:.0f}s ({time.perf_counter() - t0:.0f}s elapsed)", flush=True)

    if cfg["workers"] > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(cfg["workers"], maxtasksperchild=1) as pool:
            for item in pool.imap_unordered(_job_entry, jobs):
                done.append(item)
                note(item)
    else:
        for j in jobs:
            done.append(_job_entry(j))
            note(done[-1])
    by_task: dict = {t: {} for t in cfg["tasks"]}
    extra: dict = {}
    job_seconds = []
    for task, seed, stage1, ex, res, dt in done:
        job_seconds.append({"task": task, "seed": seed, "stage1": stage1, "extra": (ex or {}).get("name"),
                            "seconds": dt})
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
    results = {"config": {k: v for k, v in cfg.items() if k != "quick"}, "main_task": main_task(cfg),
               "task_info": {t: json.loads((d / "task.json").read_text()) for t, d in dirs.items()},
               "tasks": tasks, "runs": tasks[main_task(cfg)]["runs"], "extra": extra_stats, "extra_runs": extra,
               "job_seconds": job_seconds, "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    results["table_md"] = markdown_tables(results)
    results["plots"] = plot(results, Path(cfg["docs_dir"]), cfg["plot_prefix"])
    results["plots"].append(task_examples(dirs, Path(cfg["docs_dir"]) / f"{cfg['plot_prefix']}_task_example.png"))
    results["wall_seconds"] = time.perf_counter() - t0
    out = Path(cfg["results"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/mechanism/mechanism.py", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="YAML (configs/mechanism.yaml); defaults when omitted")
    ap.add_argument("--quick", action="store_true", help="the config's reduced `quick:` settings (CI, about a minute)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set sft.steps=100 (repeatable; values parsed as YAML)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, quick=args.quick, overrides=args.overrides)
    except ConfigError as e:  # one line, exit 2, as every medlvr command
        print(f"mechanism: error: {e}", file=sys.stderr)
        return 2
    res = run_experiment(cfg)
    print(res["table_md"])
    print(f"results: {cfg['results']}  plots: {', '.join(res['plots'])}  wall: {res['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
