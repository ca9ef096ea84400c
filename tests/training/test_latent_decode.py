"""Batched KV-cached latent decoding: parity with generate, batching, call counts, state machine, noise."""

import math
import copy

import pytest
import torch

from medlvr.training.latent_decode import DecodeConfig, RowGenerators, latent_generate
from medlvr.training.sampling import sample_tokens

SIZES = [(224, 224), (280, 168), (112, 336)]  # different grids -> different image-token counts and rope deltas


def test_k0_equals_generate_greedy(tiny, make_batch):
    batch = make_batch(SIZES)
    L = batch["input_ids"].shape[1]
    ref = tiny.model.generate(**batch, max_new_tokens=10, do_sample=False, return_dict_in_generate=True,
                              output_logits=True)
    out = latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(k_latent=0, max_new_tokens=10))
    assert torch.equal(out.sequences, ref.sequences[:, L:])
    # log-probs too: greedy tokens of a random tiny model survive small position errors, log-probs do not
    # (the policy excludes the <Medlvr_Latent> placeholder from the text distribution)
    ref_logits = torch.stack(ref.logits, 1).index_fill(-1, torch.tensor([tiny.ids.latent]), float("-inf"))
    ref_lp = ref_logits.log_softmax(-1).gather(-1, out.sequences.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.logprobs, ref_lp, atol=1e-5, rtol=0)
    assert not out.latent_mask.any() and out.sampled_mask.all()


def test_k0_per_row_eos_equals_generate(tiny, make_batch):
    """EOS chosen as a token row 0 emits early: row 0 stops, the others go on, finished rows are padded."""
    batch = make_batch(SIZES)
    L = batch["input_ids"].shape[1]
    free = latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(k_latent=0, max_new_tokens=12))
    eos = int(free.sequences[0, 3])
    ref = tiny.model.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=eos)[:, L:]
    out = latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(k_latent=0, max_new_tokens=12,
                                                                     eos_token_ids=(eos,)))
    assert torch.equal(out.sequences, ref[:, : out.n_steps])
    assert len(set(out.gen_mask.sum(-1).tolist())) > 1  # rows really stopped at different steps
    first_eos = (free.sequences[0] == eos).nonzero()[0].item()
    assert out.gen_mask[0].sum().item() == first_eos + 1
    assert (out.sequences[0, first_eos + 1 :] == tiny.model.generation_config.pad_token_id).all()


@pytest.mark.parametrize("num_samples", [1, 2])
def test_left_padded_batch_equals_per_sample_runs(tiny, make_batch, num_samples):
    """Mixed image sizes, left padding and rows in different modes in the same forward (row 1 is not forced to
    start, so it decodes text while rows 0 and 2 are in latent mode)."""
    cfg = DecodeConfig(k_latent=4, max_new_tokens=14, num_samples=num_samples)
    force = torch.tensor([True, False, True])
    batch = make_batch(SIZES)
    assert (batch["attention_mask"] == 0).any()  # really left-padded
    out = latent_generate(tiny.model, batch, tiny.ids, cfg, force_start=force)
    assert out.latent_mask[0].any() and not out.latent_mask[1 * num_samples].any()
    for i, size in enumerate(SIZES):
        single = latent_generate(tiny.model, make_batch([size], first=i), tiny.ids, cfg, force_start=force[i : i + 1])
        for g in range(num_samples):
            r = i * num_samples + g
            T = single.n_steps
            assert torch.equal(out.sequences[r, :T], single.sequences[0])
            torch.testing.assert_close(out.logprobs[r, :T], single.logprobs[0], atol=2e-5, rtol=0)
            torch.testing.assert_close(out.z[r], single.z[0], atol=2e-5, rtol=1e-4)
            assert torch.equal(out.latent_mask[r, :T], single.latent_mask[0])


def test_forced_start_layout(tiny, make_batch):
    K = 5
    out = latent_generate(tiny.model, make_batch(SIZES[:2]), tiny.ids, DecodeConfig(k_latent=K, max_new_tokens=12))
    ids = tiny.ids
    assert (out.sequences[:, 0] == ids.start).all()
    assert (out.sequences[:, 1 : 1 + K] == ids.latent).all() and out.latent_mask[:, 1 : 1 + K].all()
    assert (out.sequences[:, 1 + K] == ids.end).all()
    assert not out.sampled_mask[:, : K + 2].any() and out.sampled_mask[:, K + 2 :].all()
    assert (out.n_latent == K).all()
    # indexing rule: z_1 is the hidden state at <Medlvr_Start>, z_{k+1} the one computed at the k-th latent slot
    assert not torch.allclose(out.z[:, 0], out.z[:, 1])


