"""ROI-SFT forward: answer log-probs and the hidden states h_k that produce the latents (docs/method.md §3).

The image is encoded ONCE per micro-batch (no_grad when the vision tower and merger are frozen); the same merger
output gives the ROI targets (`medlvr.training.roi_targets.batch_roi_targets`, detached) and the decoder's image rows.
Positions are the explicit 3-D M-RoPE ids of the whole sequence (`get_rope_index`), sliced per pass.

Latent modes (column L holds `<Medlvr_Start>`, latent k sits at L + k, z_k is fed there):

* ``self_fed`` + ``bptt``: K+2 decoder passes sharing one KV cache (Coconut-style): prefix through Start, K
  single steps feeding z_k = H[L + k - 1] (post-norm last hidden state), then End + answer. Gradient flows through
  the chain. Needs the KV cache with gradients, hence no gradient checkpointing.
* ``self_fed`` + ``detach``: the latents z_k are computed without gradient (prefix + K cached steps under
  no_grad), then ONE teacher-forced pass with them as constant inputs. This is exactly the K+2-pass forward with
  `detach` between steps (same values, same gradients: each step's graph depends on the weights only through the
  prefix and its own computation), and it works with gradient checkpointing.
* ``teacher_forced``: one pass with the ROI targets z*_k as the latent inputs (LVR-style); rows without a
  target get the full-image target as input.

With `closed=True` (the visual bottleneck, `medlvr.training.bottleneck`) `<Medlvr_End>` and the answer (columns
from L + K + 1 on) attend through a 4-D mask that hides the visual tokens; the prefix, Start and the latent
steps are unchanged. A text-blind model (`medlvr.training.bottleneck.text_blind_of`) bars the prompt columns after
the image (not `<Medlvr_Start>`) from the visual keys in every pass, as decoding and replay do.

In every mode h_k = H[L + k - 1] (the indexing rule) and token t of the completion is predicted from H[L + t - 1];
the policy distribution bans `<Medlvr_Latent>` as in decoding (`medlvr.training.sampling.token_logprobs`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from medlvr.training.bottleneck import attn_implementation_of, closed_attention_mask, text_blind_of, text_blind_queries
from medlvr.training.model import LatentTokenIds
from medlvr.training.roi_targets import batch_roi_targets
from medlvr.training.sampling import LOGPROB_CHUNK, chunked_token_logprobs
from medlvr.training.sft.collate import FULL_IMAGE, SFTBatch
from medlvr.training.vlm_inputs import embed_with_images, image_embeddings, rope_positions


@dataclass
class SFTForward:
    """token_logprobs (N, T) float32: log p of each completion token (0 at latent slots and padding).
    h (N, K, D): hidden states producing the latents; targets (N, K, D): ROI targets (detached)."""

    token_logprobs: torch.Tensor
    h: torch.Tensor
    targets: torch.Tensor
    patch_tokens: int  # vision patch tokens encoded (FLOP accounting)


def _patch_latents(embeds: torch.Tensor, L: int, z: torch.Tensor) -> torch.Tensor:
    """Replace columns L+1..L+K of embeds (N, S, D) with z (N, K, D), out of place (autograd-safe)."""
    K = z.shape[1]
    return torch.cat([embeds[:, :L + 1], z.to(embeds.dtype), embeds[:, L + 1 + K:]], dim=1)


def _cached_prefix_and_latents(lm, embeds, attn, pos, L: int, K: int, detach: bool, prefix_mask=None):
    """Prefix pass through column L + K single steps feeding the previous hidden state.
    prefix_mask: the prefix pass's mask (default the 2-D padding mask; a text-blind model's 4-D one).
    Returns (hidden over columns 0..L+K (N, L+K+1, D), cache)."""
    out = lm(inputs_embeds=embeds[:, :L + 1], attention_mask=attn[:, :L + 1] if prefix_mask is None else prefix_mask, position_ids=pos[:, :, :L + 1],
             use_cache=True)
    cache, hs = out.cache, [out.last_hidden_state]
    h = out.last_hidden_state[:, -1:]
    for k in range(1, K + 1):
        c = L + k
        x = h.detach() if detach else h
        out = lm(inputs_embeds=x, attention_mask=attn[:, :c + 1], position_ids=pos[:, :, c:c + 1], cache=cache,
                 use_cache=True)
        h = out.last_hidden_state
        hs.append(h)
    return torch.cat(hs, dim=1), cache


def sft_forward(model, batch: SFTBatch, ids: LatentTokenIds, image_processor, *, mode: str = "self_fed",
                grad: str = "bptt", vision_grad: bool = False, closed: bool = False,
                logprob_chunk: int = LOGPROB_CHUNK) -> SFTForward:
    dev = model.device
    lm = model.model.language_model
    p = batch.prompts
    p_ids, p_attn = p["input_ids"].to(dev), p["attention_mask"].to(dev).long()
    p_mm = p.get("mm_token_type_ids")
    p_mm = (p_ids == model.config.image_token_id).long() if p_mm is None else p_mm.to(dev).long()
    seq, gen = batch.sequences.to(dev), batch.gen_mask.to(dev)
    N, L, T, K = p_ids.shape[0], p_ids.shape[1], seq.shape[1], batch.k
    grid = p["image_grid_thw"].to(dev)

    with nullcontext() if vision_grad else torch.no_grad():
        img = image_embeddings(model, p["pixel_values"].to(dev), grid)
    D = img.shape[-1]
    if K > 0:
        boxes = [None if b in (None, FULL_IMAGE) else b for b in batch.roi_boxes]
        targets = batch_roi_targets(model, image_processor, p["pixel_values"], grid, batch.image_sizes, boxes, K,
                                    image_embeds=img)
    else:
        targets = img.new_zeros(N, 0, D)

    full_ids = torch.cat([p_ids, seq], dim=1)
    attn = torch.cat([p_attn, gen.long()], dim=1)
    mm = torch.cat([p_mm, torch.zeros_like(seq)], dim=1)  # completion positions are text
    pos, _ = rope_positions(model, full_ids, mm, attn, grid)
    embeds = embed_with_images(model, full_ids, img)
    if closed and K == 0:
        raise ValueError("the visual bottleneck needs a latent segment (k_latent > 0)")

    blind = text_blind_of(model)
    col_all = torch.arange(full_ids.shape[1], device=dev)
    q_blind = text_blind_queries(full_ids, model.config.image_token_id, ids.start) & (col_all < L)[None]

    def answer_mask(q: int, upto: int | None = None):
        """Attention mask for the last q columns of the first `upto` (default all): 2-D padding mask, or the
        bottleneck's / text-blind 4-D mask."""
        upto = full_ids.shape[1] if upto is None else upto
        if not closed and not blind:
            return attn[:, :upto]
        col = col_all[:upto][-q:]
        query_closed = ((col >= L + K + 1) & closed)[None].expand(N, -1)  # <Medlvr_End> and the answer
        if blind:
            query_closed = query_closed | q_blind[:, :upto][:, -q:]
        return closed_attention_mask(attn[:, :upto], (full_ids == model.config.image_token_id)[:, :upto],
                                     query_closed, attn_implementation_of(model), embeds.dtype)

    if K == 0:
        hidden = lm(inputs_embeds=embeds, attention_mask=answer_mask(embeds.shape[1]), position_ids=pos,
                    use_cache=False).last_hidden_state
    elif mode == "self_fed" and grad == "bptt":
        head, cache = _cached_prefix_and_latents(lm, embeds, attn, pos, L, K, detach=False,
                                                 prefix_mask=answer_mask(L + 1, L + 1) if blind else None)
        c = L + K + 1
        tail = lm(inputs_embeds=embeds[:, c:], attention_mask=answer_mask(embeds.shape[1] - c),
                  position_ids=pos[:, :, c:], cache=cache,
                  use_cache=True).last_hidden_state
        hidden = torch.cat([head, tail], dim=1)
    else:
        if mode == "self_fed":  # detach: latents without gradient, then one pass with them as constants
            with torch.no_grad():
                head, _ = _cached_prefix_and_latents(lm, embeds.detach(), attn, pos, L, K, detach=True,
                                                     prefix_mask=answer_mask(L + 1, L + 1) if blind else None)
            z = head[:, L:L + K]
        elif mode == "teacher_forced":
            z = targets
        else:
            raise ValueError(f"unknown latent mode {mode!r}")
        hidden = lm(inputs_embeds=_patch_latents(embeds, L, z), attention_mask=answer_mask(embeds.shape[1]),
                    position_ids=pos,
                    use_cache=False).last_hidden_state

    # position j predicts token j + 1; chunked: the (N, T, V) logits never exist at once
    lp = chunked_token_logprobs(hidden[:, L - 1:L + T - 1], model.lm_head, seq, 1.0, (ids.latent,), logprob_chunk)
    lp = lp.masked_fill(~gen | (seq == ids.latent), 0.0)
    h = hidden[:, L:L + K]  # h_k = H[L + k - 1], k = 1..K
    return SFTForward(token_logprobs=lp, h=h, targets=targets.to(h.dtype), patch_tokens=int(p["pixel_values"].shape[0]))
