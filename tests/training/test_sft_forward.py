"""ROI-SFT forward against the model core: the teacher-forced pass equals VLPO's replay, self-fed latents equal
latent decoding's, and `detach` equals the K+2-pass chain with detached feeds (values AND gradients)."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.replay import replay  # noqa: E402
from medlvr.training.model import set_pixel_budget  # noqa: E402
from medlvr.training.sft.collate import collate  # noqa: E402
from medlvr.training.sft.data import ShardStream, shard_files  # noqa: E402
from medlvr.training.sft.forward import _cached_prefix_and_latents, sft_forward  # noqa: E402
from medlvr.training.sft.losses import answer_nll_sum, roi_loss_sum  # noqa: E402
from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.training.vlm_inputs import embed_with_images, image_embeddings, rope_positions  # noqa: E402

K = 3
BUDGET = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16)


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    corpus = build_sample_corpus(tmp_path_factory.getbasetemp() / "sft_corpus")
    rows = ShardStream(shard_files(corpus, "train"), seed=1).next_rows(4)
    model = copy.deepcopy(tiny.model)
    proc = copy.deepcopy(tiny.processor)
    set_pixel_budget(proc, **BUDGET)
    batch = collate(rows, proc, tiny.ids, K, **BUDGET)
    assert batch.n_roi >= 1
    return model, proc, tiny.ids, batch


def test_teacher_forced_equals_replay(setup):
    model, proc, ids, batch = setup
    with torch.no_grad():
        out = sft_forward(model, batch, ids, proc.image_processor, mode="teacher_forced")
        rep = replay(model, batch.prompts, batch.sequences, batch.gen_mask, out.targets, ids, 1.0)
    lab = batch.label_mask
    torch.testing.assert_close(out.token_logprobs[lab], rep.token_logprobs[lab], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.h, rep.mu, atol=1e-5, rtol=1e-5)  # h_k = H[p_k - 1], the indexing rule


def test_self_fed_latents_equal_latent_decoding(setup):
    model, proc, ids, batch = setup
    gen = latent_generate(model, batch.prompts, ids, DecodeConfig(k_latent=K, max_new_tokens=K + 1,
                                                                  eos_token_ids=()))
    with torch.no_grad():
        bptt = sft_forward(model, batch, ids, proc.image_processor, mode="self_fed", grad="bptt")
        det = sft_forward(model, batch, ids, proc.image_processor, mode="self_fed", grad="detach")
    torch.testing.assert_close(bptt.h, gen.mu, atol=1e-5, rtol=1e-5)  # the latents fed are the decoder's own
    torch.testing.assert_close(det.h, bptt.h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(det.token_logprobs, bptt.token_logprobs, atol=1e-5, rtol=1e-5)


def _loss(out, batch):
    return answer_nll_sum(out.token_logprobs, batch.label_mask) + roi_loss_sum(out.h, out.targets, batch.roi_mask)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_detach_equals_chain_with_detached_feeds_and_bptt_differs(setup):
    model, proc, ids, batch = setup
    model.zero_grad()
    _loss(sft_forward(model, batch, ids, proc.image_processor, mode="self_fed", grad="detach"), batch).backward()
    g_detach = _grads(model)

    # reference: the K+2 cached passes with h.detach() between steps, written out here
    model.zero_grad()
    p = batch.prompts
    L = p["input_ids"].shape[1]
    with torch.no_grad():
        img = image_embeddings(model, p["pixel_values"], p["image_grid_thw"])
    ids_full = torch.cat([p["input_ids"], batch.sequences], 1)
    attn = torch.cat([p["attention_mask"], batch.gen_mask.long()], 1)
    mm = torch.cat([p["mm_token_type_ids"], torch.zeros_like(batch.sequences)], 1)
    pos, _ = rope_positions(model, ids_full, mm, attn, p["image_grid_thw"])
    emb = embed_with_images(model, ids_full, img)
    lm = model.model.language_model
    head, cache = _cached_prefix_and_latents(lm, emb, attn, pos, L, K, detach=True)
    tail = lm(inputs_embeds=emb[:, L + K + 1:], attention_mask=attn, position_ids=pos[:, :, L + K + 1:],
              cache=cache, use_cache=True).last_hidden_state
    ref = sft_forward(model, batch, ids, proc.image_processor, mode="teacher_forced")  # for targets / shapes
    hidden = torch.cat([head, tail], 1)
    from medlvr.training.sampling import token_logprobs

    lp = token_logprobs(model.lm_head(hidden[:, L - 1:-1]), batch.sequences, 1.0, (ids.latent,))
    lp = lp.masked_fill(~batch.gen_mask | (batch.sequences == ids.latent), 0.0)
    ref.token_logprobs, ref.h = lp, hidden[:, L:L + K]
    model.zero_grad()
    _loss(ref, batch).backward()
    g_chain = _grads(model)
    assert g_chain.keys() == g_detach.keys()
    for n in g_chain:
        torch.testing.assert_close(g_detach[n], g_chain[n], atol=2e-5, rtol=1e-4, msg=n)

    model.zero_grad()
    _loss(sft_forward(model, batch, ids, proc.image_processor, mode="self_fed", grad="bptt"), batch).backward()
    g_bptt = _grads(model)
    diff = max((g_bptt[n] - g_detach[n]).abs().max().item() for n in g_detach)
    assert diff > 1e-6  # gradient through the latent chain changes the update
    model.zero_grad()
