"""Next-token distribution shared by latent decoding (rollouts) and replay.

The policy distribution is `softmax(logits / T)` with banned ids (the `<Medlvr_Latent>` placeholder, which must
never be emitted as text: replay finds latent slots by that id) set to -inf. Rollout log-probs and replay
log-probs both come from `token_logprobs`, so they agree by construction. Top-p only truncates *sampling*; the
recorded log-prob is that of the untruncated temperature distribution, as trainers (TRL, verl) recompute it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint


def policy_log_softmax(logits: torch.Tensor, temperature: float, banned_ids: Sequence[int] = ()) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 log-probs of softmax(logits / temperature) with banned ids at -inf."""
    if temperature <= 0:
        raise ValueError("temperature for log-probs must be > 0 (greedy decoding records them at T=1)")
    scaled = logits.float() / temperature  # fp32: log_softmax in bf16 loses the small log-probs
    if len(banned_ids):
        scaled = scaled.index_fill(-1, torch.as_tensor(list(banned_ids), device=logits.device), float("-inf"))
    return torch.log_softmax(scaled, dim=-1)


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, banned_ids: Sequence[int] = ()
) -> torch.Tensor:
    """log p(tokens) under the policy. logits (..., V), tokens (...) -> (...) float32."""
    logp = policy_log_softmax(logits, temperature, banned_ids)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    banned_ids: Sequence[int] = (),
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """(N, V) logits -> (N,) token ids. temperature == 0 means greedy (argmax over non-banned ids).
    `generator`: one for all rows, or one per row (row i draws from generator[i] only)."""
    if temperature == 0:
        scaled = logits.float()
        if len(banned_ids):
            scaled = scaled.index_fill(-1, torch.as_tensor(list(banned_ids), device=logits.device), float("-inf"))
        return scaled.argmax(-1)
    probs = policy_log_softmax(logits, temperature, banned_ids).exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p (the top token is always kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if isinstance(generator, Sequence):
        return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g) for i, g in enumerate(generator)]
                         ).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# Positions (rows x time) per chunk of `chunked_token_logprobs`: 512 x V=152,064 x (bf16 + fp32 + fp32 grad) is
# 0.8 GB at 7B (benchmarks/RESULTS.md, memory model).
LOGPROB_CHUNK = 512


def _chunk_logprobs(hidden: torch.Tensor, tokens: torch.Tensor, lm_head: torch.nn.Module, temperature: float,
                    banned_ids: tuple[int, ...]) -> torch.Tensor:
    return token_logprobs(lm_head(hidden), tokens, temperature, banned_ids)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    tokens: torch.Tensor,
    temperature: float,
    banned_ids: Sequence[int] = (),
    chunk: int = LOGPROB_CHUNK,
) -> torch.Tensor:
    """`token_logprobs(lm_head(hidden), tokens, ...)` without ever holding the full (N, T, V) logits.

    hidden (N, T, D), tokens (N, T) -> (N, T) float32. The N*T positions are processed `chunk` at a time; with
    autograd on, each chunk runs under non-reentrant activation checkpointing, so the forward keeps only its
    (chunk, D) input and the backward recomputes one chunk's logits at a time: peak (chunk, V), not (N, T, V).
    Same numbers as the unchunked call (every position's log-softmax is over its own V logits).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    N, T, D = hidden.shape
    flat_h, flat_t = hidden.reshape(N * T, D), tokens.reshape(N * T)
    banned = tuple(banned_ids)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    parts = []
    for s in range(0, N * T, chunk):
        h, t = flat_h[s:s + chunk], flat_t[s:s + chunk]
        if grad:
            parts.append(checkpoint(_chunk_logprobs, h, t, lm_head, temperature, banned, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, t, lm_head, temperature, banned))
    if not parts:
        return hidden.new_zeros(N, T, dtype=torch.float32)
    return torch.cat(parts).reshape(N, T)
