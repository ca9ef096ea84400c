"""The RL registries (advantage estimators, policy losses, rewards, variants, sample sources): each registered
function on values computed by hand, and the tables the run config reads."""

import json

import pytest
import torch

from medlvr.training.model import LatentTokenIds
from medlvr.training.vlpo import algos, data, rewards
from medlvr.training.vlpo.algos import ADV_ESTIMATORS, POLICY_LOSSES, RL_VARIANTS, LossConfig, vlpo_loss
from medlvr.corpus.config import build_config
from medlvr.training.vlpo.config import VARIANTS, VLPORunConfig


def test_grpo_estimator_by_hand():
    # group 1: rewards 2, 0 -> mean 1, unbiased std sqrt(2) -> +-1/sqrt(2); group 2: 1, 1 -> zero std -> 0
    adv, zero = ADV_ESTIMATORS["grpo"](torch.tensor([2.0, 0.0, 1.0, 1.0]), 2, eps=0.0)
    assert torch.allclose(adv, torch.tensor([2 ** -0.5, -(2 ** -0.5), 0.0, 0.0]))
    assert zero.tolist() == [False, True]


def test_dr_grpo_estimator_by_hand():
    adv, zero = ADV_ESTIMATORS["dr_grpo"](torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 5.0]), 3, eps=0.0)
    assert adv.tolist() == [1.0, -1.0, 0.0, -1.0, -1.0, 2.0] and zero.tolist() == [False, False]


def test_the_config_selects_the_estimator_by_name():
    """`algo.adv_estimator` names a registered estimator; the old boolean `scale_rewards` says what replaced it."""
    from medlvr.corpus.config import ConfigError

    assert config_from_dict({"model": {"path": "tiny"}}).algo.adv_estimator == "grpo"
    assert config_from_dict({"model": {"path": "tiny"}, "algo": {"adv_estimator": "dr_grpo"}}).algo.adv_estimator \
        == "dr_grpo"
    with pytest.raises(ConfigError, match="algo.adv_estimator must be a registered advantage estimator"):
        config_from_dict({"model": {"path": "tiny"}, "algo": {"adv_estimator": "rloo"}})
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"path": "tiny"}, "algo": {"scale_rewards": False}})
    assert str(e.value) == ("config key algo.scale_rewards is renamed to algo.adv_estimator (scale_rewards: true is "
                            "adv_estimator: grpo, false is dr_grpo)")


def test_ppo_clip_policy_loss_by_hand():
    # rho = e^{log_ratio}: 1.5 with A = 1 -> clipped at 1.2 -> -1.2 (clip active); 0.5 with A = 1 -> -0.5; the third
    # position is masked out: token mean (-1.2 - 0.5) / 2
    lr = torch.log(torch.tensor([[1.5, 0.5, 9.0]]))
    x = algos.PolicyLossInputs(lr, torch.ones(1, 1), torch.tensor([[True, True, False]]), "text", "token_mean", None,
                               LossConfig(clip_eps=0.2))
    loss, clipped = POLICY_LOSSES["ppo_clip"](x)
    assert loss.item() == pytest.approx(-0.85) and clipped.tolist() == [[True, False, True]]


def test_vlpo_loss_uses_the_configured_policy_loss(monkeypatch):
    monkeypatch.setattr(algos, "POLICY_LOSSES", dict(POLICY_LOSSES))

    @algos.register_policy_loss("unclipped")
    def unclipped(x):  # plain importance-weighted policy gradient: -rho * A
        rho = torch.exp(x.log_ratio)
        return x.aggregate(-rho * x.advantages.expand_as(rho)), torch.zeros_like(rho, dtype=torch.bool)

    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    args = (logp, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), torch.ones(1))
    assert vlpo_loss(*args, LossConfig(beta=0.0, policy_loss="unclipped")).loss.item() == pytest.approx(-1.0)
    assert vlpo_loss(*args, LossConfig(beta=0.0)).loss.item() == pytest.approx(-0.85)  # (-1.2 - 0.5) / 2
    with pytest.raises(ValueError, match="unknown policy loss 'nope'"):
        vlpo_loss(*args, LossConfig(policy_loss="nope"))
    with pytest.raises(ValueError, match="registered twice"):
        algos.register_policy_loss("ppo_clip")(unclipped)


def test_variant_table_drives_the_config():
    assert VARIANTS == ("grpo", "medlvr_grpo", "vlpo")
    assert [(v.latent, v.latent_loss) for v in RL_VARIANTS.values()] == [(False, False), (True, False), (True, True)]
    with pytest.raises(ValueError, match="needs a latent segment"):
        algos.register_rl_variant("broken", latent=False, latent_loss=True)


