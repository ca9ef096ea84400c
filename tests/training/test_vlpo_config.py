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


def test_synthetic_images_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    """Every rank of a multi-rank VLPO run writes the synthetic set into the same folder: a rank that finds a
    peer's file must never read it half-written (old code: saved straight to the final name)."""
    from PIL import Image

    real, targets = Image.Image.save, []

    def spy(self, fp, *args, **kwargs):
        targets.append(Path(fp))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", spy)
    synthetic_samples(3, tmp_path)
    finals = {tmp_path / f"syn_0_{i:04d}.png" for i in range(3)}
    assert len(targets) == 3 and not finals & set(targets)
    assert all(Image.open(p).size == (56, 56) for p in finals) and not list(tmp_path.glob(".*"))


def test_synthetic_images_do_not_depend_on_which_files_a_peer_already_wrote(tmp_path):
    """Two ranks write the set at once, so one may find some images already there. Old code drew an image's
    pixels only when it wrote the file: the images after a found one got other pixels than the peer's."""
    import numpy as np
    from PIL import Image

    synthetic_samples(3, tmp_path / "fresh")
    (tmp_path / "peer").mkdir()
    synthetic_samples(1, tmp_path / "peer")  # a peer rank wrote image 0 first
    synthetic_samples(3, tmp_path / "peer")
    for i in range(3):
        name = f"syn_0_{i:04d}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "fresh" / name)),
                              np.asarray(Image.open(tmp_path / "peer" / name))), name
