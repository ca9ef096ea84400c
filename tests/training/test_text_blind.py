"""Text-blind prompt (issue 27, training/bottleneck.py): the prompt text after the image may not attend to the
visual tokens, in SFT, decoding and replay alike; the checkpoint records it. And the route swaps of the latent
diagnostics (evaluation/latent_diagnostics.py) on models whose route is known by construction."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from medlvr.evaluation.latent_diagnostics import SwapKV, route_columns  # noqa: E402
from medlvr.training.bottleneck import set_text_blind, text_blind_of  # noqa: E402
from medlvr.training.latent_decode import DecodeConfig, latent_generate  # noqa: E402
from medlvr.training.model import load_checkpoint, save_checkpoint  # noqa: E402
from medlvr.training.replay import replay, replay_rollout  # noqa: E402
from medlvr.training.sft.forward import sft_forward  # noqa: E402
from medlvr.training.tiny import build_tiny  # noqa: E402
from tests.training.conftest import random_image  # noqa: E402
from tests.training.test_bottleneck import MODES, _batch, corpus  # noqa: E402, F401  (the shared corpus fixture)

K = 3


def _text_after_image(ids, image_id, start_id):
    """Independent of the helper under test: columns strictly after the last visual token, not Start."""
    out = torch.zeros_like(ids, dtype=torch.bool)
    for r in range(ids.shape[0]):
        img_cols = (ids[r] == image_id).nonzero().flatten().tolist()
        if img_cols:
            out[r, img_cols[-1] + 1:] = True
    return out & (ids != start_id)


@pytest.mark.parametrize("mode,grad", MODES)
def test_text_queries_never_attend_to_image(corpus, mode, grad):
    """Eager attention weights in every layer: text-blind, the prompt text after the image puts exactly 0 on
    the visual keys while Start and the latent slots keep theirs; not text-blind, the text attends to the image."""
    bundle = build_tiny(seed=2, attn_implementation="eager")
    proc, batch = _batch(corpus, bundle)
    L = batch.prompts["input_ids"].shape[1]
    full_ids = torch.cat([batch.prompts["input_ids"], batch.sequences], dim=1)
    image_id = bundle.model.config.image_token_id
    is_img = full_ids == image_id
    text_q = _text_after_image(batch.prompts["input_ids"], image_id, bundle.ids.start)  # (N, L)
    assert text_q.any()
    seen = []
    hooks = [layer.self_attn.register_forward_hook(lambda m, i, o: seen.append(o[1]))
             for layer in bundle.model.model.language_model.layers]
    try:
        for blind in (True, False):
            set_text_blind(bundle.model, blind)
            seen.clear()
            with torch.no_grad():
                sft_forward(bundle.model, batch, bundle.ids, proc.image_processor, mode=mode, grad=grad, closed=True)
            text_on_img, seg_on_img = 0.0, 0.0
            for w in seen:  # (N, H, q, S): the last q columns of the first S
                q, S = w.shape[-2:]
                cols = torch.arange(S - q, S)
                on_img = (w * is_img[:, :S][:, None, None, :].float()).sum(-1)  # (N, H, q)
                in_prompt = cols < L
                if in_prompt.any():
                    tq = text_q[:, cols[in_prompt]]  # (N, q')
                    text_on_img += float((on_img[..., in_prompt] * tq[:, None, :].float()).sum())
                seg = (cols >= L) & (cols <= L + K)
                seg_on_img += float(on_img[..., seg].sum()) if seg.any() else 0.0
            assert seg_on_img > 0.01
            assert (text_on_img == 0.0) if blind else (text_on_img > 0.01)
    finally:
        for h in hooks:
            h.remove()


def _prompts(bundle, n=3, size=112):
    """n prompts of the same length: the same question after images of the same size (seeds 0..n-1)."""
    proc = bundle.processor
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                     "text": "Which pattern does the lesion show?"}]}], tokenize=False,
                                    add_generation_prompt=True)
    return proc(text=[text] * n, images=[random_image(size, size, seed=s) for s in range(n)], padding=True,
                return_tensors="pt")


@pytest.fixture(scope="module")
def blind_model():
    bundle = build_tiny(seed=3)
    set_text_blind(bundle.model, True)
    return bundle


@pytest.mark.parametrize("closed", [True, False])
def test_replay_equals_rollout_text_blind(blind_model, make_batch, closed):
    """KV-cached sampled decoding (G = 2, prompts of different lengths) replays to the same log-probs under the
    text-blind mask; replayed as a plain model they do not."""
    b = blind_model
    batch = make_batch([(224, 224), (168, 308)])
    cfg = DecodeConfig(k_latent=K, max_new_tokens=9, num_samples=2, temperature=0.9, closed=closed)
    out = latent_generate(b.model, batch, b.ids, cfg, generator=torch.Generator().manual_seed(0))
    m = out.sampled_mask
    assert m.sum() > 0
    with torch.no_grad():
        rep = replay_rollout(b.model, batch, out, b.ids)
        plain = copy.deepcopy(b.model)
        set_text_blind(plain, False)
        other = replay(plain, batch, out.sequences, out.gen_mask, out.z, b.ids, out.logprob_temperature,
                       prompt_index=out.prompt_index, closed=closed)
    torch.testing.assert_close(rep.token_logprobs[m], out.logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(rep.mu, out.mu, atol=1e-5, rtol=1e-4)
    assert (other.token_logprobs[m] - out.logprobs[m]).abs().max() > 1e-3


def test_checkpoint_records_text_blind(blind_model, tmp_path):
    import json

    save_checkpoint(blind_model.model, blind_model.processor, tmp_path / "m", k_latent=K)
    assert json.loads((tmp_path / "m" / "medlvr_latent.json").read_text())["text_blind"] is True
    model, _, _ = load_checkpoint(tmp_path / "m")
    assert text_blind_of(model)
    plain = build_tiny(seed=3)
    save_checkpoint(plain.model, plain.processor, tmp_path / "p", k_latent=K)
    assert "text_blind" not in json.loads((tmp_path / "p" / "medlvr_latent.json").read_text())
    assert not text_blind_of(load_checkpoint(tmp_path / "p")[0])


def _decode(bundle, prompts, closed=True, kv=None):
    cfg = DecodeConfig(k_latent=K, max_new_tokens=K + 5, eos_token_ids=(), closed=closed, fuse_control=kv is None)
    return latent_generate(bundle.model, prompts, bundle.ids, cfg, kv_transform=kv)


def _copy_row0(cols):
    """kv_transform: every row gets row 0's entries at `cols` (the segment fixed across rows)."""
    def f(cache, rows):
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                m = cols[:, :t.shape[2]][:, None, :, None]
                setattr(layer, name, torch.where(m, t[:1].expand_as(t), t))
    return f


