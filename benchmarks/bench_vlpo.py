"""VLPO step benchmark (issue 7): time per phase, VLPO step vs GRPO step on the same batch, shared vs per-sample
prefill in rollouts.

    HF_HUB_OFFLINE=1 python benchmarks/bench_vlpo.py [--prompts 2 --G 8 --K 8 --answer 16 --image 448 --repeats 5]

Tiny random Qwen2.5-VL (CPU, float32, 1 torch thread by default); EOS is disabled so every trajectory has the
same length (K + 2 + answer positions) and the runs compare like with like. Each repeat:
  1. rollouts ONCE (shared prefill, relative latent noise), rewards, advantages (forced nonzero), reference
     log-probs -- the batch both variants then train on;
  2. update with VLPO (text + latent + KL) and with MedLVR-GRPO (text + KL, lambda_lat = 0), interleaved, each
     = replay forward + loss + backward + optimizer step on a fresh copy of the same weights;
  3. rollouts with per-sample prefill (every prompt repeated G times) vs the shared prefill.
Reports medians over the repeats. `--device cuda --dtype bfloat16 --shape 7b` for a GPU run (shape from
training.tiny.TinyConfig fields; not run here).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from medlvr.training.engine import Engine, EngineConfig  # noqa: E402
from medlvr.training.latent_decode import RowGenerators  # noqa: E402
from medlvr.training.tiny import build_tiny  # noqa: E402
from medlvr.training.vlpo.algos import LossConfig  # noqa: E402
from medlvr.training.vlpo.config import AlgoConfig, RolloutConfig  # noqa: E402
from medlvr.training.vlpo.core import (collect, decode_config, global_denominators, microbatch_loss,  # noqa: E402
                                timed, vision_token_ids)
from medlvr.training.vlpo.data import build_prompt_batch, synthetic_samples  # noqa: E402
from medlvr.training.vlpo.rollout import LocalLatentRollout  # noqa: E402


def update(policy, exp, ids, lcfg, micro, times, gradient_checkpointing=False):
    """One optimizer step over the rollouts in micro-batches of `micro` trajectories; returns its wall time."""
    eng = Engine(policy, EngineConfig(device=str(policy.device), lr=1e-7, warmup_ratio=0.0,
                                      gradient_checkpointing=gradient_checkpointing,
                                      grad_accum=(exp.out.sequences.shape[0] + micro - 1) // micro),
                 total_steps=10, micro_batch_size=micro)
    denoms = global_denominators(exp, lcfg.aggregation)
    t0 = time.perf_counter()
    for mb in torch.arange(exp.out.sequences.shape[0]).split(micro):
        lo = microbatch_loss(policy, exp, mb, ids, lcfg, denoms, times)
        with timed(times, "backward", policy.device):
            eng.backward(lo.loss)
        with timed(times, "optim", policy.device):
            eng.step()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--K", type=int, default=8)
    p.add_argument("--answer", type=int, default=16, help="text positions after <Medlvr_End>")
    p.add_argument("--image", type=int, default=448)
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the raw medians here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    b = build_tiny(seed=0, device=a.device)
    model, proc, ids = b.model, b.processor, b.ids
    samples = synthetic_samples(a.prompts, tempfile.mkdtemp(), size=a.image)
    batch = build_prompt_batch(proc, samples)
    batch.inputs = {k: v.to(a.device) if hasattr(v, "to") else v for k, v in batch.inputs.items()}
    rcfg = RolloutConfig(num_generations=a.G, k_latent=a.K, max_new_tokens=a.K + 2 + a.answer)
    dcfg = dataclasses.replace(decode_config(rcfg, a.K, banned_ids=vision_token_ids(model)), eos_token_ids=())
    algo = AlgoConfig()
    ref = copy.deepcopy(model).requires_grad_(False)
    vlpo_cfg = LossConfig(beta=0.04, lambda_lat=1.0, latent_sigma=0.1, latent_sigma_relative=True)
    grpo_cfg = dataclasses.replace(vlpo_cfg, lambda_lat=0.0)
    shared, per_sample = LocalLatentRollout(model, ids), LocalLatentRollout(model, ids, per_sample_prefill=True)
    rec: dict[str, list[float]] = {}

    def add(k, v):
        rec.setdefault(k, []).append(v)

    for r in range(a.repeats + 1):  # repeat 0 is warm-up
        gen = torch.Generator(device=a.device).manual_seed(r)
        exp = collect(model, ref, shared, batch, ids, dcfg, algo, proc.tokenizer, micro_batch=a.micro, generator=gen)
        exp.advantages = torch.linspace(-1, 1, exp.advantages.numel(), device=exp.advantages.device)
        order = [("vlpo", vlpo_cfg), ("grpo", grpo_cfg)] if r % 2 else [("grpo", grpo_cfg), ("vlpo", vlpo_cfg)]
        res = {}
        for name, lcfg in order:
            times: dict[str, float] = {}
            total = update(copy.deepcopy(model), exp, ids, lcfg, a.micro, times)
            res[name] = (total, times)
        t = {}
        with timed(t, "shared"):
            shared.generate(batch.inputs, dcfg, torch.Generator(device=a.device).manual_seed(r))
        with timed(t, "per_sample"):
            per_sample.generate(batch.inputs, dcfg, torch.Generator(device=a.device).manual_seed(r))
        with timed(t, "row_generators"):  # the trainer's draws: one generator per trajectory row (issue 28)
            shared.generate(batch.inputs, dcfg, RowGenerators(range(r * 1000, r * 1000 + a.prompts * a.G), a.device))
        if r == 0:
            continue
        for k in ("rollout", "reward", "ref"):
            add(f"phase_{k}", exp.times[k])
        for name in ("vlpo", "grpo"):
            total, times = res[name]
            add(f"{name}_update_total", total)
            for k in ("replay", "backward", "optim"):
                add(f"{name}_{k}", times[k])
            add(f"{name}_step", exp.times["rollout"] + exp.times["reward"] + exp.times["ref"] + total)
        add("vlpo_over_grpo_update", res["vlpo"][0] / res["grpo"][0])
        add("vlpo_over_grpo_step", (exp.times["rollout"] + exp.times["reward"] + exp.times["ref"] + res["vlpo"][0])
            / (exp.times["rollout"] + exp.times["reward"] + exp.times["ref"] + res["grpo"][0]))
        add("rollout_shared", t["shared"])
        add("rollout_per_sample", t["per_sample"])
        add("per_sample_over_shared", t["per_sample"] / t["shared"])
        add("row_generators_over_one", t["row_generators"] / t["shared"])
    med = {k: statistics.median(v) for k, v in rec.items()}
    N, T = a.prompts * a.G, a.K + 2 + a.answer
    print(f"tiny Qwen2.5-VL on {a.device}, {a.threads} thread(s); B={a.prompts} prompts x G={a.G} = {N} "
          f"trajectories, K={a.K}, {T} generated positions, image {a.image}px "
          f"({int(batch.inputs['image_grid_thw'][0].prod()) // 4} visual tokens), median of {a.repeats}")
    print("phase times (ms):")
    for k in ("phase_rollout", "phase_reward", "phase_ref", "vlpo_replay", "vlpo_backward", "vlpo_optim",
              "vlpo_update_total", "vlpo_step", "grpo_replay", "grpo_backward", "grpo_optim", "grpo_update_total",
              "grpo_step"):
        print(f"  {k:22s} {1000 * med[k]:9.1f}")
    print(f"VLPO / GRPO update (replay+loss+backward+optim): {med['vlpo_over_grpo_update']:.3f}")
    print(f"VLPO / GRPO whole step (rollout+reward+ref+update): {med['vlpo_over_grpo_step']:.3f}")
    print(f"rollouts: shared prefill {1000 * med['rollout_shared']:.1f} ms, per-sample prefill "
          f"{1000 * med['rollout_per_sample']:.1f} ms, x{med['per_sample_over_shared']:.2f}")
    print(f"rollouts, one generator per row / one generator: {med['row_generators_over_one']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(med, indent=1))


if __name__ == "__main__":
    main()
