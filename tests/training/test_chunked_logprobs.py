"""Chunked log-softmax (issue 18 §2): same log-probs and gradients as the unchunked (N, T, V) computation, in VLPO
replay and the ROI-SFT answer loss, and no tensor of N*T*V elements is ever created (forward or backward)."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medlvr.training.latent_decode import DecodeConfig, latent_generate
from medlvr.training.model import set_pixel_budget
from medlvr.training.replay import replay_rollout
from medlvr.training.sampling import chunked_token_logprobs, token_logprobs
from medlvr.training.sft.collate import collate
from medlvr.training.sft.data import ShardStream, shard_files
from medlvr.training.sft.forward import sft_forward
from medlvr.corpus.sample_corpus import build_sample_corpus

UNCHUNKED = 10**9


class LargestLogits(TorchDispatchMode):
    """Records the most elements of any vocabulary-wide tensor (last dim V: logits, log-probs and their gradients)
    an op returns, autograd's backward ops included; the lm_head weight's own gradient (D, V) is not counted."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.vocab, self.weight_numel = head.weight.shape[0], head.weight.numel()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-1] == self.vocab \
                    and t.numel() != self.weight_numel:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _check_chunked_run(model, run, chunk: int, n_positions: int) -> None:
    """run(chunk) -> (log-probs, parameter gradients) of one forward + backward. Chunked equals unchunked, and
    the largest vocabulary-wide tensor holds one chunk's logits, never all n_positions x V."""
    params = [p for p in model.model.language_model.parameters()] + [model.lm_head.weight]

    def grads_of(c):
        model.zero_grad(set_to_none=True)
        lp = run(c)
        return lp, [p.grad.clone() for p in params]

    ref_lp, ref_g = grads_of(UNCHUNKED)
    probe = LargestLogits(model.lm_head)
    with probe:
        lp, grads = grads_of(chunk)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    for a, b in zip(grads, ref_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    V = model.lm_head.weight.shape[0]
    assert probe.max_numel == chunk * V < n_positions * V


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, UNCHUNKED])
def test_chunked_equals_unchunked_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    N, T, D, V = 3, 8, 16, 50
    head = torch.nn.Linear(D, V, bias=False)
    hidden = torch.randn(N, T, D, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (N, T), generator=g)
    weights = torch.randn(N, T, generator=g)

    ref = token_logprobs(head(hidden), tokens, 0.7, (5, 9))
    (ref * weights).sum().backward()
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone()]
    hidden.grad, head.weight.grad = None, None

    got = chunked_token_logprobs(hidden, head, tokens, 0.7, (5, 9), chunk=chunk)
    (got * weights).sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hidden.grad, ref_grads[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.weight.grad, ref_grads[1], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(chunked_token_logprobs(hidden, head, tokens, 0.7, (5, 9), chunk=chunk), ref)
    with pytest.raises(ValueError):
        chunked_token_logprobs(hidden, head, tokens, 1.0, chunk=0)


def test_replay_chunked_equals_unchunked_and_never_holds_full_logits(tiny, make_batch):
    batch = make_batch([(224, 224), (168, 308)])
    cfg = DecodeConfig(k_latent=3, max_new_tokens=12, num_samples=2, temperature=0.9, eos_token_ids=())
    out = latent_generate(tiny.model, batch, tiny.ids, cfg, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(tiny.model)

    def run(chunk):
        rep = replay_rollout(model, batch, out, tiny.ids, logprob_chunk=chunk)
        (rep.token_logprobs.sum() + rep.mu.sum()).backward()
        return rep.token_logprobs.detach()

    _check_chunked_run(model, run, 5, out.sequences.numel())


def test_sft_answer_loss_chunked_equals_unchunked(tiny, tmp_path_factory):
    budget = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 16)
    corpus = build_sample_corpus(tmp_path_factory.getbasetemp() / "chunk_corpus")
    rows = ShardStream(shard_files(corpus, "train"), seed=1).next_rows(3)
    proc = copy.deepcopy(tiny.processor)
    set_pixel_budget(proc, **budget)
    batch = collate(rows, proc, tiny.ids, 2, **budget)
    model = copy.deepcopy(tiny.model)

    def run(chunk):
        f = sft_forward(model, batch, tiny.ids, proc.image_processor, mode="self_fed", grad="bptt",
                        logprob_chunk=chunk)
        (f.token_logprobs * batch.label_mask).sum().backward()
        return f.token_logprobs.detach()

    _check_chunked_run(model, run, 4, batch.sequences.numel())
