"""The policy-loss registry is open to losses that are not per-token PPO-clip: GSPO (a sequence-level ratio) and
Dr.GRPO (mean-centred advantages, token sums over a constant budget) are registered HERE, in the tests, and give the
losses of their papers, computed by hand; the default loss is the formula it was before the registry got masks."""

import math

import pytest
import torch

from medlvr.training.vlpo import algos
from medlvr.training.vlpo.algos import ADV_ESTIMATORS, POLICY_LOSSES, LossConfig, vlpo_loss

# one group of G = 2 trajectories, T = 3 positions; trajectory 0 has 2 sampled tokens (its third is padding with a
# value that must not count), trajectory 1 has 3
LOG_RATIO = [[0.1, 0.3, 9.0], [-0.2, 0.0, -0.1]]
MASK = torch.tensor([[True, True, False], [True, True, True]])


def _args(advantages):
    logp = torch.tensor(LOG_RATIO, requires_grad=True)
    return logp, (logp, torch.zeros(2, 3), MASK, torch.tensor(advantages))


@pytest.fixture
def scratch_losses(monkeypatch):
    monkeypatch.setattr(algos, "POLICY_LOSSES", dict(POLICY_LOSSES))


def register_gspo():
    """GSPO (Zheng et al., 2025): the sequence ratio s_i = (pi_theta(y_i) / pi_old(y_i))^(1/|y_i|) = exp(mean_t of the
    token log-ratios over the trajectory's own tokens), clipped as PPO does, one term per trajectory."""
    @algos.register_policy_loss("gspo")
    def gspo(x):
        m = x.mask.float()
        s = torch.exp((x.log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1))[:, None]  # (N, 1)
        eps = x.cfg.clip_eps
        term = -torch.minimum(s * x.advantages, torch.clamp(s, 1 - eps, 1 + eps) * x.advantages)
        clipped = ((s > 1 + eps) & (x.advantages > 0)) | ((s < 1 - eps) & (x.advantages < 0))
        # the same value at every position of a trajectory: a per-trajectory mean of it is the trajectory's term
        return x.aggregate(term.expand_as(x.log_ratio)), clipped.expand_as(x.mask) & x.mask


def test_gspo_registered_in_a_test_gives_the_sequence_level_loss(scratch_losses):
    register_gspo()
    logp, args = _args([1.0, -1.0])
    out = vlpo_loss(*args, LossConfig(beta=0.0, clip_eps=0.2, policy_loss="gspo", aggregation="seq_mean_token_mean"))
    s0, s1 = math.exp((0.1 + 0.3) / 2), math.exp((-0.2 + 0.0 - 0.1) / 3)  # 1.2214 (> 1.2: clipped), 0.9048
    assert s0 > 1.2 and 0.8 < s1 < 1.2
    hand = -(min(s0 * 1, 1.2 * 1) + min(s1 * -1, s1 * -1)) / 2
    assert out.loss.item() == pytest.approx(hand, abs=1e-6)
    assert out.metrics["clip_frac_text"] == pytest.approx(2 / 5)  # trajectory 0's two tokens
    out.loss.backward()
    # the clipped trajectory gets no gradient; trajectory 1's flows equally into its 3 tokens: -(1/2) * A * s1 / 3
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, 0.0], [s1 / 6] * 3]), atol=1e-6)
    # per-token PPO-clip on the same numbers (the default) is another loss
    default = vlpo_loss(*_args([1.0, -1.0])[1], LossConfig(beta=0.0, clip_eps=0.2))
    per_token = [math.exp(0.1), 1.2, -math.exp(-0.2), -1.0, -math.exp(-0.1)]
    assert default.loss.item() == pytest.approx(-sum(per_token) / 5, abs=1e-6)
    assert abs(default.loss.item() - out.loss.item()) > 0.05


