"""Stage-2 recipe: VLPO / GRPO on the shared training engine (`medlvr.training.engine.Engine`), readable top to bottom.

    result = train_vlpo(cfg)            # cfg: VLPORunConfig (training/vlpo/config.py)
    python -m medlvr.training.vlpo.trainer --config configs/vlpo_tiny.yaml [--set algo.beta=0.0 ...]
    medlvr train-vlpo --config FILE     # same, through the project CLI

One optimizer step (docs/method.md §4):
1. rollout  B prompts x G samples, one shared prefill per prompt, latent noise recorded (eval mode, no grad);
2. reward   accuracy + format by token id; group-normalised advantages;
3. ref      k3 KL needs the frozen reference's token log-probs (the ROI-SFT checkpoint; skipped when beta == 0);
4. replay   per micro-batch ONE teacher-forced forward with the recorded latents -> token log-probs and H[p-1];
5. update   L = L_text + lambda_lat * L_lat + beta * KL, normalised by GLOBAL counts, engine.backward / step.
One update per rollout batch (on-policy): the behaviour log-probs and means are those recorded by the rollout.

Multi-GPU: launch every rank with `torchrun ... -m medlvr.training.vlpo.trainer --config C` and `engine.backend:
deepspeed`; each rank draws its own B prompts of a common permutation (whole groups per rank), loss normalisers
are all-reduced. Every trajectory row samples its tokens and latent noise from its own generator seeded by (seed,
step, sample id, g) (`rollout_row_seeds`), so a sample's rollout does not depend on the rank or world size. Only
rank 0 logs, and only rank 0 opens Dagster Pipes (when launched by Dagster). `run.log_samples` also records each
rank's rollouts (`samples/rollouts/`) and the sha256 of its reference model (`samples/reference.rank-R.json`).

Checkpoints: `run.out_dir/checkpoints/step-XXXXXXX/` (`medlvr.training.checkpoints`; the engine layout; K saved
next to the weights), the newest `run.keep_last` kept; `run.out_dir/final/model` is the trained policy (a
`load_checkpoint`-able directory). Exact resume (`run.resume: auto`): weights, optimizer, scheduler, global RNGs
(engine) and the prompt sampler position (the rollout draws are a function of the step).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from medlvr.corpus.config import add_config_arguments, exit_on_config_error, load_config
from medlvr.training.checkpoints import (CheckpointError, checkpoint_dir, prune_checkpoints, refuse_silent_overwrite,
                                         resolve_resume)
from medlvr.training.engine import Engine, seed_everything
from medlvr.training.loading import load_model_or_tiny
from medlvr.training.metrics import MetricsLogger, open_sample_log, quiet_loading_bars
from medlvr.training.model import set_pixel_budget
from medlvr.training.pipes import is_rank0, open_pipes, report_failure
from medlvr.training.vlpo.config import VLPORunConfig, resolve_k_latent
from medlvr.training.vlpo.core import (
    collect,
    decode_config,
    global_denominators,
    loss_config,
    micro_batches,
    microbatch_loss,
    rollout_metric_sums,
    rollout_metrics,
    timed,
    vision_token_ids,
)
from medlvr.training.vlpo.data import PromptSampler, build_prompt_batch, load_samples
from medlvr.training.latent_decode import RowGenerators
from medlvr.training.vlpo.rollout import LocalLatentRollout, rollout_row_seeds

def load_policy(cfg: VLPORunConfig):
    """(model, processor, ids) from the ROI-SFT checkpoint, or the tiny offline model; pixel budget set."""
    m = cfg.model
    model, processor, ids = load_model_or_tiny(m.path, m.tiny_seed, m.dtype, m.attn_implementation)
    set_pixel_budget(processor, cfg.data.min_pixels, cfg.data.max_pixels)
    return model, processor, ids


def load_reference(cfg: VLPORunConfig, device: torch.device):
    """The frozen reference policy: `model.ref_path`, else the starting model (never the resumed weights)."""
    m = cfg.model
    ref = load_model_or_tiny(m.ref_path or m.path, m.tiny_seed, m.dtype, m.attn_implementation)[0]
    ref.requires_grad_(False)
    ref.eval()
    return ref.to("cpu" if m.ref_offload else device)


def _save(eng: Engine, cfg: VLPORunConfig, step: int, sampler: PromptSampler, processor) -> Path:
    # no rollout generator state: every row's draws are seeded from (seed, step, sample id) (`rollout_row_seeds`)
    return eng.save(checkpoint_dir(cfg.run.out_dir, step), {"sampler": sampler.state_dict()}, processor=processor,
                    config=cfg.to_dict(), k_latent=cfg.k_latent)


def parameter_sha256(model) -> str:
    """sha256 over the model's parameters (name, dtype, shape, bytes) in name order: equal on two ranks iff they
    hold the same weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _record_rollout(out_dir: Path, rank: int, step: int, exp) -> None:
    """`run.log_samples`: this rank's rollouts of `step` as tensors (token ids, masks, latent noise, inputs and
    means), `samples/rollouts/step-S.rank-R.safetensors`, written atomically."""
    from safetensors.torch import save_file

    o = exp.out
    path = out_dir / "samples" / "rollouts" / f"step-{step:07d}.rank-{rank}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"sequences": o.sequences, "gen_mask": o.gen_mask, "sampled_mask": o.sampled_mask, "noise": o.noise,
               "z": o.z, "mu": o.mu, "logprobs": o.logprobs, "advantages": exp.advantages}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def train_vlpo(cfg: VLPORunConfig, *, log_fn=None) -> dict:
    """Run (or resume) a VLPO/GRPO training run. Returns {"final_dir", "steps", "metrics": [per-step dicts]}.

    K is `rollout.k_latent`, or the starting checkpoint's when the config leaves it unset."""
    cfg = resolve_k_latent(cfg)
    run, seed = cfg.run, cfg.engine.seed
    refuse_silent_overwrite(run.out_dir, run.resume, run.replace)
    if run.threads:
        torch.set_num_threads(run.threads)
    out_dir = Path(run.out_dir)
    seed_everything(seed)
    policy, processor, ids = load_policy(cfg)
    B, G = run.prompts_per_step, cfg.rollout.num_generations
    n_micro = math.ceil(B * G / run.micro_batch_size)
    ecfg = dataclasses.replace(cfg.engine, grad_accum=n_micro)
    mu = cfg.algo.updates_per_rollout
    eng = Engine(policy, ecfg, total_steps=run.max_steps * mu, micro_batch_size=run.micro_batch_size,
                 token_ids=(ids.start, ids.latent, ids.end))
    policy = eng.model
    lcfg = loss_config(cfg)
    ref = load_reference(cfg, eng.device) if cfg.algo.beta != 0 else None
    samples = load_samples(cfg.data, out_dir)
    sampler = PromptSampler(len(samples), B * eng.world_size, seed=seed)
    engine_rollout = LocalLatentRollout(policy, ids)
    dcfg = decode_config(cfg.rollout, cfg.k_latent, banned_ids=vision_token_ids(policy))

    ck = resolve_resume(out_dir, run.resume)
    if ck is not None:
        saved_world = json.loads((ck / "trainer_state.json").read_text())["world_size"]
        if saved_world != eng.world_size:  # the prompt sampler's position counts global batches of B x ranks
            raise CheckpointError(f"checkpoint {ck} was written by {saved_world} ranks, this run has "
                                  f"{eng.world_size}: Stage 2 resumes on the world size that wrote it")
        extra = eng.resume(ck)
        sampler.load_state_dict(extra["sampler"])
    logger = MetricsLogger(out_dir, enabled=eng.is_main, total_steps=run.max_steps,
                           tensorboard=run.tensorboard, progress=run.progress,
                           start_step=eng.global_step // mu)
    if eng.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    history, done_here = [], 0
    sample_log = open_sample_log(out_dir, eng.rank, eng.global_step // mu) if run.log_samples else None
    if run.log_samples:  # the reference every rank scores against: the 2-rank tests check the hashes agree
        ref_record = out_dir / "samples" / f"reference.rank-{eng.rank}.json"
        tmp = ref_record.with_name(ref_record.name + ".tmp")
        tmp.write_text(json.dumps({"rank": eng.rank,
                                   "reference_sha256": None if ref is None else parameter_sha256(ref)}))
        tmp.replace(ref_record)
    step = lambda: eng.global_step // mu  # noqa: E731  training steps (rollout batches) done
    while step() < run.max_steps:
        if run.stop_after is not None and done_here >= run.stop_after:
            break
        t_step = time.perf_counter()
        step_idx = sampler.next_indices()  # the whole step batch, every rank's B prompts
        idx = step_idx[eng.rank * B:(eng.rank + 1) * B]
        row_seeds = rollout_row_seeds(seed, step() + 1, [samples[i].sample_id for i in step_idx], G)
        gen = RowGenerators(row_seeds[eng.rank * B * G:(eng.rank + 1) * B * G], eng.device)
        batch = build_prompt_batch(processor, [samples[i] for i in idx], cfg.data.instruction)
        # one bottleneck draw per rollout batch, a pure function of (seed, step): rollout and replay share it
        closed = cfg.rollout.bottleneck.closed(seed, step(), run.max_steps)
        exp = collect(policy, ref, engine_rollout, batch, ids, dataclasses.replace(dcfg, closed=closed), cfg.algo,
                      processor.tokenizer,
                      micro_batch=run.micro_batch_size, generator=gen, ref_offload=cfg.model.ref_offload,
                      need_ref=cfg.algo.beta != 0)
        if sample_log is not None:  # whole groups per rank: trajectory b*G + g is sample b's g-th
            sample_log.write(json.dumps({"step": step() + 1, "rank": eng.rank,
                                         "sample_ids": [samples[i].sample_id for i in idx],
                                         "reward": exp.rewards["reward"].tolist(),
                                         "response_length": exp.out.gen_mask.sum(-1).tolist(),
                                         "answer_tokens": exp.out.sampled_mask.sum(-1).tolist(),
                                         "neg_logp": (-(exp.out.logprobs * exp.out.sampled_mask).sum(-1)).tolist(),
                                         "row_seeds": gen.seeds})
                             + "\n")
            sample_log.flush()
            _record_rollout(out_dir, eng.rank, step() + 1, exp)
        local = global_denominators(exp, cfg.algo.aggregation)
        denoms = {k: eng.all_reduce_sum(v) / eng.world_size for k, v in local.items()}
        times = dict(exp.times)
        policy.train()
        for _ in range(mu):  # metrics of the last pass (with mu > 1 its ratios show how far the policy moved)
            sums: dict[str, float] = {}
            for mb in micro_batches(exp.out.sequences.shape[0], run.micro_batch_size):
                with eng.autocast():
                    lo = microbatch_loss(policy, exp, mb, ids, lcfg, denoms, times)
                with timed(times, "backward", eng.device):
                    eng.backward(lo.loss)
                with timed(times, "optim", eng.device):
                    res = eng.step()
                for k in ("loss", "text_loss", "latent_loss", "kl"):
                    sums[k] = sums.get(k, 0.0) + lo.metrics[k]
                for k in ("text_count", "clip_text_count", "latent_count", "clip_latent_count",
                          "latent_abs_log_ratio_sum"):
                    sums[k] = sums.get(k, 0.0) + lo.metrics.get(k, 0.0)
            if not res.stepped:
                raise RuntimeError("the engine did not step at the end of the rollout batch (grad_accum mismatch)")
        done_here += 1
        m = rollout_metrics(sums=eng.all_reduce_sums(rollout_metric_sums(exp)))  # the whole step batch
        sums = eng.all_reduce_sums(sums)
        for k in ("loss", "text_loss", "latent_loss", "kl"):  # rank r's share is W x its part of the global mean
            sums[k] /= eng.world_size
        m.update(loss=sums["loss"], text_loss=sums["text_loss"], latent_loss=sums["latent_loss"], kl=sums["kl"],
                 clip_frac_text=sums["clip_text_count"] / max(1.0, sums["text_count"]),
                 clip_frac_latent=sums["clip_latent_count"] / max(1.0, sums["latent_count"]),
                 latent_abs_log_ratio=sums["latent_abs_log_ratio_sum"] / max(1.0, sums["latent_count"]),
                 grad_norm=res.grad_norm, lr=res.lr)
        times["update"] = times.get("backward", 0.0) + times.get("optim", 0.0)
        times["step"] = time.perf_counter() - t_step
        m.update({f"time_{k}": v for k, v in times.items()})
        history.append({"step": step(), **m})
        logger.log(step(), m)
        if log_fn is not None and eng.is_main:
            log_fn(step(), m)
        if run.save_every and step() % run.save_every == 0 and step() < run.max_steps:
            _save(eng, cfg, step(), sampler, processor)
            if eng.is_main:
                prune_checkpoints(out_dir, run.keep_last, upto=step())
    logger.close()
    if sample_log is not None:
        sample_log.close()
    result = {"steps": step(), "metrics": history, "final_dir": None, "checkpoint": None}
    if step() > 0:
        ck_dir = _save(eng, cfg, step(), sampler, processor)
        result["checkpoint"] = str(ck_dir)
        if step() >= run.max_steps:
            final = out_dir / "final"
            if eng.is_main:
                shutil.rmtree(final, ignore_errors=True)
                final.mkdir(parents=True)
                shutil.copytree(ck_dir / "model", final / "model")
                if (ck_dir / "adapter").is_dir():  # engine.lora: the adapter next to the merged model
                    shutil.copytree(ck_dir / "adapter", final / "adapter")
            result["final_dir"] = str(final / "model")
        if eng.is_main:
            prune_checkpoints(out_dir, run.keep_last, upto=step())
    return result


def summary_metadata(result: dict) -> dict:
    """Scalars for Dagster / the console: last-step metrics and mean reward over the run."""
    hist = result["metrics"]
    md = {"steps": result["steps"], "final_dir": result["final_dir"] or "", "checkpoint": result["checkpoint"] or ""}
    if hist:
        last = hist[-1]
        for k in ("reward_mean", "accuracy", "format_rate", "kl", "zero_std_groups", "clip_frac_text",
                  "clip_frac_latent", "latent_abs_log_ratio", "time_step"):
            if last.get(k) is not None:
                md[f"last_{k}"] = float(last[k])
        md["mean_reward_run"] = float(sum(h["reward_mean"] for h in hist) / len(hist))
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train-vlpo", description="Stage-2 VLPO / GRPO training (docs/method.md §4-5)")
    add_config_arguments(p, "configs/vlpo_tiny.yaml, configs/vlpo_qwen25vl_7b.yaml", "algo.variant=grpo")
    return exit_on_config_error("medlvr train-vlpo", run_cli, p.parse_args(argv))


def run_cli(args) -> int:
    """`--config` + `--set` -> train, with Pipes reporting when launched by Dagster. A `ConfigError` is raised as
    is (the root CLI prints it as one line and exits 2)."""
    cfg = load_config(VLPORunConfig, args.config, args.overrides)
    refuse_silent_overwrite(cfg.run.out_dir, cfg.run.resume, cfg.run.replace)  # before anything is written there
    quiet_loading_bars()
    with open_pipes() as pipes:
        log_fn = None
        if pipes is not None:
            def log_fn(step, m):  # noqa: E306
                if step % 10 == 0 or step == cfg.run.max_steps:
                    pipes.log.info(f"step {step}: reward {m['reward_mean']:.3f} acc {m['accuracy']:.3f} "
                                   f"kl {m['kl']:.4f}")
        try:
            result = train_vlpo(cfg, log_fn=log_fn)
        except Exception as exc:
            report_failure(pipes, exc, cfg.run.out_dir)
            raise
        md = summary_metadata(result)
        if pipes is not None:
            pipes.report_asset_materialization(metadata=md)
        if is_rank0():
            print(summary_line(md))
    return 0


def summary_line(md: dict) -> str:
    """The console's last line: what was trained and where the model is (every metric is in metrics.jsonl)."""
    reward = (f": mean reward {md['mean_reward_run']:.3f} over the run, last step reward "
              f"{md.get('last_reward_mean', float('nan')):.3f}, accuracy {md.get('last_accuracy', float('nan')):.3f}"
              if "mean_reward_run" in md else "")
    where = f"final model: {md['final_dir']}" if md["final_dir"] else f"checkpoint: {md['checkpoint'] or 'none'}"
    return f"VLPO: {md['steps']} steps{reward}; {where}"


if __name__ == "__main__":
    sys.exit(main())
