"""VLPO / GRPO algorithm core: pure tensor functions (docs/method.md §4.3-§4.6). No model, no I/O.

Shapes: N = B * G trajectories (prompt-major: row b*G + g), T generated positions, K latent slots, D hidden size.
Masks are bool; losses are float32 scalars. Every function is differentiable where it makes sense and has a
hand-computed unit test (tests/training/test_vlpo_algos.py).

Conventions (documented choices):
* advantages: `(r - mean_G r) / (std_G r + eps)`, std UNBIASED (torch.std, as TRL and verl);
* aggregation (verl's `loss_agg_mode`, spelt with underscores): "token_mean" (default, verl / DAPO: one mean over all
  masked positions of the batch), "seq_mean_token_mean" (TRL "grpo": per-trajectory mean, then mean over
  trajectories with >= 1 position) or "seq_mean_token_sum" (per-trajectory sum, then that mean);
* k3 KL: `exp(ref - logp) - (ref - logp) - 1 >= 0` (Schulman's estimator of KL(pi_theta || pi_ref));
* clip fraction: share of positions whose clipped branch is active, i.e. the gradient is cut
  (`rho > 1+eps` with A > 0, or `rho < 1-eps` with A < 0).

Extension points (registries, as in verl / EasyR1), each entry a pure function with its own test:
* `ADV_ESTIMATORS` (`@register_adv_estimator("name")`): rewards (N,), G, eps -> (advantages (N,), zero_std (N//G,));
  "grpo" (std-scaled) and "dr_grpo" (mean-centred only). The run config's `algo.adv_estimator` names one.
* `POLICY_LOSSES` (`@register_policy_loss("name")`): `PolicyLossInputs` (log_ratio (N, T), advantages (N, 1),
  the mask (N, T) of the positions that count, which part of the trajectory it scores, "text" or "latent", the
  aggregation mode and its global divisor, the LossConfig) -> (loss scalar, clipped (N, T) bool), as verl's policy
  losses get the response mask and `loss_agg_mode`; `LossConfig.policy_loss` picks one ("ppo_clip"). A sequence-level
  loss (GSPO) or one that treats the latent slots differently is one registration.
* `RL_VARIANTS` (`register_rl_variant`): the paper's variants as table rows (does the rollout have a latent
  segment, does the loss carry the latent term), read by the run config instead of branching on names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
PARTS = ("text", "latent")  # the two parts of a trajectory a policy loss scores

AdvEstimator = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]
PolicyLoss = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]
ADV_ESTIMATORS: dict[str, AdvEstimator] = {}
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_into(table: dict, what: str, name: str):
    """Decorator that puts a function into a registry `table` under `name` (twice is an error). The VLPO
    registries (here, rewards.REWARDS, data.SAMPLE_SOURCES) all register through it."""
    def deco(fn):
        if name in table:
            raise ValueError(f"{what} {name!r} registered twice")
        table[name] = fn
        return fn

    return deco


def register_adv_estimator(name: str):
    """Decorator: `fn(rewards (N,), group_size, eps) -> (advantages (N,) float32, zero_std (N // G,) bool)`."""
    return register_into(ADV_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str):
    """Decorator: `fn(x: PolicyLossInputs) -> (loss: scalar float32, clipped (N, T) bool)`, called once for the text
    tokens and once for the latent slots (`x.part`); `x.aggregate(values (N, T))` reduces per-position values with
    the configured aggregation, as the default "ppo_clip" does."""
    return register_into(POLICY_LOSSES, "policy loss", name)


def lookup(table: dict, what: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; registered: {sorted(table)}")
    return table[name]


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5. rewards (N,) prompt-major -> (advantages (N,) float32, zero_std (N // G,) bool).

    `scale=False` gives Dr.GRPO (`r - mean` only). A group with zero std gets advantage 0 everywhere (its
    numerator is 0), so it contributes no policy gradient; its share is logged.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B*G,) with G={group_size}, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    mean = r.mean(-1, keepdim=True)
    std = r.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    adv = r - mean
    if scale:
        adv = torch.where(std > 0, adv / (std + eps), torch.zeros_like(adv))
    return adv.reshape(-1), (std.squeeze(-1) == 0)


@register_adv_estimator("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5, `(r - mean_G r) / (std_G r + eps)`. rewards (N,) -> (advantages (N,), zero_std (N // G,))."""
    return group_advantages(rewards, group_size, eps, scale=True)