def test_answer_ignores_pixels_with_segment_fixed(blind_model):
    """Two-layer decoder, closed: with the whole segment's KV (Start + latents, every layer) fixed across rows,
    a text-blind model's answer log-probs are the same for different images; a plain one's differ (the text
    route)."""
    prompts = _prompts(blind_model)
    L = prompts["input_ids"].shape[1]
    seg = torch.zeros(3, L + 1 + K, dtype=torch.bool)
    seg[:, L:] = True
    plain = build_tiny(seed=3)
    for bundle, same in ((blind_model, True), (plain, False)):
        out = _decode(bundle, prompts, kv=_copy_row0(seg))
        ans = out.logprobs[:, K + 2:]
        assert torch.allclose(ans[1:], ans[:1].expand_as(ans[1:]), atol=1e-5) == same


def _same_as_donor(swapped, own):
    donor = torch.roll(torch.arange(own.sequences.shape[0]), -1)
    return torch.equal(swapped.sequences, own.sequences[donor]) and \
        torch.allclose(swapped.logprobs, own.logprobs[donor], atol=1e-5)


def test_route_swaps_known_routes(blind_model):
    """Closed decoding reads the image only through the segment and the text after the image, so swapping both
    from the donor reproduces the donor's closed output exactly (any model). A text-blind model's text carries
    nothing: the segment swap alone gives the donor's output, the text swap alone one's own."""
    prompts = _prompts(blind_model)
    cols = route_columns(prompts["input_ids"], blind_model.model.config.image_token_id, blind_model.ids.start, K)
    assert torch.equal(cols["text"][:, :prompts["input_ids"].shape[1]],
                       _text_after_image(prompts["input_ids"], blind_model.model.config.image_token_id,
                                         blind_model.ids.start))
    plain = build_tiny(seed=3)
    for bundle in (blind_model, plain):
        own = _decode(bundle, prompts)
        unfused = _decode(bundle, prompts, kv=lambda cache, rows: None)
        assert torch.equal(unfused.sequences, own.sequences)
        assert _same_as_donor(_decode(bundle, prompts, kv=SwapKV(cols["both"])), own)
    own = _decode(blind_model, prompts)
    assert _same_as_donor(_decode(blind_model, prompts, kv=SwapKV(cols["segment"])), own)
    text = _decode(blind_model, prompts, kv=SwapKV(cols["text"]))
    assert torch.equal(text.sequences, own.sequences) and torch.allclose(text.logprobs, own.logprobs, atol=1e-5)
    plain_own = _decode(plain, prompts)
    assert not torch.allclose(_decode(plain, prompts, kv=SwapKV(cols["text"])).logprobs, plain_own.logprobs,
                              atol=1e-4)  # the plain model's text carries the image
