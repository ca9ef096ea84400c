"""One VLPO / GRPO iteration without the optimizer (docs/method.md §4): rollouts -> rewards -> advantages ->
reference log-probs -> per-micro-batch replay loss. The trainer (`training/vlpo/trainer.py`) adds backward,
optimizer, logging and checkpoints; the benchmark times these same functions.

Shapes: B prompts, G samples each, N = B*G trajectories (row b*G + g), T generated positions, K latent slots.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from medlvr.training.latent_decode import DecodeConfig, LatentDecodeOutput
from medlvr.training.model import LatentTokenIds, eos_token_ids
from medlvr.training.replay import replay
from medlvr.training.vlpo.algos import ADV_ESTIMATORS, LossConfig, LossOutput, lookup, vlpo_loss
from medlvr.training.vlpo.data import PromptBatch
from medlvr.training.vlpo.rewards import compute_rewards


@contextmanager
def timed(times: dict, key: str, device: torch.device | None = None):
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    times[key] = times.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class Experience:
    """Everything the update needs, detached. rewards/advantages (N,), ref_logp (N, T) or None,
    latent_mask (N, K) bool (slot k < number of latents fed)."""

    batch: PromptBatch
    out: LatentDecodeOutput
    rewards: dict
    advantages: torch.Tensor
    zero_std: torch.Tensor
    ref_logp: torch.Tensor | None
    latent_mask: torch.Tensor
    times: dict = field(default_factory=dict)


def vision_token_ids(model) -> tuple[int, ...]:
    """Ids the policy must never emit as text: a sampled `<|image_pad|>` would be taken for an image slot by the
    replay (and `<|vision_start|>` etc. are meaningless in an answer). Banned in rollouts and replay alike."""
    c = model.config
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return tuple(sorted({int(getattr(c, n)) for n in names if getattr(c, n, None) is not None}))


def decode_config(rollout_cfg, k_latent: int, eos_ids: tuple[int, ...] | None = None,
                  banned_ids: tuple[int, ...] = ()) -> DecodeConfig:
    return DecodeConfig(banned_ids=tuple(banned_ids),
        k_latent=k_latent, max_new_tokens=rollout_cfg.max_new_tokens, force_start=rollout_cfg.force_start,
        temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p, num_samples=rollout_cfg.num_generations,
        noise=rollout_cfg.noise if k_latent > 0 else "none", noise_scale=rollout_cfg.noise_scale,
        eos_token_ids=eos_ids,
    )


@torch.no_grad()
def reference_logprobs(ref_model, batch: PromptBatch, out: LatentDecodeOutput, ids: LatentTokenIds,
                       micro_batch: int, offload: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """(N, T) token log-probs of the frozen reference with the rollout's latents patched in (no grad).
    With `offload`, the reference lives on CPU and visits `device` only for this forward."""
    if offload and device is not None and device.type != "cpu":
        ref_model.to(device)
    try:
        parts = []
        for idx in torch.arange(out.sequences.shape[0]).split(micro_batch):
            r = replay(ref_model, batch.inputs, out.sequences[idx], out.gen_mask[idx], out.z[idx], ids,
                       out.logprob_temperature, prompt_index=out.prompt_index[idx],
                       banned_ids=(ids.latent, *vision_token_ids(ref_model)), closed=out.closed)
            parts.append(r.token_logprobs)
        return torch.cat(parts)
    finally:
        if offload and device is not None and device.type != "cpu":
            ref_model.to("cpu")


def collect(policy, ref_model, engine, batch: PromptBatch, ids: LatentTokenIds, dcfg: DecodeConfig, algo,
            tokenizer, *, micro_batch: int, generator: torch.Generator | None = None, ref_offload: bool = False,
            need_ref: bool = True) -> Experience:
    """Rollouts (shared prefill), rewards (registered, `rewards.compute_rewards`), advantages (the registered
    estimator the config selects), reference log-probs."""
    times: dict[str, float] = {}
    dev = policy.device
    with timed(times, "rollout", dev):
        out = engine.generate(batch.inputs, dcfg, generator)
    G = dcfg.num_samples
    with timed(times, "reward"):
        opts = [o for o in batch.options for _ in range(G)]
        gold = [g for g in batch.gold for _ in range(G)]
        rew = compute_rewards(out.sequences, out.gen_mask, ids, tokenizer, opts, gold, eos_ids=eos_token_ids(policy),
                              format_weight=algo.format_weight)
        estimator = lookup(ADV_ESTIMATORS, "advantage estimator", algo.adv_estimator)
        adv, zero_std = estimator(rew["reward"], G, eps=algo.adv_eps)
    ref_logp = None
    if need_ref and ref_model is not None:
        with timed(times, "ref", dev):
            ref_logp = reference_logprobs(ref_model, batch, out, ids, micro_batch, ref_offload, dev)
    K = out.z.shape[1]
    latent_mask = torch.arange(K, device=out.n_latent.device)[None] < out.n_latent[:, None]
    return Experience(batch=batch, out=out, rewards=rew, advantages=adv.to(dev), zero_std=zero_std,
                      ref_logp=ref_logp, latent_mask=latent_mask, times=times)


def loss_config(cfg) -> LossConfig:
    """The loss settings of a VLPORunConfig: its `algo` section's LossConfig fields, with the variant's
    lambda_lat (algos.RL_VARIANTS: 0 for variants without a latent loss)."""
    loss = {f.name: getattr(cfg.algo, f.name) for f in dataclasses.fields(LossConfig)}
    return LossConfig(**{**loss, "lambda_lat": cfg.lambda_lat})


def micro_batches(n: int, size: int) -> list[torch.Tensor]:
    return list(torch.arange(n).split(size))


def microbatch_loss(policy, exp: Experience, idx: torch.Tensor, ids: LatentTokenIds, lcfg: LossConfig,
                    denoms: dict[str, float], times: dict | None = None) -> LossOutput:
    """Replay (one forward with grad) + VLPO loss for trajectories `idx`, normalised by the GLOBAL counts in
    `denoms` (so summing the micro-batch losses gives exactly the whole-batch loss)."""
    out = exp.out
    times = {} if times is None else times
    with timed(times, "replay", policy.device):
        r = replay(policy, exp.batch.inputs, out.sequences[idx], out.gen_mask[idx], out.z[idx], ids,
                   out.logprob_temperature, prompt_index=out.prompt_index[idx],
                   banned_ids=(ids.latent, *vision_token_ids(policy)), closed=out.closed)
    lm = exp.latent_mask[idx]
    return vlpo_loss(
        r.token_logprobs, out.logprobs[idx].to(r.token_logprobs.device), out.sampled_mask[idx], exp.advantages[idx],
        lcfg, ref_logp=None if exp.ref_logp is None else exp.ref_logp[idx],
        z=out.z[idx] if lm.any() else None, mu_old=out.mu[idx], mu_new=r.mu, latent_mask=lm if lm.any() else None,
        denoms=denoms,
    )


def global_denominators(exp: Experience, aggregation: str) -> dict[str, float]:
    """Counts the aggregation divides by, over the whole step batch."""
    text, lat = exp.out.sampled_mask, exp.latent_mask
    if aggregation == "token_mean":
        return {"text": float(text.sum().clamp(min=1)), "latent": float(lat.sum().clamp(min=1))}
    return {"text": float((text.sum(-1) > 0).sum().clamp(min=1)), "latent": float((lat.sum(-1) > 0).sum().clamp(min=1))}


def rollout_metric_sums(exp: Experience) -> dict[str, float]:
    """The sums and counts behind `rollout_metrics`, so that ranks can add theirs before dividing (a multi-rank
    run logs the metrics of the whole step batch, not rank 0's share)."""
    out, rew = exp.out, exp.rewards
    sampled = out.sampled_mask
    reward = rew["reward"].double()
    noise = out.noise.float().norm(dim=-1)[exp.latent_mask.to(out.noise.device)] if exp.latent_mask.any() else None
    return {
        "closed": float(out.closed), "ranks": 1.0, "n": float(reward.numel()),
        "reward": float(reward.sum()), "reward_sq": float((reward ** 2).sum()),
        "accuracy": float(rew["accuracy"].double().sum()), "format": float(rew["format"].double().sum()),
        "parsed": float(rew["parsed"].double().sum()),
        "zero_std_groups": float(exp.zero_std.double().sum()), "groups": float(exp.zero_std.numel()),
        "neg_logp": float(-(out.logprobs * sampled).double().sum()), "sampled": float(sampled.sum()),
        "gen": float(out.gen_mask.sum()),
        "noise_norm": float(noise.double().sum()) if noise is not None else 0.0,
        "noise_count": float(noise.numel()) if noise is not None else 0.0,
    }


def rollout_metrics(exp: Experience | None = None, sums: dict[str, float] | None = None) -> dict[str, float]:
    """Step metrics of the rollouts, from `exp` or from `rollout_metric_sums` added over ranks."""
    s = rollout_metric_sums(exp) if sums is None else sums
    n = s["n"]
    var = (s["reward_sq"] - s["reward"] ** 2 / n) / (n - 1) if n > 1 else 0.0
    return {
        "closed": s["closed"] / s["ranks"],
        "reward_mean": s["reward"] / n,
        "reward_std": math.sqrt(max(var, 0.0)),
        "accuracy": s["accuracy"] / n,
        "format_rate": s["format"] / n,
        "parse_rate": s["parsed"] / n,
        "zero_std_groups": s["zero_std_groups"] / max(1.0, s["groups"]),
        # Monte-Carlo estimate of the policy entropy at the sampling temperature: E_y~p[-log p(y)]
        "entropy": s["neg_logp"] / max(1.0, s["sampled"]),
        "response_length": s["gen"] / n,
        "answer_tokens": s["sampled"] / n,
        "latent_noise_norm": s["noise_norm"] / s["noise_count"] if s["noise_count"] else 0.0,
    }