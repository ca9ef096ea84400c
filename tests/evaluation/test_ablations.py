"""Latent ablation transforms and the accuracy-drop table."""

import pytest
import torch

from medlvr.evaluation.ablations import (
    NoiseLatents, ShuffleLatents, ablation_table, make_transform_factory, zero_latents,
)


def _z(n, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_zero():
    z = _z(3)
    assert torch.count_nonzero(zero_latents(z, torch.arange(3), torch.zeros(3, dtype=torch.long))) == 0


def test_shuffle_feeds_each_row_another_samples_latent():
    t = ShuffleLatents()
    z = _z(4)
    out = t(z, torch.arange(4), torch.zeros(4, dtype=torch.long))
    assert torch.equal(out, z[[3, 0, 1, 2]])
    # batch of one: the latent of an earlier batch at the same slot
    z1 = _z(1, seed=1)
    out1 = t(z1, torch.tensor([0]), torch.tensor([0]))
    assert torch.equal(out1[0], z[3])
    # nothing seen yet for slot 5: fed unchanged and counted
    assert torch.equal(t(z1, torch.tensor([0]), torch.tensor([5])), z1) and t.n_self == 1


def test_noise_is_relative_and_seeded():
    z = _z(5)
    a = NoiseLatents(alpha=0.5, seed=3)(z, None, None)
    b = NoiseLatents(alpha=0.5, seed=3)(z, None, None)
    assert torch.equal(a, b)
    assert torch.allclose((a - z).norm(dim=-1), 0.5 * z.norm(dim=-1), rtol=1e-5)


def test_factory_rejects_unknown():
    with pytest.raises(ValueError):
        make_transform_factory("flip")
    assert make_transform_factory("zero")([]) is zero_latents


def test_ablation_table_hand_computed():
    base = [{"benchmark": "a", "correct": c} for c in (1, 1, 1, 0)] + [{"benchmark": "b", "correct": 1}]
    zero = [{"benchmark": "a", "correct": c} for c in (1, 0, 0, 0)] + [{"benchmark": "b", "correct": 0}]
    table = ablation_table(base, {"zero": zero})
    assert [r["benchmark"] for r in table] == ["a", "b", "all"]
    a, b, tot = table
    assert (a["n"], a["unablated"], a["zero"], a["zero_drop"]) == (4, 75.0, 25.0, 50.0)
    assert (b["unablated"], b["zero_drop"]) == (100.0, 100.0)
    assert (tot["unablated"], tot["zero"], tot["zero_drop"]) == (80.0, 20.0, 60.0)
