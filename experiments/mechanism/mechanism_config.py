"""The mechanism experiment's CONFIG (docs/mechanism.md): defaults, the typed shape every key is checked against
(through the one loader, `medlvr.corpus.config.build_config`), the `--quick` overlay and `--set` overrides, and the
tiny model's shape. `mechanism_jobs.py` runs the jobs, `mechanism_report.py` aggregates and writes the report,
`mechanism.py` is the entry point."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medlvr.corpus.config import ConfigError, apply_overrides, build_config, read_yaml
from medlvr.training.tiny import TinyConfig

DEFAULTS: dict = {
    "work_dir": "medlvr_home/mechanism",  # checkpoints, data (git-ignored)
    "results": "experiments/mechanism/results.json",
    "docs_dir": "docs",
    "doc": "",  # the doc whose generated sections the report fills (docs/mechanism.md); "" = none
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
    "model": {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 4, "kv_heads": 2, "rms_norm_eps": 1.0e-6},
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
    text_blind: bool = False  # latent.text_blind: the prompt text after the image may not read it (issue 27)


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
    rms_norm_eps: float = 1e-6  # Qwen2.5-VL's; part of every init / job cache key (issue 27)


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
    doc: str
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


RL_ALGOS = ("grpo", "medlvr_grpo", "vlpo", "none")


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, quick: bool = False, overrides=()) -> dict:
    """DEFAULTS <- the YAML file <- its `quick:` section (with --quick) <- `key.sub=value` overrides.
    `tasks`, `stage1` and `variants` given in the file replace the defaults' (they are tables, not settings)."""
    user = read_yaml(path) if path else {}
    base = {k: v for k, v in DEFAULTS.items() if not (k in ("tasks", "stage1", "variants") and k in user)}
    cfg = merge(base, user)
    if quick:
        cfg = merge(cfg, cfg.get("quick") or {})
    cfg = apply_overrides(cfg, overrides)
    build_config(MechanismConfig, cfg)  # an unknown key at any depth: one line with a did-you-mean
    build_config(MechanismConfig, merge(cfg, cfg.get("quick") or {}), "quick")  # and in the --quick overlay
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


def tiny_config(m: dict) -> TinyConfig:
    """The tiny model's full shape from the config's `model:` section (every other field: TinyConfig's)."""
    head_dim = m["hidden"] // m["heads"]
    # mrope sections sum to head_dim / 2 (TinyConfig contract); default (4, 6, 6) for head_dim 32
    half = head_dim // 2
    t = half // 4
    sec = (half - 2 * ((half - t) // 2), (half - t) // 2, (half - t) // 2)
    return TinyConfig(hidden=m["hidden"], intermediate=m["intermediate"], layers=m["layers"], heads=m["heads"],
                      kv_heads=m["kv_heads"], mrope_section=sec,
                      rms_norm_eps=float(m.get("rms_norm_eps", TinyConfig.rms_norm_eps)))