def test_sampled_start_opens_latent_segment(tiny, make_batch):
    """Not forced: the model's own <Medlvr_Start> (made likely by editing its lm_head row) starts K latents."""
    model = copy.deepcopy(tiny.model)
    batch = make_batch(SIZES[:1])
    plain = latent_generate(model, batch, tiny.ids, DecodeConfig(k_latent=0, max_new_tokens=6))
    target = int(plain.sequences[0, 2])
    s = plain.sequences[0].tolist().index(target)  # first step whose greedy token is `target`
    with torch.no_grad():  # Start now beats `target` wherever `target` was the argmax with a positive logit
        model.lm_head.weight[tiny.ids.start] = 3.0 * model.lm_head.weight[target]
    K = 3
    out = latent_generate(model, batch, tiny.ids, DecodeConfig(k_latent=K, max_new_tokens=s + K + 3,
                                                                force_start=False))
    seq = out.sequences[0].tolist()
    assert tiny.ids.start in seq
    s1 = seq.index(tiny.ids.start)
    assert s1 <= s  # at step s Start beats `target`, possibly earlier too
    # before it only Start's logit changed and it lost, so the text is the unedited model's greedy text
    assert seq[:s1] == plain.sequences[0, :s1].tolist()
    assert out.sampled_mask[0, s1] and not out.latent_mask[0, :s1].any()
    assert seq[s1 + 1 : s1 + 1 + K] == [tiny.ids.latent] * K and seq[s1 + 1 + K] == tiny.ids.end
    assert out.n_latent[0] == K


def _count_calls(module, calls):
    return module.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["inputs_embeds"].shape[:2] if "inputs_embeds" in kwargs
                                               else args[0].shape), with_kwargs=True)


