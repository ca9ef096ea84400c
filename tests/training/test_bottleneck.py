"""Visual bottleneck (training/bottleneck.py, issue 16): under the 4-D mask `<Medlvr_End>` and the answer cannot
attend to the visual tokens in ROI-SFT (every latent mode), VLPO replay and latent decoding, while the prompt,
`<Medlvr_Start>` and the latent slots still see the image."""

import copy
import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.corpus.config import build_config  # noqa: E402
from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training.bottleneck import BottleneckConfig, closed_attention_mask  # noqa: E402
from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.replay import replay, replay_rollout  # noqa: E402
from medlvr.training.sft.collate import collate  # noqa: E402
from medlvr.training.sft.data import ShardStream, shard_files  # noqa: E402
from medlvr.training.sft import forward as sft_forward_module  # noqa: E402
from medlvr.training.sft.forward import sft_forward  # noqa: E402
from medlvr.training.sft.recipe import train  # noqa: E402
from medlvr.training.tiny import TinyConfig, build_tiny  # noqa: E402
from medlvr.training.vlpo.config import VLPORunConfig  # noqa: E402
from medlvr.training.vlpo.trainer import train_vlpo  # noqa: E402
from tests.training.conftest import random_image  # noqa: E402
from tests.training.helpers import tiny_config  # noqa: E402

K = 3
BUDGET = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16)
MODES = [("self_fed", "bptt"), ("self_fed", "detach"), ("teacher_forced", "bptt")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.getbasetemp() / "bottleneck_corpus")


def _batch(corpus, bundle):
    rows = ShardStream(shard_files(corpus, "train"), seed=1).next_rows(3)
    proc = copy.deepcopy(bundle.processor)
    set_pixel_budget(proc, **BUDGET)
    return proc, collate(rows, proc, bundle.ids, K, **BUDGET)


def _with_pixels(batch, pixel_values):
    return dataclasses.replace(batch, prompts={**batch.prompts, "pixel_values": pixel_values})


def _answer_logprobs(out, batch):
    """Log-probs of the answer tokens (after <Medlvr_End>), the positions the answer side predicts."""
    cols = torch.arange(batch.sequences.shape[1]) >= K + 2
    return out.token_logprobs[:, cols][batch.gen_mask[:, cols]]