class CharTokenizer:
    """decode(ids) = the characters chr(id) (ids >= 100 stand for special tokens and are skipped)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i < 100)


IDS = LatentTokenIds(start=101, latent=102, end=103)


def _batch():
    A, B = ord("A"), ord("B")
    seqs = torch.tensor([[101, 102, 103, B], [101, 102, 103, A], [A, B, B, B]])
    return seqs, torch.ones_like(seqs, dtype=torch.bool), [(("A", "x"), ("B", "y"))] * 3, ["B", "B", "A"]


def test_registered_rewards_by_hand():
    seqs, mask, opts, gold = _batch()
    r = rewards.compute_rewards(seqs, mask, IDS, CharTokenizer(), opts, gold, format_weight=0.5)
    assert r["accuracy"].tolist() == [1.0, 0.0, 0.0]  # row 3 answers "ABBB": no unique letter -> unparsed
    assert r["format"].tolist() == [1.0, 1.0, 0.0]
    assert r["reward"].tolist() == [1.5, 0.5, 0.0] and r["parsed"].tolist() == [1.0, 1.0, 0.0]


def test_a_registered_reward_joins_the_sum(monkeypatch):
    monkeypatch.setattr(rewards, "REWARDS", dict(rewards.REWARDS))

    @rewards.register_reward("brevity")
    def brevity(x):  # 1 for answers of one character
        return torch.tensor([float(len(a) == 1) for a in x.answers])

    seqs, mask, opts, gold = _batch()
    r = rewards.compute_rewards(seqs, mask, IDS, CharTokenizer(), opts, gold,
                                weights={"accuracy": 1.0, "brevity": 0.25})
    assert r["brevity"].tolist() == [1.0, 1.0, 0.0] and r["reward"].tolist() == [1.25, 0.25, 0.0]
    assert "format" not in r
    with pytest.raises(ValueError, match="registered rewards"):
        rewards.compute_rewards(seqs, mask, IDS, CharTokenizer(), opts, gold, weights={"length": 1.0})


def test_sample_sources_cover_benchmarks_and_the_synthetic_tasks(tmp_path):
    from medlvr.corpus.evalsets.registry import all_benchmarks, write_benchmark_samples
    from medlvr.corpus.sample_data.synthetic_grounding import write_grounding_task

    assert set(data.sample_sources()) == set(all_benchmarks()) | {"synthetic", "synthetic_grounding"}
    write_benchmark_samples(tmp_path, ["omnimedvqa", "pmc_vqa", "slake"])
    tiny = {"path": "tiny"}
    omni = config_from_dict({"model": tiny, "data": {"source": "omnimedvqa", "root": str(tmp_path / "omnimedvqa"),
                                                     "split": "all", "limit": 5}}).data
    assert [s.benchmark for s in data.load_samples(omni, tmp_path)] == ["omnimedvqa"] * 5
    pmc = config_from_dict({"model": {"path": "tiny"}, "data": {"source": "pmc_vqa", "root": str(tmp_path / "pmc_vqa")}})
    assert {s.kind for s in data.load_samples(pmc.data, tmp_path)} == {"mc"}  # pmc_vqa's loader takes no split
    slake = config_from_dict({"model": {"path": "tiny"}, "data": {"source": "slake", "root": str(tmp_path / "slake"),
                                                              "split": "test"}})
    with pytest.raises(ValueError, match="only multiple choice trains"):
        data.load_samples(slake.data, tmp_path)
    write_grounding_task(tmp_path / "sg", n_train=4, n_test=2, seed=0)
    sg = config_from_dict({"model": tiny, "data": {"source": "synthetic_grounding", "root": str(tmp_path / "sg")}})
    samples = data.load_samples(sg.data, tmp_path)
    written = [json.loads(x) for x in (tmp_path / "sg" / "prompts_train.jsonl").read_text().splitlines()]
    assert [s.sample_id for s in samples] == [r["id"] for r in written]
    assert all(s.benchmark == "synthetic_grounding" and s.answer == r["answer"] for s, r in zip(samples, written))
    with pytest.raises(ValueError, match="registered sample source"):
        config_from_dict({"model": {"path": "tiny"}, "data": {"source": "imagenet"}})


def config_from_dict(data: dict) -> VLPORunConfig:
    return build_config(VLPORunConfig, {"rollout": {"k_latent": 4}, **data})


def test_algo_section_is_the_loss_config_plus_the_variant():
    """`algo:` inherits every LossConfig field (one definition), so a registered policy loss is chosen in the
    config; the variant decides lambda_lat; an unregistered loss is a config error."""
    import dataclasses

    from medlvr.corpus.config import ConfigError
    from medlvr.training.vlpo.algos import LossConfig
    from medlvr.training.vlpo.core import loss_config

    cfg = config_from_dict({"model": {"path": "tiny"}, "algo": {"variant": "medlvr_grpo", "policy_loss": "ppo_clip",
                                                               "clip_eps": 0.3, "lambda_lat": 0.7}})
    lc = loss_config(cfg)
    assert lc == LossConfig(clip_eps=0.3, lambda_lat=0.0, latent_sigma=0.1, latent_sigma_relative=True)
    assert {f.name for f in dataclasses.fields(LossConfig)} < {f.name for f in dataclasses.fields(cfg.algo)}
    assert loss_config(config_from_dict({"model": {"path": "tiny"}, "algo": {"lambda_lat": 0.7}})).lambda_lat == 0.7
    with pytest.raises(ConfigError, match="algo.policy_loss must be a registered policy loss"):
        config_from_dict({"model": {"path": "tiny"}, "algo": {"policy_loss": "reinforce"}})