@pytest.mark.parametrize("fuse", [False, True])
def test_one_prefill_per_prompt_then_one_forward_per_step(tiny, make_batch, fuse):
    B, G, K, T = 2, 3, 4, 12
    batch = make_batch(SIZES[:B])
    L = batch["input_ids"].shape[1]
    lm_calls, vis_calls = [], []
    hooks = [_count_calls(tiny.model.model.language_model, lm_calls), _count_calls(tiny.model.model.visual, vis_calls)]
    try:
        out = latent_generate(tiny.model, batch, tiny.ids,
                              DecodeConfig(k_latent=K, max_new_tokens=T, num_samples=G, temperature=1.0,
                                           fuse_control=fuse),
                              generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert len(vis_calls) == 1  # images encoded once, for B prompts
    assert out.sequences.shape == (B * G, T)
    steps = [tuple(c) for c in lm_calls[1:]]
    if not fuse:
        assert tuple(lm_calls[0]) == (B, L)  # prefill over the B prompts, not B*G rows
        assert len(lm_calls) == 1 + (T - 1) == 1 + out.n_decode_forwards  # no forward after the last token
        assert all(c == (B * G, 1) for c in steps)  # one single-position forward per step
    else:
        # <Medlvr_Start> prefilled with the prompts; K-1 latent steps; [z_K, <Medlvr_End>] in one forward;
        # then one forward per answer token but the last: T - 3 forwards for T positions
        assert tuple(lm_calls[0]) == (B, L + 1)
        assert len(lm_calls) == 1 + (T - 3) == 1 + out.n_decode_forwards
        assert steps == [(B * G, 1)] * (K - 1) + [(B * G, 2)] + [(B * G, 1)] * (T - K - 3)


def test_fused_control_tokens_change_nothing_but_the_forward_count(tiny, make_batch):
    """Sampling with noise, G samples, K=1 and K=4: the fused run generates what the unfused run generates, with
    the same log-probs, latents and noise (the same RNG draws in the same order)."""
    batch = make_batch(SIZES)
    for K in (1, 4):
        runs = [latent_generate(tiny.model, batch, tiny.ids,
                                DecodeConfig(k_latent=K, max_new_tokens=K + 8, num_samples=2, temperature=1.0,
                                             noise="relative", noise_scale=0.1, fuse_control=fuse),
                                generator=torch.Generator().manual_seed(7)) for fuse in (False, True)]
        plain, fused = runs
        assert torch.equal(plain.sequences, fused.sequences) and torch.equal(plain.gen_mask, fused.gen_mask)
        assert torch.equal(plain.latent_mask, fused.latent_mask) and torch.equal(plain.sampled_mask, fused.sampled_mask)
        for name in ("logprobs", "z", "mu", "noise"):
            torch.testing.assert_close(getattr(fused, name), getattr(plain, name), atol=2e-5, rtol=1e-4)
        assert fused.n_decode_forwards == plain.n_decode_forwards - 2
        assert (fused.sequences[:, 0] == tiny.ids.start).all() and (fused.sequences[:, K + 1] == tiny.ids.end).all()


def test_finished_rows_cost_no_forward(tiny, make_batch):
    """compact_ratio=1: rows leave the batch (and cache) at EOS: forward rows summed over steps == sum over rows
    of (len - 1)."""
    batch = make_batch(SIZES)
    free = latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(k_latent=2, max_new_tokens=16))
    eos = int(free.sequences[0, 6])  # a text token of row 0, after its latent segment
    lm_calls = []
    hook = _count_calls(tiny.model.model.language_model, lm_calls)
    try:
        out = latent_generate(tiny.model, batch, tiny.ids,
                              DecodeConfig(k_latent=2, max_new_tokens=16, eos_token_ids=(eos,), compact_ratio=1.0))
    finally:
        hook.remove()
    lengths = out.gen_mask.sum(-1)
    assert lengths.min() < lengths.max()  # some rows really stopped early
    # row-forwards: Start rides in the prefill and End with the last latent, the last token needs none
    assert sum(c[0] for c in lm_calls[1:]) == int((lengths - 3).sum())
    assert sum(c[0] * c[1] for c in lm_calls[1:]) == int((lengths - 2).sum())  # positions fed after the prefill
    for r in range(len(SIZES)):  # a stopped row's tokens are a prefix of its free run
        n = int(lengths[r])
        assert torch.equal(out.sequences[r, :n], free.sequences[r, :n])


def test_lazy_cache_compaction_gives_the_same_outputs_with_fewer_copies(tiny, make_batch):
    """Rows finishing at different steps: dropping them at every EOS (1.0, the old behaviour), lazily (0.5, the
    default) or never (0.0) decodes the same tokens, log-probs and latents; only the number of cache gathers
    differs (<= log2 of the rows for 0.5, none for 0.0)."""
    batch = make_batch(SIZES)
    base = dict(k_latent=2, max_new_tokens=16, num_samples=3, temperature=1.0, top_p=0.9)
    free = latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(**base),
                           generator=torch.Generator().manual_seed(1))
    text = free.sequences[:, 4:]  # after Start, 2 latents, End

    def first_steps(tok):
        return {int((row == tok).nonzero()[0]) for row in text if (row == tok).any()}

    eos = max(set(text.flatten().tolist()), key=lambda tok: len(first_steps(tok)))  # rows stop at varied steps
    outs = {r: latent_generate(tiny.model, batch, tiny.ids, DecodeConfig(**base, eos_token_ids=(eos,),
                                                                         compact_ratio=r),
                               generator=torch.Generator().manual_seed(1)) for r in (1.0, 0.5, 0.0)}
    every, lazy, never = outs[1.0], outs[0.5], outs[0.0]
    finish_steps = set(every.gen_mask.sum(-1).tolist()) - {every.n_steps}
    assert len(finish_steps) >= 2  # rows really finished at several different steps
    for o in (lazy, never):
        assert torch.equal(o.sequences, every.sequences) and torch.equal(o.gen_mask, every.gen_mask)
        for name in ("logprobs", "z", "mu"):
            torch.testing.assert_close(getattr(o, name), getattr(every, name), atol=2e-5, rtol=1e-4)
    n_rows = every.sequences.shape[0]
    assert every.n_cache_compactions == len(finish_steps)
    assert lazy.n_cache_compactions <= math.log2(n_rows) and lazy.n_cache_compactions < every.n_cache_compactions
    assert never.n_cache_compactions == 0