def test_dr_grpo_registered_in_a_test_drops_both_normalisations(scratch_losses):
    """Dr.GRPO (Liu et al., 2025): advantages r - mean_G r without the std, and the token sum of each trajectory
    divided by a constant generation budget instead of its own length."""
    budget = 3  # the generation budget (max new tokens) of the run

    @algos.register_policy_loss("dr_grpo")
    def dr_grpo(x):
        loss, clipped = algos.clipped_surrogate(x.log_ratio, x.advantages, x.cfg.clip_eps)
        return x.aggregate(loss) / budget, clipped

    rewards = torch.tensor([1.0, 0.0])
    adv, _ = ADV_ESTIMATORS["dr_grpo"](rewards, 2, eps=1e-6)
    assert adv.tolist() == [0.5, -0.5]  # no division by the std (GRPO's would be +-0.7071)
    out = vlpo_loss(*_args(adv.tolist())[1], LossConfig(beta=0.0, clip_eps=0.2, policy_loss="dr_grpo",
                                                        aggregation="seq_mean_token_sum"))
    seq0 = min(math.exp(0.1), 1.2) * 0.5 + min(math.exp(0.3), 1.2) * 0.5  # 1.2 caps rho = 1.35
    seq1 = -0.5 * (math.exp(-0.2) + 1.0 + math.exp(-0.1))
    assert out.loss.item() == pytest.approx(-(seq0 / budget + seq1 / budget) / 2, abs=1e-6)


def test_seq_mean_token_sum_by_hand():
    v = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0], [7.0, 7.0, 7.0]])
    m = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert algos.masked_aggregate(v, m, "seq_mean_token_sum").item() == pytest.approx((3 + 12) / 2)
    assert algos.masked_aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx((1.5 + 4) / 2)
    assert algos.masked_aggregate(v, m, "seq_mean_token_sum", denom=5.0).item() == pytest.approx(15 / 5)


def old_formula(logp, old_logp, text_mask, adv, ref_logp, z, mu_old, mu_new, latent_mask, cfg):
    """The loss as it was computed before registered losses got masks (written out here independently):
    PPO-clip per position, masked mean by `cfg.aggregation`, + lambda_lat * the latent surrogate's, + beta * k3 KL."""
    def clip_loss(lr):
        rho = torch.exp(lr)
        a = adv[:, None].expand_as(rho)
        return -torch.minimum(rho * a, torch.clamp(rho, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * a)

    def agg(v, m):
        m = m.float()
        if cfg.aggregation == "token_mean":
            return (v * m).sum() / m.sum()
        return ((v * m).sum(-1) / m.sum(-1)).mean()  # every trajectory here has positions

    sigma = cfg.latent_sigma * mu_old.norm(dim=-1)
    lat_lr = ((z - mu_old).pow(2).sum(-1) - (z - mu_new).pow(2).sum(-1)) / (2 * sigma ** 2)
    d = ref_logp - logp
    return (agg(clip_loss(logp - old_logp), text_mask) + cfg.lambda_lat * agg(clip_loss(lat_lr), latent_mask)
            + cfg.beta * agg(torch.exp(d) - d - 1, text_mask))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_the_default_loss_is_the_old_formula(aggregation):
    g = torch.Generator().manual_seed(0)
    N, T, K, D = 4, 6, 3, 5
    logp = (-torch.rand(N, T, generator=g) * 2).requires_grad_()
    old, ref = logp.detach() + 0.3 * torch.randn(N, T, generator=g), logp.detach() + 0.2 * torch.randn(N, T, generator=g)
    text_mask = torch.rand(N, T, generator=g) > 0.3
    text_mask[:, 0] = True
    latent_mask = torch.tensor([[True] * K, [True] * K, [True, True, False], [True, False, False]])
    mu_old = torch.randn(N, K, D, generator=g)
    z = mu_old + 0.1 * torch.randn(N, K, D, generator=g)
    mu_new = (mu_old + 0.05 * torch.randn(N, K, D, generator=g)).requires_grad_()
    adv = torch.randn(N, generator=g)
    cfg = LossConfig(beta=0.04, lambda_lat=1.0, latent_sigma=0.1, latent_sigma_relative=True, aggregation=aggregation)
    out = vlpo_loss(logp, old, text_mask, adv, cfg, ref_logp=ref, z=z, mu_old=mu_old, mu_new=mu_new,
                    latent_mask=latent_mask)
    want = old_formula(logp, old, text_mask, adv, ref, z, mu_old, mu_new, latent_mask, cfg)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-6)
    got_grads = torch.autograd.grad(out.loss, (logp, mu_new))
    want_grads = torch.autograd.grad(want, (logp, mu_new))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(got_grads, want_grads))
