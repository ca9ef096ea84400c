"""Teacher-forced replay of rollouts with recorded latents (docs/method.md §4.4).

One forward over prompt + generated tokens in which the `<Medlvr_Latent>` slots take the given latent vectors
as input embeddings. From that single pass it returns what VLPO needs:

* token log-probs `log pi_theta(y_t | ...)` at a given temperature (same `policy_log_softmax` as the rollout,
  so with unchanged weights they reproduce the rollout's log-probs);
* latent means `mu_theta,k = H[p_k - 1]`, the final-norm hidden state at the position BEFORE latent slot p_k
  (the indexing rule; `H[p_k]` would be the off-by-one that pulls consecutive latents together).

With `closed=True` (the visual bottleneck) every query from a row's first `<Medlvr_End>` on is barred from the
visual tokens by a 4-D mask: the rule `latent_generate(..., DecodeConfig(closed=True))` decodes with, so replay
log-probs equal rollout log-probs under the mask too.

Gradients flow to the model and to `z` (if it requires grad). Images are encoded once per prompt and reused for
the G samples of that prompt; the vision tower runs under no_grad unless `vision_grad=True` (it is frozen in
both training stages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from medlvr.training.bottleneck import attn_implementation_of, closed_attention_mask, text_blind_of, text_blind_queries
from medlvr.training.latent_decode import LatentDecodeOutput
from medlvr.training.model import LatentTokenIds
from medlvr.training.sampling import LOGPROB_CHUNK, chunked_token_logprobs
from medlvr.training.vlm_inputs import embed_with_images, image_embeddings, rope_positions, select_rows_vision


@dataclass
class ReplayOutput:
    """token_logprobs: (N, T) float32, 0 at latent slots and where gen_mask is False.
    mu: (N, K, D) hidden state H[p_k - 1] for each latent slot, zero rows beyond the row's latent count.
    """

    token_logprobs: torch.Tensor
    mu: torch.Tensor


def replay(
    model,
    prompts: Mapping[str, torch.Tensor],
    sequences: torch.Tensor,
    gen_mask: torch.Tensor,
    z: torch.Tensor,
    ids: LatentTokenIds,
    temperature: float,
    *,
    prompt_index: torch.Tensor | None = None,
    banned_ids: Sequence[int] | None = None,
    vision_grad: bool = False,
    closed: bool = False,
    logprob_chunk: int = LOGPROB_CHUNK,
) -> ReplayOutput:
    """prompts: the B-row left-padded processor batch the rollouts came from (input_ids (B, L),
    attention_mask (B, L), mm_token_type_ids (B, L), optional pixel_values / image_grid_thw).
    sequences (N, T), gen_mask (N, T): generated ids (latent slots hold `<Medlvr_Latent>`), right-padded.
    z: (N, K, D) latent inputs in slot order. prompt_index: (N,) prompt row of each sample (default: N == B).
    banned_ids: ids excluded from the policy distribution (default: the latent placeholder, as in decoding).
    logprob_chunk: positions per lm_head + log-softmax chunk (`chunked_token_logprobs`; never (N, T, V) logits).
    """
    dev = model.device
    N, T = sequences.shape
    banned = (ids.latent,) if banned_ids is None else tuple(banned_ids)
    p_ids = prompts["input_ids"].to(dev)
    p_attn = prompts["attention_mask"].to(dev).long()
    p_mm = prompts.get("mm_token_type_ids")
    p_mm = (p_ids == model.config.image_token_id).long() if p_mm is None else p_mm.to(dev).long()
    idx = torch.arange(N, device=dev) if prompt_index is None else prompt_index.to(dev)
    L = p_ids.shape[1]

    grid, img = prompts.get("image_grid_thw"), None
    if prompts.get("pixel_values") is not None:
        grid = grid.to(dev)
        with nullcontext() if vision_grad else torch.no_grad():
            img = image_embeddings(model, prompts["pixel_values"].to(dev), grid)  # once per prompt, not per sample
        grid, img = select_rows_vision(p_ids, grid, img, model.config.image_token_id, idx)

    full_ids = torch.cat([p_ids[idx], sequences.to(dev)], dim=1)  # (N, L + T)
    full_attn = torch.cat([p_attn[idx], gen_mask.to(dev).long()], dim=1)
    full_mm = torch.cat([p_mm[idx], torch.zeros_like(sequences, device=dev)], dim=1)  # generated = text
    pos, _ = rope_positions(model, full_ids, full_mm, full_attn, grid)

    embeds = embed_with_images(model, full_ids, img)
    lat = (full_ids == ids.latent) & full_attn.bool()
    rows, cols = lat.nonzero(as_tuple=True)  # row-major: slots of a row in order
    slot = (lat.cumsum(-1) - 1)[rows, cols]  # k of each latent slot
    # out-of-place write keeps autograd intact for both the model and z
    embeds = embeds.index_put((rows, cols), z.to(dev)[rows, slot].to(embeds.dtype))

    mask = full_attn
    blind = img is not None and text_blind_of(model)  # the prompt text after the image may not read it
    if closed or blind:  # queries from the first generated <Medlvr_End> on may not see the visual keys
        after_end = ((sequences.to(dev) == ids.end) & gen_mask.to(dev)).long().cumsum(-1) > 0
        q_prompt = text_blind_queries(p_ids[idx], model.config.image_token_id, ids.start) if blind \
            else torch.zeros_like(p_attn[idx], dtype=torch.bool)
        q_closed = torch.cat([q_prompt, after_end & closed], dim=1)
        mask = closed_attention_mask(full_attn, full_ids == model.config.image_token_id, q_closed,
                                     attn_implementation_of(model), embeds.dtype)
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
    ).last_hidden_state  # (N, L + T, D), post final norm

    # position j predicts token j + 1: the generated tokens L..L+T-1 come from hidden L-1..L+T-2
    lp = chunked_token_logprobs(hidden[:, L - 1 : L + T - 1], model.lm_head, sequences.to(dev), temperature, banned,
                                logprob_chunk)
    lp = lp.masked_fill(~(gen_mask.to(dev) & ~lat[:, L:]), 0.0)

    mu = torch.zeros(N, z.shape[1], hidden.shape[-1], dtype=hidden.dtype, device=dev)
    mu = mu.index_put((rows, slot), hidden[rows, cols - 1])  # H[p - 1]
    return ReplayOutput(token_logprobs=lp, mu=mu)


def replay_rollout(model, prompts: Mapping[str, torch.Tensor], out: LatentDecodeOutput, ids: LatentTokenIds,
                   **kwargs) -> ReplayOutput:
    """`replay` of a `latent_generate` result at its own log-prob temperature."""
    return replay(
        model, prompts, out.sequences, out.gen_mask, out.z, ids, out.logprob_temperature,
        prompt_index=out.prompt_index, closed=out.closed, **kwargs,
    )
