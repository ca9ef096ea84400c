"""The mechanism experiment's JOBS (docs/mechanism.md): the synthetic data, each seed's random init, stage 1
(`medlvr.training.sft.recipe.train`), stage 2 (`medlvr.training.vlpo.trainer.train_vlpo`) and the held-out
evaluation with the causal diagnostics (`medlvr.evaluation.latent_diagnostics.diagnose`).

Every cached product is keyed by everything that determines it (issue 27): the data folder by the data settings
and the code version of `medlvr.corpus`; each seed's init checkpoint by the seed, the tiny model's FULL shape
(`TinyConfig`, `rms_norm_eps` included) and the code version; a job (task x seed x stage-1 recipe, with its stage-2
variants and evaluations) by the resolved settings it reads, its init key and the code version of the packages it
runs (`medlvr.corpus`, `.training`, `.evaluation`) and of this file and the config module. A changed key is a new
folder / job file, so a rerun redoes exactly the jobs whose inputs changed, and reuses the others (a rerun after a
kill, or with more seeds, redoes only the missing jobs).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import multiprocessing as mp
import shutil
import time
from functools import lru_cache
from pathlib import Path

import torch

from mechanism_config import main_task, merge, tiny_config
from medlvr.corpus.config import build_config
from medlvr.corpus.evalsets.base import Sample, file_uri
from medlvr.corpus.sample_data.synthetic_grounding import INSTRUCTION, write_grounding_task
from medlvr.evaluation.latent_diagnostics import SampleDecoder, diagnose
from medlvr.pipelines.code_version import package_code_version
from medlvr.training.model import load_checkpoint, save_checkpoint, set_pixel_budget
from medlvr.training.roi_targets import batch_roi_targets
from medlvr.training.sft.config import SFTConfig
from medlvr.training.sft.recipe import train as train_sft
from medlvr.training.tiny import build_tiny
from medlvr.training.vlm_inputs import image_embeddings
from medlvr.training.vlpo.config import VLPORunConfig
from medlvr.training.vlpo.core import vision_token_ids
from medlvr.training.vlpo.data import build_prompt_batch
from medlvr.training.vlpo.trainer import train_vlpo

CODE_PACKAGES = ("medlvr.corpus", "medlvr.training", "medlvr.evaluation")  # what a job runs
EXPERIMENT_CODE = ("mechanism_config.py", "mechanism_jobs.py")  # the experiment's own code that shapes a job


@lru_cache(maxsize=None)
def code_version() -> str:
    """sha256 (20 hex) of the source of the packages a job runs and of the experiment's job code."""
    h = hashlib.sha256(package_code_version(*CODE_PACKAGES).encode())
    for name in EXPERIMENT_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:20]


def digest(material: dict) -> str:
    """16 hex of the canonical JSON of a key's material."""
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def data_key(cfg: dict, task: str) -> dict:
    return {"data": cfg["data"], "lesion_cells": cfg["tasks"][task].get("lesion_cells", 1),
            "code": package_code_version("medlvr.corpus")}


def init_key(cfg: dict, seed: int) -> dict:
    return {"seed": seed, "shape": dataclasses.asdict(tiny_config(cfg["model"])), "code": code_version()}


def job_key(cfg: dict, task: str, seed: int, stage1: str, extra: dict | None) -> dict:
    """Everything a job's records depend on: the settings it reads (its task, stage-1 recipe, the stage-2 variants
    it trains, data, model, pixels, SFT / RL / eval budgets, threads), its init's key and the code version."""
    variants = {} if extra else {v: cfg["variants"][v] for v in cfg["tasks"][task]["variants"]
                                 if cfg["variants"][v]["stage1"] == stage1}
    return {"task": task, "lesion_cells": cfg["tasks"][task].get("lesion_cells", 1), "seed": seed,
            "stage1": {stage1: cfg["stage1"][stage1]}, "variants": variants, "extra": extra,
            **{k: cfg[k] for k in ("data", "model", "pixels", "sft", "rl", "eval", "threads")},
            "init": digest(init_key(cfg, seed)), "code": code_version()}


def job_name(task: str, seed: int, stage1: str, extra: dict | None) -> str:
    return f"{task}-seed{seed}-{extra['name'] if extra else stage1}"


def job_dir(cfg: dict, task: str, seed: int, stage1: str, extra: dict | None) -> Path:
    """The job's training outputs (stage-1 and stage-2 run folders), one folder per key."""
    return Path(cfg["work_dir"]) / "runs" / \
        f"{job_name(task, seed, stage1, extra)}-{digest(job_key(cfg, task, seed, stage1, extra))}"


# --------------------------------------------------------------------------------------------------- data / init


def data_dir(cfg: dict, task: str) -> Path:
    return Path(cfg["work_dir"]) / "data" / f"{task}-{digest(data_key(cfg, task))}"


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


