"""VLPO step metrics from sums that ranks add before dividing (issue 28): two halves of a batch, added, give the
metrics of the whole batch; truths from numpy."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medlvr.training.vlpo.core import rollout_metric_sums, rollout_metrics


def _exp(rows: slice, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N, T, K, D = 8, 5, 2, 3
    sampled = torch.rand(N, T, generator=g) > 0.3
    out = SimpleNamespace(closed=False, sampled_mask=sampled[rows], logprobs=-torch.rand(N, T, generator=g)[rows],
                          gen_mask=(torch.rand(N, T, generator=g) > 0.2)[rows],
                          noise=torch.randn(N, K, D, generator=g)[rows])
    rewards = {k: torch.randint(0, 2, (N,), generator=g).float()[rows] for k in ("accuracy", "format", "parsed")}
    rewards["reward"] = rewards["accuracy"] + 0.5 * rewards["format"]
    latent_mask = (torch.rand(N, K, generator=g) > 0.4)[rows]
    zero_std = torch.tensor([True, False])[rows.start // 4:rows.stop // 4]  # groups of G = 4 rows
    return SimpleNamespace(out=out, rewards=rewards, latent_mask=latent_mask, zero_std=zero_std)


def test_two_halves_added_give_the_whole_batch_metrics():
    whole = _exp(slice(0, 8))
    halves = [rollout_metric_sums(_exp(slice(0, 4))), rollout_metric_sums(_exp(slice(4, 8)))]
    added = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    got = rollout_metrics(sums=added)
    assert got == pytest.approx(rollout_metrics(whole), abs=1e-12)
    r = whole.rewards["reward"].numpy().astype(np.float64)
    s = whole.out.sampled_mask.numpy()
    noise = np.linalg.norm(whole.out.noise.numpy(), axis=-1)[whole.latent_mask.numpy()]
    assert got["reward_mean"] == pytest.approx(r.mean()) and got["reward_std"] == pytest.approx(r.std(ddof=1))
    assert got["entropy"] == pytest.approx(-(whole.out.logprobs.numpy() * s).sum() / s.sum())
    assert got["response_length"] == pytest.approx(whole.out.gen_mask.numpy().sum(-1).mean())
    assert got["answer_tokens"] == pytest.approx(s.sum(-1).mean())
    assert got["latent_noise_norm"] == pytest.approx(noise.mean(), rel=1e-6)
    assert got["zero_std_groups"] == 0.5 and got["closed"] == 0.0
    assert rollout_metrics(_exp(slice(0, 4)))["reward_mean"] == pytest.approx(r[:4].mean())  # rank 0's share
