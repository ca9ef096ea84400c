"""VLPO algorithm core on hand-computed values (docs/method.md §4.3-§4.6)."""

import math

import pytest
import torch

from medlvr.training.vlpo.algos import (LossConfig, clipped_surrogate, group_advantages, k3_kl, latent_log_ratio,
                                 masked_aggregate, vlpo_loss)


def test_group_advantages_hand_computed():
    adv, zero = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4, eps=0.0)
    # group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    assert adv[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert adv[4:].tolist() == [0.0] * 4  # zero-std group: no signal
    assert zero.tolist() == [False, True]
    adv2, _ = group_advantages(torch.tensor([2.0, 0.0]), 2, scale=False)  # Dr.GRPO
    assert adv2.tolist() == [1.0, -1.0]
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 4)


def test_k3_kl_hand_computed():
    logp, ref = torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0])
    kl = k3_kl(logp, ref)
    assert kl[0].item() == pytest.approx(0.5 + math.log(2) - 1)  # exp(d) - d - 1 with d = log(0.5)
    assert kl[1].item() == 0.0
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_clipped_surrogate_all_four_regions():
    lr = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]])
    loss, clipped = clipped_surrogate(lr, adv, 0.2)
    assert loss[0].tolist() == pytest.approx([-1.2, 1.5, 0.8, -0.5, -1.1])
    assert clipped[0].tolist() == [True, False, True, False, False]
    loss_hi, _ = clipped_surrogate(lr, adv, 0.2, clip_eps_high=0.28)  # clip-higher
    assert loss_hi[0, 0].item() == pytest.approx(-1.28)


def test_masked_aggregate_modes_and_global_denominator():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    assert masked_aggregate(v, m).item() == pytest.approx(10 / 4)
    assert masked_aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    # micro-batches with the global divisor sum to the full-batch value
    parts = sum(masked_aggregate(v[i:i + 1], m[i:i + 1], denom=4.0) for i in range(2))
    assert parts.item() == pytest.approx(10 / 4)


def _grpo_by_hand(logp, old, mask, adv, eps=0.2, beta=0.0, ref=None):
    """Token-mean PPO-clip (+ k3) written with Python floats."""
    num, n = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            term = -min(rho * adv[i], min(max(rho, 1 - eps), 1 + eps) * adv[i])
            if ref is not None:
                d = ref[i][t] - logp[i][t]
                term += beta * (math.exp(d) - d - 1)
            num, n = num + term, n + 1
    return num / n


def test_latent_terms_off_equals_grpo_by_hand():
    logp = [[-0.5, -1.0, -2.0], [-0.3, -0.1, -4.0]]
    old = [[-0.7, -1.0, -1.5], [-0.2, -0.6, -1.0]]
    ref = [[-0.6, -1.2, -2.0], [-0.4, -0.3, -3.0]]
    mask = [[True, True, False], [True, True, True]]
    rewards = torch.tensor([2.0, 0.0])  # G = 2: mean 1, unbiased std sqrt(2)
    adv, _ = group_advantages(rewards, 2, eps=0.0)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])
    z = torch.randn(2, 3, 4)
    kw = dict(z=z, mu_old=z + 0.3, mu_new=z + torch.tensor([-0.2, 0.5])[:, None, None], latent_mask=torch.ones(2, 3, dtype=torch.bool))
    T = lambda x: torch.tensor(x)  # noqa: E731
    out = vlpo_loss(T(logp), T(old), T(mask), adv, LossConfig(beta=0.0, lambda_lat=0.0), **kw)
    assert out.loss.item() == pytest.approx(_grpo_by_hand(logp, old, mask, adv.tolist()), abs=1e-6)
    out = vlpo_loss(T(logp), T(old), T(mask), adv, LossConfig(beta=0.04, lambda_lat=0.0), ref_logp=T(ref), **kw)
    assert out.loss.item() == pytest.approx(_grpo_by_hand(logp, old, mask, adv.tolist(), beta=0.04, ref=ref), abs=1e-6)
    # the latent term is really there when switched on (so the equality above can fail)
    on = vlpo_loss(T(logp), T(old), T(mask), adv, LossConfig(beta=0.0, lambda_lat=1.0), **kw)
    assert abs(on.loss.item() - _grpo_by_hand(logp, old, mask, adv.tolist())) > 1e-3


def test_latent_log_ratio_hand_computed():
    z = torch.tensor([[[1.0, 0.0]]])
    mu_old, mu_new = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])
    # (||z - mu_old||^2 - ||z - mu_new||^2) / (2 sigma^2) = (1 - 1) / 2 = 0 ; with mu_new = z: 1 / (2 * 0.25)
    assert latent_log_ratio(z, mu_old, mu_new, 1.0).item() == 0.0
    assert latent_log_ratio(z, mu_old, z, 0.5).item() == pytest.approx(2.0)
    # the paper's form when z = mu_old: -||z - mu_new||^2 / (2 sigma^2)
    assert latent_log_ratio(z, z, mu_new, 1.0).item() == pytest.approx(-0.5)


@pytest.mark.parametrize("noise_scale", [0.0, 0.1])
def test_latent_policy_gradient_zero_without_noise(noise_scale):
    g = torch.Generator().manual_seed(0)
    mu_old = torch.randn(4, 3, 8, generator=g)
    noise = noise_scale * torch.randn(4, 3, 8, generator=g)
    z = mu_old + noise
    mu_new = mu_old.clone().requires_grad_(True)  # theta == theta_old
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    sigma = 0.5
    out = vlpo_loss(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2, dtype=torch.bool), adv,
                    LossConfig(beta=0.0, lambda_lat=1.0, latent_sigma=sigma), z=z, mu_old=mu_old, mu_new=mu_new,
                    latent_mask=torch.ones(4, 3, dtype=torch.bool))
    out.loss.backward()
    if noise_scale == 0:
        assert torch.count_nonzero(mu_new.grad) == 0  # exactly zero: the paper's latent term never learns
    else:
        # d/dmu_new of -mean_k rho_k A = -A (z - mu_old) / sigma^2 / (N K) at rho = 1
        expect = -adv[:, None, None] * noise / sigma**2 / 12
        torch.testing.assert_close(mu_new.grad, expect)
        assert mu_new.grad.abs().max() > 0


def test_relative_sigma_scales_with_mu_norm():
    mu_old = torch.tensor([[[3.0, 4.0]]])  # ||mu|| = 5
    z = mu_old + torch.tensor([[[0.5, 0.0]]])
    cfg = LossConfig(beta=0.0, lambda_lat=1.0, latent_sigma=0.1, latent_sigma_relative=True)
    out = vlpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.ones(1), cfg,
                    z=z, mu_old=mu_old, mu_new=z, latent_mask=torch.ones(1, 1, dtype=torch.bool))
    # log rho = 0.25 / (2 * 0.5^2) = 0.5
    assert out.metrics["latent_abs_log_ratio"] == pytest.approx(0.5)
