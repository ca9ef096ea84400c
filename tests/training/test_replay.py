"""Teacher-forced replay reproduces rollouts: token log-probs, H[p-1] latent means, gradients."""

import torch

from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.replay import replay, replay_rollout

SIZES = [(224, 224), (168, 308)]


def _rollout(tiny, batch, **kw):
    cfg = DecodeConfig(k_latent=4, max_new_tokens=14, num_samples=3, temperature=0.9, top_p=0.95, **kw)
    return latent_generate(tiny.model, batch, tiny.ids, cfg, generator=torch.Generator().manual_seed(0))


def test_replay_reproduces_rollout_logprobs_and_latents_zero_noise(tiny, make_batch):
    batch = make_batch(SIZES)
    out = _rollout(tiny, batch)
    with torch.no_grad():
        rep = replay_rollout(tiny.model, batch, out, tiny.ids)
    m = out.sampled_mask
    assert m.sum() > 0
    torch.testing.assert_close(rep.token_logprobs[m], out.logprobs[m], atol=1e-5, rtol=0)
    # zero noise: the replayed mean H[p-1] is exactly the recorded input z (the off-by-one guard)
    torch.testing.assert_close(rep.mu, out.z, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rep.mu, out.mu, atol=1e-5, rtol=1e-4)
    assert torch.equal(rep.token_logprobs[out.latent_mask], torch.zeros(int(out.latent_mask.sum())))


def test_off_by_one_would_be_caught(tiny, make_batch):
    """H[p] (the hidden state AT the latent slot) differs from z: comparing with it is the public bug."""
    batch = make_batch(SIZES[:1])
    out = _rollout(tiny, batch)
    L = batch["input_ids"].shape[1]
    rows, cols = out.latent_mask.nonzero(as_tuple=True)
    full = torch.cat([batch["input_ids"].repeat(3, 1), out.sequences], 1)
    with torch.no_grad():
        emb = tiny.model.get_input_embeddings()(full)
        emb[rows, L + cols] = out.z[rows, out.latent_mask.cumsum(-1)[rows, cols] - 1]
        hid = tiny.model.model(input_ids=full, inputs_embeds=emb,
                               attention_mask=torch.ones_like(full), pixel_values=batch["pixel_values"].repeat(3, 1),
                               image_grid_thw=batch["image_grid_thw"].repeat(3, 1),
                               mm_token_type_ids=torch.cat([batch["mm_token_type_ids"].repeat(3, 1),
                                                            torch.zeros_like(out.sequences)], 1)).last_hidden_state
    at_p_minus_1 = hid[rows, L + cols - 1].view(3, 4, -1)
    at_p = hid[rows, L + cols].view(3, 4, -1)
    torch.testing.assert_close(at_p_minus_1, out.z, atol=1e-5, rtol=1e-4)  # stock forward agrees with ours
    assert (at_p - out.z).norm(dim=-1).min() > 1e-2


def test_replay_with_noise_returns_means_not_inputs(tiny, make_batch):
    batch = make_batch(SIZES)
    out = _rollout(tiny, batch, noise="relative", noise_scale=0.2)
    with torch.no_grad():
        rep = replay_rollout(tiny.model, batch, out, tiny.ids)
    m = out.sampled_mask
    torch.testing.assert_close(rep.token_logprobs[m], out.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(rep.mu, out.mu, atol=1e-5, rtol=1e-4)
    assert (rep.mu - out.z).norm(dim=-1).min() > 1e-3


def test_replay_temperature_and_gradients(tiny, make_batch):
    batch = make_batch(SIZES[:1])
    out = _rollout(tiny, batch)
    z = out.z.clone().requires_grad_(True)
    rep = replay(tiny.model, batch, out.sequences, out.gen_mask, z, tiny.ids, temperature=0.9,
                 prompt_index=out.prompt_index)
    with torch.no_grad():
        cold = replay(tiny.model, batch, out.sequences, out.gen_mask, out.z, tiny.ids, temperature=0.5,
                      prompt_index=out.prompt_index)
    m = out.sampled_mask
    assert not torch.allclose(cold.token_logprobs[m], rep.token_logprobs[m])
    loss = -(rep.token_logprobs[m]).mean() + rep.mu.pow(2).mean()
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert tiny.model.lm_head.weight.grad.abs().sum() > 0
    assert tiny.model.model.visual.merger.mlp[0].weight.grad is None  # vision encoded under no_grad
    tiny.model.zero_grad(set_to_none=True)
