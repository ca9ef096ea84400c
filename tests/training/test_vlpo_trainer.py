"""VLPO on the tiny model: replay indexing, latent gradient at the behaviour policy, rewards by token id, frozen /
trainable parameters, exact resume, and a short run that raises the mean reward."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.checkpoints import read_latent_info
from medlvr.training.model import save_checkpoint
from medlvr.training.replay import replay
from medlvr.training.tiny import build_tiny
from medlvr.training.vlpo.algos import LossConfig, latent_log_ratio, vlpo_loss
from medlvr.corpus.config import build_config
from medlvr.training.vlpo.config import VLPORunConfig, resolve_k_latent
from medlvr.training.vlpo.core import (collect, decode_config, global_denominators, loss_config, microbatch_loss,
                                vision_token_ids)
from medlvr.training.vlpo.data import build_prompt_batch, synthetic_samples
from medlvr.training.vlpo.rewards import compute_rewards, format_rewards
from medlvr.training.vlpo.rollout import LocalLatentRollout
from medlvr.training.vlpo.trainer import train_vlpo

K = 2


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_samples(6, tmp_path_factory.mktemp("syn"), seed=0)


def _rollout(model, ids, batch, noise_scale, seed=0, G=2):
    cfg = DecodeConfig(k_latent=K, max_new_tokens=K + 4, temperature=0.9, num_samples=G,
                       noise="absolute" if noise_scale else "none", noise_scale=noise_scale)
    return latent_generate(model, batch.inputs, ids, cfg, generator=torch.Generator().manual_seed(seed))


def test_replay_means_are_h_p_minus_1(tiny, syn):
    """The replay's latent means reproduce the rollout's mu (H[p-1]): log-ratio ~ 0 at unchanged weights.
    A deliberately shifted implementation (H[p]: for slot k that is mu of slot k+1) fails the same check."""
    batch = build_prompt_batch(tiny.processor, syn[:2])
    out = _rollout(tiny.model, tiny.ids, batch, 0.0)
    r = replay(tiny.model, batch.inputs, out.sequences, out.gen_mask, out.z, tiny.ids, out.logprob_temperature,
               prompt_index=out.prompt_index)
    rel = lambda m: ((m - out.mu).norm(dim=-1) / out.mu.norm(dim=-1))[:, 0]  # noqa: E731  slot 1 of each row
    shifted = torch.cat([r.mu[:, 1:], r.mu[:, -1:]], dim=1)  # H[p] instead of H[p-1] (last slot: unchanged)
    assert rel(r.mu).max() < 1e-4
    assert rel(shifted).min() > 50 * rel(r.mu).max() + 1e-4
    sigma = 0.01 * out.mu.norm(dim=-1)
    lr, lr_shift = latent_log_ratio(out.z, out.mu, r.mu, sigma), latent_log_ratio(out.z, out.mu, shifted, sigma)
    assert lr.abs().max() < 1e-2 and lr_shift[:, 0].abs().min() > 0.3
    # text log-probs of the replay match the rollout's
    torch.testing.assert_close(r.token_logprobs[out.sampled_mask], out.logprobs[out.sampled_mask], atol=1e-4, rtol=0)


def test_latent_policy_gradient_needs_noise(tiny, syn):
    """At theta = theta_old the latent surrogate's parameter gradient vanishes without exploration noise
    (up to cached-vs-full forward rounding) and is large with it."""
    batch = build_prompt_batch(tiny.processor, syn[:2])
    norms = {}
    for scale in (0.0, 0.5):
        model = build_tiny(seed=0).model
        out = _rollout(model, tiny.ids, batch, scale, G=4)
        r = replay(model, batch.inputs, out.sequences, out.gen_mask, out.z, tiny.ids, out.logprob_temperature,
                   prompt_index=out.prompt_index)
        adv = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)
        lo = vlpo_loss(r.token_logprobs.detach(), out.logprobs, out.sampled_mask, adv,
                       LossConfig(beta=0.0, lambda_lat=1.0, latent_sigma=1.0), z=out.z, mu_old=out.mu, mu_new=r.mu,
                       latent_mask=torch.ones(8, K, dtype=torch.bool))
        lo.latent_loss.backward()
        norms[scale] = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert norms[0.5] > 1e-3
    assert norms[0.0] < 1e-3 * norms[0.5]


def test_rewards_by_token_id(tiny):
    ids, tok = tiny.ids, tiny.processor.tokenizer
    eos = tok.eos_token_id
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    L = ids.latent
    seqs = torch.tensor([
        [ids.start, L, L, ids.end, b, eos],  # correct, well formed
        [a, ids.start, L, L, ids.end, a],  # a letter BEFORE the latent segment does not count; answer A: wrong
        [ids.start, L, L, b, eos, 0],  # no <Medlvr_End>: format 0, answer parsed from the whole text
        [ids.start, L, L, ids.end, b, eos],  # masked out beyond position 2: no End -> format 0
    ])
    mask = torch.ones_like(seqs, dtype=torch.bool)
    mask[2, 5] = False
    mask[3, 3:] = False
    opts = [(("A", "liver"), ("B", "kidney"))] * 4
    r = compute_rewards(seqs, mask, ids, tok, opts, ["B"] * 4, eos_ids=(eos,))
    assert r["format"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert r["accuracy"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert r["reward"].tolist() == [2.0, 1.0, 1.0, 0.0]
    # the control tokens spelled out as TEXT (not their ids) do not satisfy the format check
    fake = torch.tensor([tok.encode("Medlvr_Start Medlvr_End", add_special_tokens=False)])
    assert format_rewards(fake, torch.ones_like(fake, dtype=torch.bool), ids).item() == 0.0


def _warm_start(model, processor, ids, samples, steps=25, lr=3e-3, seed=0):
    """A stand-in for ROI-SFT: teach 'Start, K latents, End, <a random option letter>, EOS' (the letter does not
    depend on the question, so accuracy starts near chance and RL has something to learn)."""
    g = torch.Generator().manual_seed(seed)
    tok = processor.tokenizer
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = build_prompt_batch(processor, samples)
    for _ in range(steps):
        out = latent_generate(model, batch.inputs, ids, DecodeConfig(k_latent=K, max_new_tokens=K + 2,
                                                                      eos_token_ids=()))
        letters = [s.options[int(torch.randint(len(s.options), (1,), generator=g))][0] for s in samples]
        ans = torch.tensor([[tok.convert_tokens_to_ids(x), tok.eos_token_id] for x in letters])
        seq = torch.cat([out.sequences, ans], dim=1)
        mask = torch.ones_like(seq, dtype=torch.bool)
        r = replay(model, batch.inputs, seq, mask, out.z, ids, 1.0)
        loss = -r.token_logprobs[:, -2:].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def sft_ckpt(tmp_path_factory, syn):
    torch.set_num_threads(1)
    b = build_tiny(seed=0)
    b.model.model.visual.requires_grad_(False)
    _warm_start(b.model, b.processor, b.ids, syn[:3])
    return save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("sft") / "model")


def _cfg(tmp, ckpt, **over):
    d = {
        "model": {"path": str(ckpt)},
        "data": {"source": "synthetic", "synthetic_size": 6},
        "rollout": {"num_generations": 8, "max_new_tokens": K + 4, "k_latent": K, "noise_scale": 0.05},
        "algo": {"variant": "vlpo", "beta": 0.04},
        "engine": {"device": "cpu", "lr": 3e-3, "warmup_ratio": 0.0, "schedule": "constant"},
        "run": {"out_dir": str(tmp), "max_steps": 4, "prompts_per_step": 3, "micro_batch_size": 12, "save_every": 2,
                "threads": 1, "tensorboard": False, "progress": False},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        d[sec][key] = v
    return build_config(VLPORunConfig, d)


def _mean_accuracy(model, processor, ids, samples, G=16, seed=123):
    batch = build_prompt_batch(processor, samples)
    cfg = dataclasses.replace(decode_config(_cfg("/tmp/x", "/tmp/x").rollout, K, banned_ids=vision_token_ids(model)),
                              num_samples=G, noise="none")
    out = LocalLatentRollout(model, ids).generate(batch.inputs, cfg, torch.Generator().manual_seed(seed))
    tok = processor.tokenizer
    r = compute_rewards(out.sequences, out.gen_mask, ids, tok, [o for o in batch.options for _ in range(G)],
                        [g for g in batch.gold for _ in range(G)], eos_ids=(tok.eos_token_id,))
    return float(r["accuracy"].mean())


def test_short_run_raises_mean_reward(tmp_path, sft_ckpt):
    """Learnable task: one question template whose correct letter is fixed ("A" of four options); the warm start
    answers with random letters. Accuracy over 16 samples of the same 3 prompts (fixed seed), before vs after."""
    from medlvr.training.model import load_checkpoint

    model, proc, ids = load_checkpoint(sft_ckpt)
    prompts = synthetic_samples(3, tmp_path / "eval_img", seed=0, templates=[0])
    before = _mean_accuracy(model, proc, ids, prompts)
    cfg = _cfg(tmp_path, sft_ckpt, run__max_steps=10, run__save_every=0, data__synthetic_templates=(0,))
    res = train_vlpo(cfg)
    after_model, _, _ = load_checkpoint(res["final_dir"])
    after = _mean_accuracy(after_model, proc, ids, prompts)
    assert before < 0.6, before  # the warm start answers with letters, near chance (0.25)
    assert after > max(0.7, before + 0.25), (before, after)
    rewards = [h["reward_mean"] for h in res["metrics"]]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4
    m = res["metrics"][-1]
    for key in ("reward_mean", "reward_std", "accuracy", "format_rate", "zero_std_groups", "clip_frac_text",
                "clip_frac_latent", "latent_abs_log_ratio", "kl", "entropy", "response_length", "time_rollout",
                "time_replay", "time_update", "time_ref"):
        assert key in m, key


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_unchanged_trainable_changed(tmp_path, sft_ckpt):
    from medlvr.training.engine import Engine
    from medlvr.training.vlpo.trainer import load_policy, load_reference

    cfg = _cfg(tmp_path, sft_ckpt)
    policy, proc, ids = load_policy(cfg)
    eng = Engine(policy, dataclasses.replace(cfg.engine, grad_accum=1), total_steps=1, micro_batch_size=24)
    before = _weights(policy)
    samples = synthetic_samples(3, tmp_path / "img")
    batch = build_prompt_batch(proc, samples)
    ref = load_reference(cfg, eng.device)
    dcfg = decode_config(cfg.rollout, K, banned_ids=vision_token_ids(policy))
    exp = collect(policy, ref, LocalLatentRollout(policy, ids), batch, ids, dcfg, cfg.algo,
                  proc.tokenizer, micro_batch=24, generator=torch.Generator().manual_seed(0))
    exp.advantages = torch.linspace(-1, 1, exp.advantages.numel())  # force a nonzero signal
    lo = microbatch_loss(policy, exp, torch.arange(24), ids, loss_config(cfg), global_denominators(exp, "token_mean"))
    eng.backward(lo.loss)
    assert eng.step().stepped
    after = _weights(policy)
    visual = [n for n in before if n.startswith("model.visual.")]
    assert visual and all(torch.equal(before[n], after[n]) for n in visual)
    assert any(n.startswith("model.visual.merger") for n in visual)
    changed = [n for n in before if not n.startswith("model.visual.") and not torch.equal(before[n], after[n])]
    assert any("lm_head" in n for n in changed) and any("layers.0" in n for n in changed)
    assert all(not p.requires_grad for p in ref.parameters())


def test_resume_is_exact(tmp_path, sft_ckpt):
    full = train_vlpo(_cfg(tmp_path / "full", sft_ckpt))
    part = train_vlpo(_cfg(tmp_path / "part", sft_ckpt, run__stop_after=2))
    assert part["steps"] == 2 and part["final_dir"] is None
    manifest = json.loads((tmp_path / "part" / "checkpoints" / "step-0000002" / "manifest.json").read_text())
    # no rollout generator state: the rows' draws are seeded by (seed, step, sample id, g)
    assert "trainer_state.json" in manifest["files"]
    assert not any(f.startswith("rollout_rng/") for f in manifest["files"])

    class Killed(BaseException):
        pass

    def kill(step, m):  # resumed from 2, step 3 logged, then killed before any checkpoint of step 3
        raise Killed

    with pytest.raises(Killed):
        train_vlpo(_cfg(tmp_path / "part", sft_ckpt), log_fn=kill)
    rest = train_vlpo(_cfg(tmp_path / "part", sft_ckpt))  # resumes from step 2 again: step 3 is not logged twice
    assert rest["steps"] == 4 and [h["step"] for h in rest["metrics"]] == [3, 4]
    for a, b in zip(full["metrics"][2:], rest["metrics"]):
        for k in ("reward_mean", "loss", "kl", "grad_norm", "entropy"):
            assert a[k] == b[k], (k, a[k], b[k])
    from safetensors.torch import load_file

    wa = load_file(f"{full['final_dir']}/model.safetensors")
    wb = load_file(f"{rest['final_dir']}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert read_latent_info(rest["final_dir"]) == {"k_latent": K, "latent": True, "text_blind": False}  # K travels with the policy


def test_k_latent_comes_from_the_starting_checkpoint(tmp_path):
    b = build_tiny(seed=0)
    ck = save_checkpoint(b.model, b.processor, tmp_path / "model", k_latent=3)
    cfg = resolve_k_latent(_cfg(tmp_path, ck, rollout__k_latent=None))
    assert cfg.rollout.k_latent == 3 and cfg.k_latent == 3
    assert resolve_k_latent(_cfg(tmp_path, ck, rollout__k_latent=5)).k_latent == 5  # an explicit value wins
    with pytest.raises(ValueError, match="rollout.k_latent is required with model.path: tiny"):
        resolve_k_latent(_cfg(tmp_path, "tiny", rollout__k_latent=None))
    plain = save_checkpoint(b.model, b.processor, tmp_path / "plain")  # no K recorded
    with pytest.raises(ValueError, match="records no K"):
        resolve_k_latent(_cfg(tmp_path, plain, rollout__k_latent=None))


@pytest.mark.parametrize("variant", ["grpo", "medlvr_grpo"])
def test_variants_run(tmp_path, sft_ckpt, variant):
    res = train_vlpo(_cfg(tmp_path, sft_ckpt, algo__variant=variant, run__max_steps=1, algo__beta=0.0))
    m = res["metrics"][0]
    if variant == "grpo":  # no latent segment: no control tokens, no latent term
        assert m["format_rate"] == 0.0 and m["latent_loss"] == 0.0 and m["response_length"] <= K + 4
    else:  # latents present, text-only loss
        assert m["format_rate"] == 1.0 and m["latent_loss"] == 0.0 and m["latent_abs_log_ratio"] >= 0.0


def test_lora_vlpo_changes_adapters_and_control_rows_only_and_resumes_exactly(tmp_path, sft_ckpt):
    """engine.lora: the merged policy differs from the starting checkpoint only in the language model's targeted
    linear layers and the control-token rows; a run stopped after step 1 and resumed ends with the same weights."""
    from safetensors.torch import load_file

    from medlvr.training.model import load_checkpoint

    lora = {"r": 4, "alpha": 8.0}
    full = train_vlpo(_cfg(tmp_path / "full", sft_ckpt, engine__lora=lora, run__max_steps=2, run__save_every=1))
    part = train_vlpo(_cfg(tmp_path / "part", sft_ckpt, engine__lora=lora, run__max_steps=2, run__save_every=1,
                           run__stop_after=1))
    assert part["steps"] == 1
    rest = train_vlpo(_cfg(tmp_path / "part", sft_ckpt, engine__lora=lora, run__max_steps=2, run__save_every=1))
    wa = load_file(f"{full['final_dir']}/model.safetensors")
    wb = load_file(f"{rest['final_dir']}/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (Path(full["final_dir"]).parent / "adapter" / "adapter_model.safetensors").is_file()

    start, _, ids = load_checkpoint(sft_ckpt)
    final, _, _ = load_checkpoint(full["final_dir"])
    before = dict(start.named_parameters())
    targets = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
               "up_proj.weight", "down_proj.weight")
    changed = [n for n, p in final.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.endswith(targets) for n in changed)
    for n in changed:
        if n.endswith(("embed_tokens.weight", "lm_head.weight")):
            rows = (final.state_dict()[n] != start.state_dict()[n]).any(-1).nonzero().squeeze(1).tolist()
            assert set(rows) <= {ids.start, ids.latent, ids.end}, (n, rows)
        else:
            assert n.endswith(targets) and "visual" not in n, n


def test_two_rank_split_of_the_same_rollouts_gives_the_one_rank_gradient(tmp_path, sft_ckpt):
    """Issue 28, the VLPO update on W ranks (whole groups per rank) against one rank on the SAME rollouts. Each rank
    divides its loss by the all-reduced counts over W, as the trainer does, and the engine averages gradients over
    ranks (tests/training/test_multirank.py shows DeepSpeed's average equals accumulation); here two ranks are
    simulated in one process on one Experience, prompt 0's group as rank 0 and prompt 1's as rank 1."""
    from types import SimpleNamespace

    from medlvr.training.vlpo.trainer import load_policy, load_reference

    cfg = _cfg(tmp_path, sft_ckpt)
    policy, proc, ids = load_policy(cfg)
    batch = build_prompt_batch(proc, synthetic_samples(2, tmp_path / "img"))
    ref = load_reference(cfg, torch.device("cpu"))
    exp = collect(policy, ref, LocalLatentRollout(policy, ids), batch, ids,
                  decode_config(cfg.rollout, K, banned_ids=vision_token_ids(policy)), cfg.algo, proc.tokenizer,
                  micro_batch=16, generator=torch.Generator().manual_seed(0))
    exp.advantages = torch.linspace(-1, 1, exp.advantages.numel())  # a nonzero signal in every group
    N, G, W = exp.out.sequences.shape[0], cfg.rollout.num_generations, 2
    assert N == 2 * G
    lcfg, agg = loss_config(cfg), cfg.algo.aggregation
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.train()

    def grads(rows: torch.Tensor, denoms: dict) -> list[torch.Tensor]:
        policy.zero_grad(set_to_none=True)
        for mb in rows.split(4):  # micro-batches of 4 trajectories
            microbatch_loss(policy, exp, mb, ids, lcfg, denoms).loss.backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    one = grads(torch.arange(N), global_denominators(exp, agg))
    rank_rows = [torch.arange(r * G, (r + 1) * G) for r in range(W)]
    local = [global_denominators(SimpleNamespace(out=SimpleNamespace(sampled_mask=exp.out.sampled_mask[rows]),
                                                 latent_mask=exp.latent_mask[rows]), agg) for rows in rank_rows]
    denoms = {k: sum(d[k] for d in local) / W for k in local[0]}  # the trainer: all_reduce_sum / world_size
    per_rank = [grads(rows, denoms) for rows in rank_rows]
    averaged = [(a + b) / W for a, b in zip(*per_rank)]
    assert max(float((x - y).abs().max()) for x, y in zip(one, averaged)) <= 1e-6
    assert max(float(x.abs().max()) for x in one) > 1e-3  # the update is not trivially zero


def test_checkpoint_from_another_world_size_is_one_error(tmp_path, sft_ckpt):
    """A Stage-2 checkpoint's prompt sampler counts global batches of prompts_per_step x ranks: one written by 2
    ranks does not resume on 1 (a CheckpointError, one line at the CLI) instead of silently drawing other prompts."""
    from medlvr.training.checkpoints import CheckpointError, write_manifest

    train_vlpo(_cfg(tmp_path, sft_ckpt, run__max_steps=1, run__save_every=0))
    ck = tmp_path / "checkpoints" / "step-0000001"
    state = json.loads((ck / "trainer_state.json").read_text())
    (ck / "trainer_state.json").write_text(json.dumps({**state, "world_size": 2}))
    write_manifest(ck)
    with pytest.raises(CheckpointError, match="written by 2 ranks, this run has 1"):
        train_vlpo(_cfg(tmp_path, sft_ckpt, run__max_steps=2, run__save_every=0))