def test_g_samples_differ_and_are_reproducible(tiny, make_batch):
    cfg = DecodeConfig(k_latent=2, max_new_tokens=10, num_samples=4, temperature=1.0, top_p=0.9)
    batch = make_batch(SIZES[:1])
    a = latent_generate(tiny.model, batch, tiny.ids, cfg, generator=torch.Generator().manual_seed(3))
    b = latent_generate(tiny.model, batch, tiny.ids, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.sequences, b.sequences)
    assert len({tuple(s) for s in a.sequences.tolist()}) > 1
    assert (a.prompt_index == 0).all()


@pytest.mark.parametrize("kind,scale", [("relative", 0.1), ("absolute", 0.05)])
def test_latent_noise_is_recorded(tiny, make_batch, kind, scale):
    cfg = DecodeConfig(k_latent=4, max_new_tokens=8, noise=kind, noise_scale=scale, num_samples=2)
    out = latent_generate(tiny.model, make_batch(SIZES[:2]), tiny.ids, cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.z, out.mu + out.noise)
    assert (out.noise.norm(dim=-1) > 0).all()
    if kind == "relative":
        torch.testing.assert_close(out.noise.norm(dim=-1), scale * out.mu.norm(dim=-1), rtol=1e-4, atol=1e-6)
    else:
        assert abs(out.noise.std().item() - scale) < 0.2 * scale
    # the noisy latent changes the continuation's hidden states: later latent means differ between the G samples
    assert not torch.allclose(out.mu[0, 1:], out.mu[1, 1:])


def test_row_generators_make_a_rows_draws_independent_of_its_batch(tiny, make_batch):
    """Issue 28: with one generator per row (the VLPO trainer seeds them by sample id), a prompt's G rows sample the
    same tokens and latent noise whether it is decoded in a batch of 3 or alone (as on another rank); with one
    shared generator the alone-run of prompt 1 starts where the batch's prompt 0 started and differs."""
    cfg = DecodeConfig(k_latent=2, max_new_tokens=10, num_samples=2, temperature=1.0, noise="relative",
                       noise_scale=0.1)
    seeds = [101, 102, 201, 202, 301, 302]
    out = latent_generate(tiny.model, make_batch(SIZES), tiny.ids, cfg, generator=RowGenerators(seeds))
    shared = latent_generate(tiny.model, make_batch(SIZES), tiny.ids, cfg, generator=torch.Generator().manual_seed(0))
    differs = False
    for i, size in enumerate(SIZES):
        alone = latent_generate(tiny.model, make_batch([size], first=i), tiny.ids, cfg,
                                generator=RowGenerators(seeds[2 * i:2 * i + 2]))
        T = alone.n_steps
        assert torch.equal(out.sequences[2 * i:2 * i + 2, :T], alone.sequences)
        eps = out.noise[2 * i:2 * i + 2] / out.noise[2 * i:2 * i + 2].norm(dim=-1, keepdim=True)
        torch.testing.assert_close(eps, alone.noise / alone.noise.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
        old = latent_generate(tiny.model, make_batch([size], first=i), tiny.ids, cfg,
                              generator=torch.Generator().manual_seed(0))
        differs |= not torch.allclose(shared.noise[2 * i:2 * i + 2], old.noise, atol=1e-3)
    assert differs  # the shared stream really depends on the batch
    again = latent_generate(tiny.model, make_batch(SIZES), tiny.ids, cfg, generator=RowGenerators(seeds[::-1]))
    assert not torch.allclose(again.noise, out.noise)  # the seeds, not the rows, decide the draws


def test_sampling_rules():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sample_tokens(logits, 0.0).item() == 1
    assert sample_tokens(logits, 0.0, banned_ids=(1,)).item() == 2
    g = torch.Generator().manual_seed(0)
    draws = {sample_tokens(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)}
    assert draws == {1}  # token 1 alone holds > 50% of the mass
    draws = {sample_tokens(logits, 1.0, top_p=0.8, banned_ids=(1,), generator=g).item() for _ in range(200)}
    assert 1 not in draws and draws <= {0, 2}
