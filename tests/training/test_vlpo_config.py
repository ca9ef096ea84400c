"""VLPO config loading, variants, the shipped YAMLs, prompt building and the sampler state."""

from pathlib import Path

import pytest

from medlvr.corpus.config import apply_overrides, build_config, load_config
from medlvr.training.vlpo.config import VLPORunConfig
from medlvr.training.vlpo.data import PromptSampler, prompt_text, synthetic_samples

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    tiny = load_config(VLPORunConfig, REPO / "configs" / "vlpo_tiny.yaml")
    assert tiny.model.path == "tiny" and tiny.algo.variant == "vlpo"
    big = load_config(VLPORunConfig, REPO / "configs" / "vlpo_qwen25vl_7b.yaml", ["model.path=/x", "data.root=/y"])
    assert big.rollout.num_generations == 8 and big.rollout.temperature == 0.9 and big.engine.backend == "deepspeed"
    assert big.algo.beta == 0.04 and big.algo.clip_eps == 0.2 and big.engine.lr == 1e-6


def config_from_dict(data, overrides=()):
    return build_config(VLPORunConfig, apply_overrides(data, overrides))


def test_variants_and_validation():
    base = {"model": {"path": "tiny"}, "rollout": {"k_latent": 8}}
    g = config_from_dict(base, ["algo.variant=grpo"])
    assert g.k_latent == 0 and g.lambda_lat == 0.0
    m = config_from_dict(base, ["algo.variant=medlvr_grpo"])
    assert m.k_latent == 8 and m.lambda_lat == 0.0
    v = config_from_dict(base, ["algo.lambda_lat=0.5"])
    assert v.k_latent == 8 and v.lambda_lat == 0.5
    for bad in (["algo.variant=ppo"], ["model.foo=1"], ["rollout.num_generations=1"], ["engine.grad_accum=2"],
                ["engine.freeze_merger=false"]):
        with pytest.raises(ValueError):
            config_from_dict(base, bad)
    with pytest.raises(ValueError, match="model.path"):
        config_from_dict({})
    # engine defaults of stage 2 survive a partial engine section
    assert config_from_dict({**base, "engine": {"max_grad_norm": 0.5}}).engine.lr == 1e-6


def test_prompt_text_and_synthetic(tmp_path):
    s = synthetic_samples(4, tmp_path, templates=[1])
    assert {x.answer for x in s} == {"B"} and len({x.images[0] for x in s}) == 4
    assert prompt_text(s[0], "Pick one.") == "Is there a pleural effusion?\nA. yes\nB. no\nPick one."


def test_sampler_epochs_and_state():
    a = PromptSampler(5, 3, seed=1)
    seen = a.next_indices() + a.next_indices()
    assert sorted(seen[:5]) == list(range(5))  # first epoch covers everything once
    st = a.state_dict()
    b = PromptSampler(5, 3, seed=1)
    b.load_state_dict(st)
    assert a.next_indices() == b.next_indices()