def test_schedule_constant_annealed_and_deterministic():
    assert not BottleneckConfig().enabled
    assert BottleneckConfig(p=1.0).closed(0, 5, 10) and not BottleneckConfig(p=0.0).closed(0, 5, 10)
    ann = BottleneckConfig(p=1.0, p_end=0.0)
    assert [ann.probability(s, 5) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    half = BottleneckConfig(p=0.5)
    draws = [half.closed(3, s, 400) for s in range(400)]
    assert draws == [half.closed(3, s, 400) for s in range(400)]  # a resumed run draws the same
    assert 150 < sum(draws) < 250
    with pytest.raises(ValueError, match="bottleneck.p"):
        BottleneckConfig(p=1.5)


def test_mask_rows():
    valid = torch.tensor([[0, 1, 1, 1, 1]])
    image = torch.tensor([[0, 1, 0, 0, 0]]).bool()
    m = closed_attention_mask(valid, image, torch.tensor([[False, True]]), "sdpa", torch.float32)[0, 0]
    assert m.tolist() == [[False, True, True, True, False], [False, False, True, True, True]]
    e = closed_attention_mask(valid, image, torch.tensor([[False, True]]), "eager", torch.float32)[0, 0]
    assert torch.equal(e == 0, m)
    with pytest.raises(ValueError, match="flash_attention_2"):
        closed_attention_mask(valid, image, torch.tensor([[True]]), "flash_attention_2", torch.float32)


def test_answer_logits_ignore_pixels_under_the_mask(corpus, monkeypatch):
    """A one-layer decoder with fixed latent inputs: the only route from the pixels to the answer is direct
    attention to the visual tokens. Closed, the answer log-probs do not move when the pixels change while the
    latent states h_k do; open, both move."""
    bundle = build_tiny(seed=1, cfg=TinyConfig(layers=1))
    proc, batch = _batch(corpus, bundle)
    fixed = torch.randn(len(batch.roi_boxes), K, bundle.model.config.text_config.hidden_size,
                        generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sft_forward_module, "batch_roi_targets", lambda *a, **k: fixed)  # teacher-forced inputs
    other = _with_pixels(batch, torch.randn_like(batch.prompts["pixel_values"]))
    for closed in (True, False):
        with torch.no_grad():
            a, b = (sft_forward(bundle.model, x, bundle.ids, proc.image_processor, mode="teacher_forced",
                                closed=closed) for x in (batch, other))
        assert not torch.allclose(a.h, b.h, atol=1e-4)  # the latent slots see the image either way
        same = torch.allclose(_answer_logprobs(a, batch), _answer_logprobs(b, batch), atol=1e-6)
        assert same == closed


@pytest.mark.parametrize("mode,grad", MODES)
def test_answer_never_attends_to_image(corpus, mode, grad):
    """Default (2-layer) tiny model, eager attention so the weights are visible: with the mask, the attention
    of End and answer queries on visual keys is exactly 0 in every layer while the latent slots keep theirs;
    without it the answer attends to the image."""
    bundle = build_tiny(seed=2, attn_implementation="eager")
    proc, batch = _batch(corpus, bundle)
    L = batch.prompts["input_ids"].shape[1]
    seen = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, i, o: seen.append(o[1]))
             for layer in bundle.model.model.language_model.layers]
    full_ids = torch.cat([batch.prompts["input_ids"], batch.sequences], dim=1)
    is_img = full_ids == bundle.model.config.image_token_id
    try:
        for closed in (True, False):
            seen.clear()
            with torch.no_grad():
                sft_forward(bundle.model, batch, bundle.ids, proc.image_processor, mode=mode, grad=grad,
                            closed=closed)
            answer_on_img, latent_on_img = 0.0, 0.0
            for w in seen:  # (N, H, q, S): the last q columns of the sequence
                q, S = w.shape[-2:]
                cols = torch.arange(S - q, S)
                img = is_img[:, :S][:, None, None, :].float()
                on_img = (w * img).sum(-1)  # (N, H, q)
                ans = cols >= L + K + 1
                lat = (cols >= L) & (cols <= L + K)
                answer_on_img += float(on_img[..., ans].sum()) if ans.any() else 0.0
                latent_on_img += float(on_img[..., lat].sum()) if lat.any() else 0.0
            assert latent_on_img > 0.01
            if closed:
                assert answer_on_img == 0.0
            else:
                assert answer_on_img > 0.01
    finally:
        for h in hooks:
            h.remove()


def test_closed_sft_matches_across_latent_grads(corpus):
    """bptt and detach are the same forward; the mask must not break that."""
    bundle = build_tiny(seed=0)
    proc, batch = _batch(corpus, bundle)
    with torch.no_grad():
        a = sft_forward(bundle.model, batch, bundle.ids, proc.image_processor, grad="bptt", closed=True)
        b = sft_forward(bundle.model, batch, bundle.ids, proc.image_processor, grad="detach", closed=True)
        o = sft_forward(bundle.model, batch, bundle.ids, proc.image_processor, grad="bptt", closed=False)
    torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.h, o.h)  # latents unchanged by the mask
    assert not torch.allclose(_answer_logprobs(a, batch), _answer_logprobs(o, batch), atol=1e-4)


def test_recipe_anneals_and_logs_closed(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "run", "run.max_steps=3", "run.micro_batch_size=2", "latent.k_latent=2",
                      "latent.bottleneck.p=1.0", "latent.bottleneck.p_end=0.0", "run.log_every=1")
    train(cfg)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    closed = [m["closed"] for m in logged if "closed" in m]
    expect = [float(cfg.latent.bottleneck.closed(cfg.engine.seed, s, 3)) for s in range(3)]
    assert closed == expect and closed[0] == 1.0 and closed[-1] == 0.0  # p = 1, 0.5, 0