def init_checkpoint(cfg: dict, seed: int) -> Path:
    """The random tiny model of this seed and shape, saved once per key (every variant of the seed starts from
    it); written to a temporary folder and renamed, so a killed save leaves no half checkpoint."""
    d = Path(cfg["work_dir"]) / "init" / f"seed{seed}-{digest(init_key(cfg, seed))}"
    if not (d / "config.json").is_file():
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        b = build_tiny(seed=seed, cfg=tiny_config(cfg["model"]))
        save_checkpoint(b.model, b.processor, tmp)
        tmp.rename(d)
    return d


# --------------------------------------------------------------------------------------------------- training


def run_sft(cfg: dict, task: str, seed: int, stage1: str, init_dir: Path, extra: dict | None = None) -> dict:
    """Stage 1 through the SFT recipe (`medlvr.training.sft.recipe.train`); every SFT config key the experiment
    sets is here."""
    s = merge(cfg["sft"], (extra or {}).get("sft") or {})
    st = cfg["stage1"][stage1]
    k = s["k"] if st.get("latent", True) else 0
    name = extra["name"] if extra else stage1
    out = job_dir(cfg, task, seed, stage1, extra) / f"sft_{name}"
    bn = st.get("bottleneck") or {}
    latent = dict(k_latent=k, mode=s["mode"], grad=s["grad"],
                  roi_target=st.get("roi_target", "box") if k else "off", roi_loss=s["roi_loss"],
                  roi_weight=float(s["roi_weight"]) if k else 0.0,
                  bottleneck=dict(p=float(bn.get("p", 0.0)), p_end=bn.get("p_end")),
                  text_blind=bool(st.get("text_blind", False)))
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


def run_rl(cfg: dict, task: str, seed: int, variant: str, sft_model: str, k: int, out_root: Path) -> dict:
    """Stage 2 through the VLPO trainer (`medlvr.training.vlpo.trainer.train_vlpo`); every VLPO config key the
    experiment sets is here."""
    r, spec = cfg["rl"], cfg["variants"][variant]
    algo = spec["rl"]
    out = out_root / f"rl_{variant}"
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


def latent_cosines(model, processor, decoder: SampleDecoder, items: list[dict], mu: torch.Tensor, k: int) -> dict:
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
        res.update(latent_cosines(model, processor, dec, items, opened.mu, k))
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
            r["rl"] = run_rl(cfg, task, seed, v, sft["model_dir"], sft["k"], job_dir(cfg, task, seed, stage1, None))
            model_dir = r["rl"]["model_dir"]
        r["model_dir"] = model_dir
        r["eval"] = evaluate(cfg, model_dir, items, sft["k"], full=True)
        out[v] = r
    return out


def job_file(cfg: dict, task: str, seed: int, stage1: str, extra: dict | None) -> Path:
    """Where a finished job's records live, named by its key: a rerun reuses them while the key holds."""
    key = digest(job_key(cfg, task, seed, stage1, extra))
    return Path(cfg["work_dir"]) / "jobs" / f"{job_name(task, seed, stage1, extra)}-{key}.json"


def job_entry(args):
    """Run one job, or reuse its finished records when its key's file exists.
    Returns (task, seed, stage1, extra, records, seconds, reused)."""
    cfg, task, seed, stage1, extra = args
    path = job_file(cfg, task, seed, stage1, extra)
    if path.is_file():
        done = json.loads(path.read_text())
        return task, seed, stage1, extra, done["records"], done["seconds"], True
    t0 = time.perf_counter()
    res = run_job(cfg, task, seed, stage1, extra)
    dt = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"records": res, "seconds": dt, "key": job_key(cfg, task, seed, stage1, extra)}))
    tmp.replace(path)  # atomic: a killed job leaves no file and is redone
    return task, seed, stage1, extra, res, dt, False


def job_list(cfg: dict) -> list[tuple]:
    """Every job of the config, seed-major (a run stopped early has whole seeds done)."""
    jobs = []
    for s in cfg["seeds"]:
        for t, spec in cfg["tasks"].items():
            stage1s = sorted({cfg["variants"][v]["stage1"] for v in spec["variants"]})
            jobs += [(cfg, t, s, st, None) for st in stage1s]
    jobs += [(cfg, main_task(cfg), s, e["stage1"], e) for e in cfg["extra"] for s in cfg["extra_seeds"]]
    return jobs


def run_jobs(cfg: dict, log=print) -> list[tuple]:
    """Prepare the data and inits, run (or reuse) every job in `workers` processes; the `job_entry` tuples."""
    t0 = time.perf_counter()
    for t in cfg["tasks"]:
        prepare_data(cfg, t)
    for s in cfg["seeds"]:
        init_checkpoint(cfg, s)
    jobs = job_list(cfg)
    done = []

    def note(item):
        log(f"[mechanism] {item[0]} seed {item[1]} {item[2]} {(item[3] or {}).get('name', '')} "
            f"{'reused' if item[6] else 'done'} in {item[5]:.0f}s ({time.perf_counter() - t0:.0f}s elapsed)")

    if cfg["workers"] > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(cfg["workers"], maxtasksperchild=1) as pool:
            for item in pool.imap_unordered(job_entry, jobs):
                done.append(item)
                note(item)
    else:
        for j in jobs:
            done.append(job_entry(j))
            note(done[-1])
    return done