@register_adv_estimator("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO: `r - mean_G r` (no std scaling). rewards (N,) -> (advantages (N,), zero_std (N // G,))."""
    return group_advantages(rewards, group_size, eps, scale=False)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-position k3 estimator of KL(pi_theta || pi_ref): `exp(d) - d - 1`, d = ref_logp - logp. (...) -> (...)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def latent_log_ratio(z: torch.Tensor, mu_old: torch.Tensor, mu_new: torch.Tensor,
                     sigma: float | torch.Tensor) -> torch.Tensor:
    """Eq. 7-8 in the difference form: `(||z - mu_old||^2 - ||z - mu_new||^2) / (2 sigma^2)`.

    z, mu_old, mu_new: (N, K, D); sigma: scalar or broadcastable to (N, K) -> (N, K) float32.
    Gradient w.r.t. mu_new at mu_new == mu_old is `(z - mu_old) / sigma^2`: exactly zero when z == mu_old
    (the paper's deterministic latents) and nonzero with exploration noise (docs/method.md §4.1 Beyond).
    """
    z, mu_old, mu_new = z.float(), mu_old.float(), mu_new.float()
    sq_old = (z - mu_old).pow(2).sum(-1)
    sq_new = (z - mu_new).pow(2).sum(-1)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=z.device)
    return (sq_old - sq_new) / (2 * sigma**2)


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
                      clip_eps_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip per position: `-min(rho A, clip(rho, 1-eps, 1+eps_high) A)`, rho = exp(log_ratio).

    log_ratio (N, T), advantages broadcastable to it ((N, 1) for per-trajectory advantages)
    -> (loss (N, T), clipped (N, T) bool: the clipped branch is active, no gradient flows).
    """
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    rho = torch.exp(log_ratio)
    adv = advantages.expand_as(rho) if advantages.shape != rho.shape else advantages
    unclipped = rho * adv
    clipped = torch.clamp(rho, 1 - clip_eps, 1 + hi) * adv
    loss = -torch.minimum(unclipped, clipped)
    active = ((rho > 1 + hi) & (adv > 0)) | ((rho < 1 - clip_eps) & (adv < 0))
    return loss, active


def masked_aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
                     denom: float | None = None) -> torch.Tensor:
    """Aggregate (N, T) values over mask (N, T) to a scalar; 0 (keeping the graph) when the mask is empty.

    denom: the divisor to use instead of this batch's count (masked positions for "token_mean", trajectories
    with >= 1 position for the "seq_mean_*" modes): with the GLOBAL count of a step, micro-batch losses sum to
    exactly the whole-batch loss (gradient accumulation invariance).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    m = mask.to(values.dtype)
    if mode == "token_mean":
        return (values * m).sum() / (m.sum().clamp(min=1) if denom is None else denom)
    per_seq_n = m.sum(-1)
    per_seq = (values * m).sum(-1)
    if mode == "seq_mean_token_mean":
        per_seq = per_seq / per_seq_n.clamp(min=1)
    has = (per_seq_n > 0).to(values.dtype)
    return (per_seq * has).sum() / (has.sum().clamp(min=1) if denom is None else denom)


@dataclass(frozen=True)
class LossConfig:
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # None: symmetric (DAPO clip-higher when set)
    beta: float = 0.04  # k3 KL weight; 0 disables the reference model
    lambda_lat: float = 1.0  # latent surrogate weight; 0 = text-only loss (MedLVR + GRPO)
    latent_sigma: float = 1.0  # Gaussian surrogate scale
    latent_sigma_relative: bool = False  # sigma_k = latent_sigma * ||mu_old,k|| (calibrated to the hidden norm)
    aggregation: str = "token_mean"  # AGGREGATIONS
    policy_loss: str = "ppo_clip"  # a POLICY_LOSSES name