def test_config_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="latent segment"):
        tiny_config(corpus, tmp_path, "latent.k_latent=0", "latent.bottleneck.p=1.0")
    with pytest.raises(ValueError, match="sdpa or eager"):
        tiny_config(corpus, tmp_path, "latent.bottleneck.p=0.5", "model.attn_implementation=flash_attention_2")


# --------------------------------------------------------------------------------------------- decoding / VLPO

SIZES = [(224, 224), (168, 308)]


@pytest.mark.parametrize("fuse", [True, False])
def test_replay_equals_rollout_under_the_mask(tiny, make_batch, fuse):
    """Sampled closed rollouts (G = 3 per prompt, rows of different lengths, fused or separate control steps)
    replay to the same log-probs with the mask; replayed open they do not."""
    batch = make_batch(SIZES)
    cfg = DecodeConfig(k_latent=3, max_new_tokens=10, num_samples=3, temperature=0.9, closed=True,
                       fuse_control=fuse, noise="relative", noise_scale=0.05)
    out = latent_generate(tiny.model, batch, tiny.ids, cfg, generator=torch.Generator().manual_seed(0))
    assert out.closed
    m = out.sampled_mask
    assert m.sum() > 0
    with torch.no_grad():
        rep = replay_rollout(tiny.model, batch, out, tiny.ids)
        opened = replay(tiny.model, batch, out.sequences, out.gen_mask, out.z, tiny.ids, out.logprob_temperature,
                        prompt_index=out.prompt_index)
    torch.testing.assert_close(rep.token_logprobs[m], out.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(rep.mu, out.mu, atol=1e-5, rtol=1e-4)  # latents see the image either way
    assert (opened.token_logprobs[m] - out.logprobs[m]).abs().max() > 1e-3


def test_closed_decoding_answer_ignores_pixels():
    """One-layer decoder, latent inputs replaced by a constant (latent_transform): closed, the answer's
    log-probs are the same for two different images while the latent states differ; open, they differ."""
    bundle = build_tiny(seed=1, cfg=TinyConfig(layers=1))
    proc = bundle.processor
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                     "text": "Describe the scan."}]}], tokenize=False, add_generation_prompt=True)
    imgs = [random_image(112, 112, seed=s) for s in (0, 1)]
    batches = [proc(text=[text], images=[im], padding=True, return_tensors="pt") for im in imgs]
    const = torch.randn(bundle.model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    for closed in (True, False):
        cfg = DecodeConfig(k_latent=2, max_new_tokens=8, eos_token_ids=(), closed=closed)
        a, b = (latent_generate(bundle.model, x, bundle.ids, cfg,
                                latent_transform=lambda z, rows, slots: const.expand_as(z)) for x in batches)
        assert not torch.allclose(a.mu, b.mu, atol=1e-4)
        same = torch.equal(a.sequences, b.sequences) and torch.allclose(a.logprobs, b.logprobs, atol=1e-6)
        assert same == closed


def test_vlpo_run_under_the_bottleneck(tmp_path):
    """Rollout and replay share each step's draw (p anneals 1 -> 0 over 2 steps); on-policy the text ratio is 1,
    so nothing is clipped."""
    cfg = build_config(VLPORunConfig, {
        "model": {"path": "tiny"},
        "data": {"source": "synthetic", "synthetic_size": 4},
        "rollout": {"num_generations": 4, "max_new_tokens": 7, "k_latent": 2,
                    "bottleneck": {"p": 1.0, "p_end": 0.0}},
        "algo": {"variant": "vlpo", "beta": 0.04},
        "engine": {"device": "cpu", "lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "run": {"out_dir": str(tmp_path), "max_steps": 2, "prompts_per_step": 2, "micro_batch_size": 8,
                "save_every": 0, "threads": 1, "tensorboard": False, "progress": False, "resume": ""},
    })
    res = train_vlpo(cfg)
    assert [m["closed"] for m in res["metrics"]] == [1.0, 0.0]
    assert all(m["clip_frac_text"] == 0.0 for m in res["metrics"])
    with pytest.raises(ValueError, match="needs a latent variant"):
        build_config(VLPORunConfig, {"model": {"path": "tiny"}, "algo": {"variant": "grpo"},
                                     "rollout": {"bottleneck": {"p": 1.0}}})