@dataclass(frozen=True)
class PolicyLossInputs:
    """What a registered policy loss gets for one part of the trajectories (N trajectories, T positions)."""

    log_ratio: torch.Tensor  # (N, T) float32: log pi_theta - log pi_old per position (gradient through pi_theta)
    advantages: torch.Tensor  # (N, 1) per trajectory (or (N, T) per position)
    mask: torch.Tensor  # (N, T) bool: the positions that count (sampled text tokens, or latent slots that exist)
    part: str  # "text" (answer tokens) or "latent" (latent slots; log_ratio is the Gaussian surrogate's, Eq. 7-8)
    aggregation: str  # one of AGGREGATIONS (LossConfig.aggregation)
    denom: float | None  # the step's global divisor for the aggregation (`masked_aggregate`), or None: this batch's
    cfg: LossConfig

    def aggregate(self, values: torch.Tensor) -> torch.Tensor:
        """values (N, T) -> scalar, over `mask` with the configured aggregation and divisor."""
        return masked_aggregate(values, self.mask, self.aggregation, self.denom)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(x: PolicyLossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip per position (`clipped_surrogate`, clip range `clip_eps`, `clip_eps_high`), aggregated:
    x.log_ratio (N, T), x.advantages (N, 1) -> (loss scalar, clipped (N, T) bool)."""
    loss, clipped = clipped_surrogate(x.log_ratio, x.advantages, x.cfg.clip_eps, x.cfg.clip_eps_high)
    return x.aggregate(loss), clipped


@dataclass(frozen=True)
class RLVariant:
    """One row of the variant table (docs/method.md §5): what the rollout and the loss of a variant contain."""

    name: str
    latent: bool  # rollouts open a latent segment of rollout.k_latent slots (False: K forced to 0)
    latent_loss: bool  # the loss carries lambda_lat * latent surrogate (False: lambda_lat forced to 0)
    description: str = ""


RL_VARIANTS: dict[str, RLVariant] = {}


def register_rl_variant(name: str, *, latent: bool, latent_loss: bool, description: str = "") -> RLVariant:
    if name in RL_VARIANTS:
        raise ValueError(f"RL variant {name!r} registered twice")
    if latent_loss and not latent:
        raise ValueError(f"RL variant {name!r}: a latent loss needs a latent segment")
    RL_VARIANTS[name] = RLVariant(name, latent, latent_loss, description)
    return RL_VARIANTS[name]


register_rl_variant("grpo", latent=False, latent_loss=False, description="plain decoding; text PPO-clip + beta KL")
register_rl_variant("medlvr_grpo", latent=True, latent_loss=False, description="latent segment; text loss only")
register_rl_variant("vlpo", latent=True, latent_loss=True, description="latent segment; text + latent + beta KL")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, L = L_text + lambda_lat * L_lat + beta * KL
    text_loss: torch.Tensor
    latent_loss: torch.Tensor
    kl: torch.Tensor
    metrics: dict[str, float]


def vlpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    text_mask: torch.Tensor,
    advantages: torch.Tensor,
    cfg: LossConfig,
    *,
    ref_logp: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mu_old: torch.Tensor | None = None,
    mu_new: torch.Tensor | None = None,
    latent_mask: torch.Tensor | None = None,
    denoms: dict[str, float] | None = None,
) -> LossOutput:
    """Eq. 9-11. logp, old_logp, ref_logp: (N, T) token log-probs (policy with grad, behaviour, reference);
    text_mask (N, T): sampled text positions (policy tokens; forced control tokens and latent slots excluded);
    advantages (N,) broadcast to every text and latent position of a trajectory;
    z, mu_old, mu_new: (N, K, D); latent_mask (N, K): latent slots that exist.

    Both surrogates use the registered policy loss `cfg.policy_loss` (given the part's mask, its name and the
    aggregation, `PolicyLossInputs`). The latent term is skipped when
    `lambda_lat == 0` or no latents are given (GRPO / MedLVR+GRPO); the KL term when `beta == 0` or ref_logp is None. With both off the loss is exactly token-level GRPO (PPO-clip).
    denoms: optional {"text": ..., "latent": ...} global divisors (see `masked_aggregate`); KL uses "text".
    Metrics hold fractions for this batch and the raw counts (`*_count`, `*_sum`) for summing micro-batches.
    """
    denoms = denoms or {}
    policy_loss = lookup(POLICY_LOSSES, "policy loss", cfg.policy_loss)
    if cfg.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {cfg.aggregation!r}")
    adv = advantages.float()[:, None]
    text_lr = logp - old_logp
    text_loss, text_clip = policy_loss(PolicyLossInputs(text_lr, adv, text_mask, "text", cfg.aggregation,
                                                        denoms.get("text"), cfg))
    loss = text_loss
    n_text = text_mask.sum().clamp(min=1)
    metrics = {
        "clip_frac_text": float((text_clip & text_mask).sum() / n_text),
        "text_abs_log_ratio": float((text_lr.detach().abs() * text_mask).sum() / n_text),
        "text_count": float(text_mask.sum()),
        "clip_text_count": float((text_clip & text_mask).sum()),
    }

    latent_loss = logp.new_zeros(())
    use_lat = cfg.lambda_lat != 0 and z is not None and latent_mask is not None and bool(latent_mask.any())
    if z is not None and latent_mask is not None and bool(latent_mask.any()):
        sigma = cfg.latent_sigma
        if cfg.latent_sigma_relative:
            sigma = cfg.latent_sigma * mu_old.float().norm(dim=-1).clamp(min=1e-6)
        lat_lr = latent_log_ratio(z, mu_old, mu_new, sigma)
        n_lat = latent_mask.sum().clamp(min=1)
        abs_sum = float((lat_lr.detach().abs() * latent_mask).sum())
        metrics.update(latent_abs_log_ratio=abs_sum / float(n_lat), latent_abs_log_ratio_sum=abs_sum,
                       latent_count=float(latent_mask.sum()))
        if use_lat:
            latent_loss, lat_clip = policy_loss(PolicyLossInputs(lat_lr, adv, latent_mask, "latent", cfg.aggregation,
                                                                 denoms.get("latent"), cfg))
            loss = loss + cfg.lambda_lat * latent_loss
            metrics["clip_frac_latent"] = float((lat_clip & latent_mask).sum() / n_lat)
            metrics["clip_latent_count"] = float((lat_clip & latent_mask).sum())

    kl = logp.new_zeros(())
    if ref_logp is not None:
        kl = masked_aggregate(k3_kl(logp, ref_logp), text_mask, cfg.aggregation, denoms.get("text"))
        if cfg.beta != 0:
            loss = loss + cfg.beta * kl
    metrics.update(loss=float(loss.detach()), text_loss=float(text_loss.detach()),
                   latent_loss=float(latent_loss.detach()), kl=float(kl.detach()))
    return LossOutput(loss=loss, text_loss=text_loss, latent_loss=latent_loss, kl=kl, metrics=metrics)
